"""What a classification method declares: its option groups, its checks, its run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ``config`` below is an ``ex2.classify.stage.ClassifyConfig``: the shared fields plus every method's
# options, one flat dataclass; a method reads the fields of its own groups.
Config = Any


def no_check(config: Config) -> None:
    """A method without checks of its own."""


@dataclass(frozen=True)
class Method:
    """One way to classify: ``run(config, vlm, dataset)`` writes the run folder and returns it
    (``vlm`` and ``dataset`` None: loaded from the config). ``check(config)`` raises ValueError for
    options that cannot work with this method; it runs when the config is made, before any model loads."""

    name: str
    summary: str  # one line for `ex2 classify --help`
    options: tuple[type, ...]  # the option groups it reads, besides SharedOptions
    run: Callable[[Config, Any, Any], Path]
    check: Callable[[Config], None] = no_check
    needs_gvlm: bool = False  # a generative VLM (--vlm gen:…) instead of a dual encoder
    aggregate: str = "mean_score"  # the default of --aggregate
