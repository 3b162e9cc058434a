"""``closed`` (Zhang et al., NeurIPS 2024): the open question followed by the choices,
``… Choose one from "a, b, c".``; right when the true class is the only choice the answer names.

    ex2 classify --vlm gen:llava-hf/llava-1.5-7b-hf --method closed --n-choices 5 --seed 0 --output runs/closed5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ex2.classify import generative
from ex2.classify.methods.base import Method
from ex2.classify.options import AnswerOptions, OptionGroup, QuestionOptions
from ex2.core.config import option


@dataclass
class ClosedOptions(OptionGroup):
    """Closed-question options (closed)"""

    n_choices: str = option("all", "closed: list all classes, or N (the true one and N-1 others, shuffled by --seed)")
    choice_order: Literal["shuffled", "fixed"] = option(
        "shuffled", "closed: shuffled per image, drawn as VLMClassifier's main.py (its seed: 1234), or fixed: "
        "every class in dataset order (its label-order ablation)")


METHOD = Method(
    name="closed",
    summary="a generative VLM picks one of the listed classes",
    options=(QuestionOptions, AnswerOptions, ClosedOptions),
    run=generative.run,
    check=generative.check_config,
    needs_gvlm=True,
)
