"""Causal language models: loading the LLM to align (models) and sampling descriptions from it (samplers: transformers or vLLM)."""
