"""Registries of ``name -> "module:attr"`` whose entries are imported only when chosen.

    SAMPLERS = LazyRegistry("sampler", {"vllm": "ex2.llm.samplers:VLLMSampler"})
    cls = SAMPLERS.load("vllm")        # imports ex2.llm.samplers now, not before
"""

from __future__ import annotations

import importlib
from typing import Any


def split_reference(reference: str) -> tuple[str, str]:
    """``"package.module:attr"`` -> ``("package.module", "attr")``."""
    module, sep, attr = reference.partition(":")
    if not (module and sep and attr) or ":" in attr:
        raise ValueError(f"expected 'module:attr', got {reference!r}")
    return module, attr


def load_object(reference: str) -> Any:
    """The object a ``"module:attr"`` reference names, importing its module."""
    module, attr = split_reference(reference)
    try:
        return getattr(importlib.import_module(module), attr)
    except AttributeError as err:
        raise ImportError(f"{module} has no {attr!r} (registered as {reference!r})") from err


class LazyRegistry(dict[str, str]):
    """``name -> "module:attr"``; :meth:`load` imports the chosen entry and nothing else."""

    def __init__(self, kind: str, entries: dict[str, str]) -> None:
        for reference in entries.values():
            split_reference(reference)
        super().__init__(entries)
        self.kind = kind

    def load(self, name: str) -> Any:
        """The object registered as ``name``; an unknown name raises ValueError listing the known ones."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self)}")
        return load_object(self[name])
