"""ex2 finetune: teach a CLIP/SigLIP VLM the descriptions (desc) or regions (grain): the stage, its records (data), the towers and heads (towers) and GRAIN's losses (grain)."""
