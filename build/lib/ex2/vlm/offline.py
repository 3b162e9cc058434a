"""No downloads at run time unless the user asks for them.

Models are read from local folders, local files or the Hugging Face cache. Set
``EX2_ALLOW_DOWNLOAD=1`` to let a loader fetch what is missing from the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

DOWNLOAD_HINT = "set EX2_ALLOW_DOWNLOAD=1 to fetch it once into the Hugging Face cache"


def downloads_allowed() -> bool:
    """True when ``EX2_ALLOW_DOWNLOAD`` is set to 1/true/yes."""
    return os.environ.get("EX2_ALLOW_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Within the block the Hugging Face hub serves cached files only (unless downloads are on)."""
    if downloads_allowed():
        yield
        return
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub and transformers
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def fingerprint(paths: Iterable[Path]) -> str:
    """A short digest of files' names, sizes and mtimes: changes when local weights change."""
    digest = hashlib.sha1()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:10]
