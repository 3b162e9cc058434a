"""ex2 train: GRPO + LoRA against a VLM reward (stage), its held-out evaluation (evaluation) and trainer callbacks (callbacks)."""
