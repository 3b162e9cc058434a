"""Data files shipped with ex2 (word lists); read with importlib.resources."""
