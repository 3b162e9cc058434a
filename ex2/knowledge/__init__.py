"""ex2 knowledge: CoDer's expert knowledge per class (attributes, analogous classes, synonyms, one-vs-one) asked of an LLM (stage)."""
