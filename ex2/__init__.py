"""ex2: ask a vision-language model which descriptions of a concept it prefers, and use the answer."""

import os

__version__ = "0.1.0"

# Nothing downloads at run time by default: the Hugging Face hub serves cached files only.
if os.environ.get("EX2_ALLOW_DOWNLOAD", "").strip().lower() not in ("1", "true", "yes"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
