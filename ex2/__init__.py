"""ex2: ask a vision-language model which descriptions of a concept it prefers, and use the answer.

``import ex2`` is cheap and changes nothing in the process; the Python API below is imported on first
use::

    import ex2
    vlm = ex2.load_vlm("conse")                       # a VLM (embedded, open_clip or Hugging Face CLIP)
    data = ex2.load_dataset("samples")                # an image dataset; its class names are the concepts
    reward = ex2.build_reward("ex2", vlm, data)       # a trl reward callable (EX2Reward)
    run_dir = ex2.run_classify(ex2.ClassifyConfig(dataset="samples", vlm="conse", output="runs/clip"))

The ``ex2`` command (:mod:`ex2.cli`) serves cached Hugging Face files only unless
``EX2_ALLOW_DOWNLOAD=1``; the library leaves that choice to its caller.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute", imported on first access. A stage's entry point is ``run_<stage>``:
# ``ex2.classify.stage`` and the like stay the submodules.
_API: dict[str, str] = {
    "load_vlm": "ex2.vlm:load_vlm",
    "load_dataset": "ex2.data:load_dataset",
    "load_templates": "ex2.data:load_templates",
    "concept_names": "ex2.data:concept_names",
    "build_reward": "ex2.reward.registry:build_reward",
    "EX2Reward": "ex2.reward.ex2:EX2Reward",
    "ContrastiveReward": "ex2.reward.contrastive:ContrastiveReward",
    "ContrastiveSoftmaxReward": "ex2.reward.contrastive_softmax:ContrastiveSoftmaxReward",
    "PlantedReward": "ex2.reward.planted:PlantedReward",
    "GenLikelihoodReward": "ex2.reward.gen_likelihood:GenLikelihoodReward",
    "load_llm": "ex2.llm.models:load_llm",
    "resolve_llm": "ex2.llm.models:resolve_llm",
    "load_tokenizer": "ex2.llm.models:load_tokenizer",
    "prompt_dataset": "ex2.train.stage:prompt_dataset",
    "TrainConfig": "ex2.train.stage:TrainConfig",
    "run_train": "ex2.train.stage:run",
    "GenerateConfig": "ex2.generate.stage:GenerateConfig",
    "run_generate": "ex2.generate.stage:run",
    "InspectConfig": "ex2.inspect.stage:InspectConfig",
    "run_inspect": "ex2.inspect.stage:run",
    "ClassifyConfig": "ex2.classify.stage:ClassifyConfig",
    "run_classify": "ex2.classify.stage:run",
    "load_descriptions": "ex2.classify.descriptions:load_descriptions",
    "ReportConfig": "ex2.report.stage:ReportConfig",
    "run_report": "ex2.report.stage:run",
    "collect_runs": "ex2.report.runs:collect",
    "read_jsonl": "ex2.core.io:read_jsonl",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'ex2' has no attribute {name!r}")
    module_name, attribute = target.split(":")
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
