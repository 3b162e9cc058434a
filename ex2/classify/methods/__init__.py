"""The classification methods of ``ex2 classify``, one module each, listed in one registry.

Each module defines ``METHOD``, a :class:`~ex2.classify.methods.base.Method`: the option groups it
reads (its own group, a dataclass of ``option(...)`` fields, lives in the module), its checks and its
run. Adding a method is one module here and one line in ``METHODS`` (CONTRIBUTING.md has an example).
"""

from __future__ import annotations

from ex2.classify.methods.base import Method
from ex2.core.registry import LazyRegistry

METHODS = LazyRegistry("classification method", {
    "clip": "ex2.classify.methods.clip:METHOD",
    "dclip": "ex2.classify.methods.dclip:METHOD",
    "cupl": "ex2.classify.methods.cupl:METHOD",
    "ex2": "ex2.classify.methods.ex2:METHOD",
    "waffle": "ex2.classify.methods.waffle:METHOD",
    "coder": "ex2.classify.methods.coder:METHOD",
    "open": "ex2.classify.methods.open:METHOD",
    "closed": "ex2.classify.methods.closed:METHOD",
    "likelihood": "ex2.classify.methods.likelihood:METHOD",
})


def load_method(name: str) -> Method:
    """The method registered as ``name``; an unknown name is a ValueError listing the known ones."""
    return METHODS.load(name)


def all_methods() -> list[Method]:
    """Every registered method, in registry order (each module imported)."""
    return [METHODS.load(name) for name in METHODS]


def option_groups(methods: list[Method], shared: type) -> list[type]:
    """``shared`` and the distinct option groups of ``methods``, in order of first use; two groups
    declaring one field would make the flat config ambiguous, so that is an error naming both."""
    groups: list[type] = []
    owner: dict[str, type] = {}
    for group in [shared, *(g for method in methods for g in method.options)]:
        if group in groups:
            continue
        for name in group.__dataclass_fields__:
            if name in owner:
                raise TypeError(f"option {name!r} is declared by both {owner[name].__name__} and "
                                f"{group.__name__}; an option belongs to one group")
            owner[name] = group
        groups.append(group)
    return groups


def methods_reading(group: type, methods: list[Method]) -> list[str]:
    """Names of the methods that read ``group``."""
    return [m.name for m in methods if group in m.options]
