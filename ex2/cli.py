"""The ``ex2`` command: it parses flags into a stage's config and calls the stage.

Stages are registered as module names and imported only when chosen, so ``ex2 ls`` or
``ex2 classify --help`` never pay for trl or vllm.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from ex2.core.config import parse_config
from ex2.core.errors import INTERRUPTED_EXIT, describe
from ex2.core.registry import split_reference

# stage -> ("module:ConfigClass", one-line summary). The module holds the config and `run(config)`;
# a module may define `parse_args(argv, prog)` to parse its own command line instead, returning
# run's argument (or a tuple of its arguments).
STAGES: dict[str, tuple[str, str]] = {
    "train": ("ex2.train.stage:TrainConfig", "RL-align a LoRA adapter on an LLM against a VLM reward"),
    "generate": ("ex2.generate.stage:GenerateConfig", "sample descriptions per concept from a base or aligned LLM"),
    "knowledge": ("ex2.knowledge.stage:KnowledgeConfig", "CoDer's expert knowledge per class: attributes, "
                  "analogues, synonyms, one-vs-one"),
    "inspect": ("ex2.inspect.stage:InspectConfig", "label descriptions: spurious, visual or non-visual"),
    "annotate": ("ex2.annotate.stage:AnnotateConfig", "ground descriptions in images with a detector: regions for grain"),
    "finetune": ("ex2.finetune.stage:FinetuneConfig", "teach a CLIP/SigLIP VLM the descriptions (desc) or regions (grain)"),
    "classify": ("ex2.classify.stage:ClassifyConfig", "zero-shot classification with class names or descriptions"),
    "probe": ("ex2.probe.stage:ProbeConfig", "linear probe on a VLM's image features (train, choose C on val, test)"),
    "report": ("ex2.report.stage:ReportConfig", "tables, plots and an HTML report across runs"),
    "demo": ("ex2.demo:DemoConfig", "the whole pipeline on the embedded default, offline"),
}


def _usage() -> str:
    lines = ["usage: ex2 <command> [options]   (ex2 <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<9} {summary}" for name, (_, summary) in STAGES.items()]
    lines.append(f"  {'ls':<9} list the VLMs, LLMs, datasets and template sets ex2 knows")
    lines.append(f"  {'env':<9} versions, and the engines usable here (CUDA, bf16, bitsandbytes, vLLM, ...)")
    return "\n".join(lines)


def list_known() -> str:
    from ex2.core.names import EMBEDDED_LLMS, EMBEDDED_VLMS, LLM_FORMS, VLM_FORMS
    from ex2.data import DATASETS, TEMPLATE_SETS

    out = ["VLMs (embedded):"]
    out += [f"  {name:<14} {about}" for name, about in EMBEDDED_VLMS.items()]
    out += [f"  also: {VLM_FORMS}", "", "LLMs (embedded):"]
    out += [f"  {name:<14} {about}" for name, about in EMBEDDED_LLMS.items()]
    out += [f"  also: {LLM_FORMS}", "", "datasets:"]
    out += [f"  {name:<14} {loader.__doc__.strip().splitlines()[0]}" for name, loader in DATASETS.items()]
    out += ["", "template sets:"]
    out += [f"  {name:<14} {about}" for name, about in TEMPLATE_SETS.items()]
    return "\n".join(out)


def offline_by_default() -> None:
    """Nothing downloads at run time by default: the Hugging Face hub serves cached files only, unless
    ``EX2_ALLOW_DOWNLOAD`` is set (an ``HF_HUB_OFFLINE`` already set is kept)."""
    if os.environ.get("EX2_ALLOW_DOWNLOAD", "").strip().lower() not in ("1", "true", "yes"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    offline_by_default()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "ls":
        print(list_known())
        return 0
    if command == "env":
        from ex2.env import report

        print(report())
        return 0
    if command not in STAGES:
        print(f"ex2: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, config_name = split_reference(STAGES[command][0])
    if importlib.util.find_spec(module_name) is None:
        print(f"ex2 {command}: this stage is not built yet", file=sys.stderr)
        return 2
    module = importlib.import_module(module_name)
    prog = f"ex2 {command}"
    if hasattr(module, "parse_args"):
        config = module.parse_args(rest, prog)
    else:
        config = parse_config(getattr(module, config_name), rest, prog=prog)
    try:
        module.run(*config) if isinstance(config, tuple) else module.run(config)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun to resume", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as err:
        message = describe(err)  # one line for bad input and outside failures (ex2/core/errors.py)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
