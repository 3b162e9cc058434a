"""ex2 finetune: teach a CLIP/SigLIP VLM the descriptions (desc) or regions (grain).

stage (config, loop, saving), model (the trained module, LoRA), losses (contrastive, across
processes), batches (datasets, loader batch -> inputs), data (annotation files: ours, GRAIN's,
shards, synthetic), grain (GRAIN's decoders, matcher and region losses), towers (the backends),
checkpoints, evaluation (held-out grounding, global-query features)."""
