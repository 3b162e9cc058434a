"""The option groups of ``ex2 classify``: the fields every method shares, and those several methods share.

An option group is a small dataclass of :func:`ex2.core.config.option` fields with a ``check`` that
validates its own values; a method lists the groups it reads (:class:`ex2.classify.methods.base.Method`).
A method's own group lives in its module (``WaffleOptions`` in ``methods/waffle.py``). ``ClassifyConfig``
(:mod:`ex2.classify.stage`) is all groups in one flat dataclass, so a YAML file or a Python call names
each option as before; ``ex2 classify --help`` lists them group by group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ex2.classify.methods import METHODS
from ex2.core.config import (
    classnames_option,
    data_root_option,
    dataset_option,
    option,
    split_option,
    vlm_option,
)
from ex2.core.names import split_dataset_name

METHOD_NAMES = tuple(METHODS)


class OptionGroup:
    """A group of options; subclasses are dataclasses whose docstring's first line titles the group."""

    def check(self) -> None:
        """Errors for values of this group's fields that cannot work (run on every config)."""


def at_least(config: object, names: tuple[str, ...], minimum: int) -> None:
    """An error naming the flag of the first of ``names`` whose value is below ``minimum``."""
    for name in names:
        if getattr(config, name) < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(config, name)}")


@dataclass
class SharedOptions(OptionGroup):
    """Options of every method"""

    dataset: str = dataset_option()
    data_root: str | None = data_root_option()
    split: str | None = split_option()
    classnames: str | None = classnames_option()
    vlm: str = vlm_option()
    device: str | None = option(None, "torch device; default: CUDA when available")
    precision: str = option("auto", "fp32, fp16, bf16 or auto (bf16 on CUDA where supported, else fp16; fp32 on CPU)")
    method: Literal[METHOD_NAMES] = option("clip", "how each class is scored (one module each: ex2/classify/methods/); "
                                                   "open, closed or likelihood with a generative VLM (gen:…)")
    seed: int = option(0, "waffle: first seed; closed: seed of the drawn choices; coder: seed of the support "
                          "images; likelihood: seed of the held-out images")
    strict: bool = option(False, "stop at an unreadable image instead of skipping it")
    batch_size: int = option(32, "images per forward pass")
    progress: bool = option(True, "show progress bars")
    output: str = option("runs/classify", "run folder to write")

    def check(self) -> None:
        self.dataset, self.data_root = split_dataset_name(self.dataset, self.data_root)
        at_least(self, ("batch_size",), 1)


@dataclass
class EncoderOptions(OptionGroup):
    """Dual-encoder options (clip, dclip, cupl, ex2, waffle, coder)"""

    cache: bool = option(True, "reuse and fill the on-disk caches of image and text embeddings")


@dataclass
class TextClassifierOptions(OptionGroup):
    """Zero-shot text-classifier options (clip, dclip, cupl, ex2, waffle)"""

    aggregate: Literal["mean_score", "mean_embedding"] | None = option(
        None, "pool a class's texts: mean of scores (DCLIP) or normalised mean embedding; "
        "default mean_embedding for clip, mean_score otherwise"
    )
    drop_unreadable_classes: bool = option(
        False, "a class none of whose images can be read is left out of the scores (listed in metrics.json "
        "as dropped_classes) instead of stopping the run"
    )
    explain: int = option(0, "write explanation figures for this many images (0: none)")
    explain_misclassified: bool = option(False, "explain misclassified images (up to --explain, default 20)")
    explain_top: int = option(5, "descriptors shown per class in an explanation")

    def check(self) -> None:
        at_least(self, ("explain_top",), 1)
        if self.explain < 0:
            raise ValueError(f"--explain must be 0 or more, got {self.explain}")


@dataclass
class TemplateOptions(OptionGroup):
    """Class-name template options (clip, coder)"""

    templates: str = option("clip", "class-name templates for clip: clip, clip_ensemble or a file")


@dataclass
class DescriptionOptions(OptionGroup):
    """Description-file options (dclip, cupl, ex2, waffle)"""

    descriptions: str | None = option(
        None, "dclip/cupl/ex2: descriptions.jsonl or categories.jsonl (ours), or a JSON {class: [texts]} "
        "(DCLIP's, CuPL's, WaffleCLIP's); waffle: a descriptor file makes it WaffleCLIP's (characters, class keys)"
    )
    allow_missing: bool = option(False, "a class left without descriptions falls back to its name alone")


@dataclass
class QuestionOptions(OptionGroup):
    """Generative-VLM options (open, closed, likelihood)"""

    question: str = option("What type of object is in this photo?", "open/closed/likelihood: the question asked")
    prompt_format: Literal["auto", "chat", "vlmclassifier"] = option(
        "auto", "open/closed/likelihood: vlmclassifier (LLaVA-1.5's 'USER: <image>\\n{question}\\nASSISTANT:' as "
        "VLMClassifier's main.py), chat (ours: the processor's chat template), auto (vlmclassifier for llava models)")


@dataclass
class AnswerOptions(OptionGroup):
    """Answer options (open, closed)"""

    synonyms: str | None = option(
        None, "open/closed: class names and synonyms that count as naming a class: JSON {class: [synonym, ...]} "
        "or one class a line, 'class, synonym, ...'"
    )
    answer_match: Literal["substring", "words"] = option(
        "substring", "open/closed: substring (VLMClassifier's eval.ipynb: a true class name inside the answer, any "
        "case) or words (ours: whole words, and a closed answer naming another choice too is wrong)")
    max_new_tokens: int = option(64, "open/closed: answer length limit in tokens")
    gen_backend: Literal["transformers", "vllm"] = option(
        "transformers", "open/closed: generate with transformers or vLLM (CUDA, or vLLM's CPU build with torchvision)"
    )
