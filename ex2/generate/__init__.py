"""ex2 generate: sample descriptions per concept from a base or aligned LLM (stage)."""
