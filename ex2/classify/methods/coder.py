"""``coder`` (Yi et al., CVPR 2024): images represented by their similarities to many class texts
built from ``ex2 knowledge``; optionally re-ranked by one-vs-one texts (CODER*) or few-shot with
Tip-Adapter. The pure functions and the run are in :mod:`ex2.classify.coder`.

    ex2 classify --method coder --knowledge runs/knowledge.jsonl --output runs/coder
    ex2 classify --method coder --knowledge runs/knowledge.jsonl --shots 4 --output runs/coder_4shot
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ex2.classify import coder
from ex2.classify.methods.base import Method
from ex2.classify.options import EncoderOptions, OptionGroup, TemplateOptions
from ex2.core.config import option
from ex2.core.io import check_output_path
from ex2.data import load_dataset
from ex2.vlm import load_vlm


@dataclass
class CoderOptions(OptionGroup):
    """CoDer options (coder)"""

    knowledge: str | None = option(None, "coder: knowledge.jsonl written by `ex2 knowledge`, or CoDer's released "
                                   "expert_knowledge folder (default with --coder-dir: CLONE/expert_knowledge)")
    kinds: list[str] | None = option(None, "coder: knowledge kinds in the class texts (attributes, analogous, "
                                     "synonyms); default CoDer's: all three zero-shot, attributes,analogous few-shot")
    coder_dir: str | None = option(None, "coder: a clone of YCaigogogo/CODER: its templates (CODER/template.py, read "
                                   "as data), class lists, re-ranking gaps and expert_knowledge; default ex2's texts")
    coder_dataset: str | None = option(None, "coder: CoDer's name for the dataset (e.g. oxford-pet, DTD, food-101); "
                                       "default mapped from --dataset")
    coder_star: bool = option(False, "coder: CODER*: re-rank with one-vs-one texts below CoDer's per-dataset gap "
                                     "(utils.py); needs --coder-dir")
    coder_synonyms: Literal["filled", "as-run"] = option(
        "filled", "coder: synonym texts with the synonym (filled), or as CoDer's released code makes them (as-run: "
        "its call leaves the field None, 'a photo of None')")
    ovo_rows: Literal["gap", "gap-and-label-in-top5"] = option(
        "gap", "coder: rows re-ranked: every small gap (ours), or also only where the true class is in the top five "
        "(CoDer's loop; reads the test labels)")
    ovo_gap: float = option(0.0, "coder: re-rank with one-vs-one texts where the top-2 softmax gap is below this")
    ovo_top: int = option(5, "coder: classes re-ranked by one-vs-one texts")
    shots: int = option(0, "coder: labelled images per class for Tip-Adapter over neighbor vectors (0: zero-shot)")
    val_shots: int | None = option(None, "coder: validation images per class for alpha/beta (default min(shots, 4))")
    support_split: str | None = option(None, "coder: split the shots come from; default: carved from the "
                                             "evaluated split and left out of the test images")
    augment_views: int = option(10, "coder: random crop/flip views averaged per support image")

    def check(self) -> None:
        coder.check_config(self)


def run(config, vlm=None, dataset=None) -> Path:
    out = check_output_path(config.output, "folder")
    dataset = dataset or load_dataset(config.dataset, config.data_root, config.split, config.classnames)
    inputs = coder.coder_inputs(config, dataset.classnames)  # bad inputs fail before any model loads
    return coder.run_classify(config, out, dataset, vlm or load_vlm(config.vlm, config.device, config.precision),
                              inputs)


METHOD = Method(
    name="coder",
    summary="CoDer: cross-modal neighbors over knowledge texts; one-vs-one re-ranking, few-shot Tip-Adapter",
    options=(CoderOptions, TemplateOptions, EncoderOptions),
    run=run,
)
