"""ex2 probe: a linear probe on a VLM's image features, C chosen on validation (stage)."""
