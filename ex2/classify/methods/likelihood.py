"""``likelihood`` (Zhang et al., NeurIPS 2024): each class name scored as the continuation of a fixed
answer after the question, optionally calibrated by a class prior from held-out images.

    ex2 classify --vlm gen:llava-hf/llava-1.5-7b-hf --method likelihood --calibrate --output runs/likelihood
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ex2.classify import generative
from ex2.classify.methods.base import Method
from ex2.classify.options import OptionGroup, QuestionOptions
from ex2.core.config import option


@dataclass
class LikelihoodOptions(OptionGroup):
    """Likelihood options (likelihood)"""

    answer_prefix: str = option("The photo features a", "likelihood: the answer's start, continued by each class name "
                                "(VLMClassifier's inference_analysis/main.py; ex2 used 'This is a photo of a')")
    length_norm: Literal["mean", "sum"] = option("mean", "likelihood: mean (length-normalised) or sum of token log-probs")
    calibrate: bool = option(False, "likelihood: divide out the class prior estimated on held-out images")
    calibration_split: str | None = option(
        None, "likelihood: split estimating the prior; default: hold out --calibration-fraction of the evaluated split"
    )
    calibration_fraction: float = option(0.2, "likelihood: share of each class's images held out for the prior")


METHOD = Method(
    name="likelihood",
    summary="a generative VLM scores each class name as the continuation of an answer",
    options=(QuestionOptions, LikelihoodOptions),
    run=generative.run,
    check=generative.check_config,
    needs_gvlm=True,
)
