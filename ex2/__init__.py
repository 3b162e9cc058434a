"""ex2: ask a vision-language model which descriptions of a concept it prefers, and use the answer."""

__version__ = "0.1.0"
