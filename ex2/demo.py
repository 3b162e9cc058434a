"""``ex2 demo``: the whole pipeline on the embedded default, offline, on a laptop CPU.

    ex2 demo --output runs/demo

1. train a LoRA adapter on ``smollm2`` against ``conse`` on ``samples`` (a few dozen GRPO steps);
2. generate 25 descriptions per concept from the base and the aligned model;
3. inspect both with the embedded categorizer;
4. classify with class names, base descriptions, aligned descriptions and each category alone;
5. build ``report/report.html``.

Every stage is re-entrant: a finished stage (its final output exists) is skipped on the next run,
an interrupted one resumes from what it saved; ``--force`` redoes everything.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ex2.core.config import (
    ConfigError,
    data_root_option,
    dataset_option,
    llm_option,
    option,
    save_config,
    vlm_option,
)
from ex2.core.devices import PRECISION_CHOICES
from ex2.core.io import check_output_path
from ex2.core.names import split_dataset_name
from ex2.core.taxonomy import CATEGORIES


@dataclass
class DemoConfig:
    """Run the whole pipeline (train, generate, inspect, classify, report) on one dataset."""

    output: str = option("runs/demo", "demo folder; each stage writes a subfolder", short="-o")
    dataset: str = dataset_option()
    data_root: str | None = data_root_option()
    vlm: str = vlm_option()
    llm: str = llm_option()
    train_steps: int = option(24, "GRPO steps (a couple of dozen align smollm2 visibly on 2 CPU cores)")
    num_generations: int = option(4, "completions per prompt in a GRPO group; one group per step")
    images_per_class: int = option(256, "images per concept in the reward (all of them for samples)")
    templates: str = option("describe25", "query templates (ex2's own 25 questions)")
    limit_concepts: int | None = option(None, "only the first N concepts when generating (quick runs)")
    device: str | None = option(None, "torch device (default: CUDA when available)")
    precision: str = option("fast", "LLM weights in training and generation: fast (bf16 where the hardware "
                            "computes it natively, CPUs with AVX-512 BF16 or AMX included), auto, fp32, bf16 "
                            "or fp16 (see ex2.core.devices)")
    threads: int | None = option(None, "torch CPU threads (default: torch's, one per core; 1 on a machine "
                                 "other programs keep busy)")
    seed: int = option(0, "random seed for training and sampling")
    force: bool = option(False, "redo every stage, even finished ones")

    def __post_init__(self):
        self.dataset, self.data_root = split_dataset_name(self.dataset, self.data_root)
        if self.train_steps < 1:
            raise ConfigError(f"train_steps must be >= 1, got {self.train_steps}")
        if self.precision not in PRECISION_CHOICES:
            raise ConfigError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


@dataclass
class Stage:
    name: str
    done_marker: Path  # the stage's final output: present means finished
    action: Callable[[], object]


def stages(config: DemoConfig, out: Path) -> list[Stage]:
    """The pipeline's steps, in order, each with the file that proves it finished."""
    from ex2.classify import stage as classify
    from ex2.generate import stage as generate
    from ex2.inspect import stage as inspect
    from ex2.report import stage as report
    from ex2.train import stage as train

    train_dir = out / "train"
    plan = [
        Stage("train", train_dir / "eval.json", lambda: train.run(*train_configs(config, train_dir))),
    ]
    for variant, adapter in (("base", None), ("aligned", train_dir / "adapter")):
        descriptions = out / "descriptions" / f"{variant}.jsonl"
        categories = out / "categories" / f"{variant}.jsonl"
        report_dir = out / "categories" / f"{variant}_report"
        plan.append(
            Stage(
                f"generate {variant}",
                descriptions,
                _bind(generate.run, _generate_config(config, descriptions, adapter)),
            )
        )
        plan.append(
            Stage(
                f"inspect {variant}",
                report_dir / "summary.json",
                _bind(inspect.run, _inspect_config(config, descriptions, categories, report_dir)),
            )
        )
    plan += [
        Stage(f"classify {name}", run_dir / "metrics.json", _bind(classify.run, cfg))
        for name, run_dir, cfg in _classify_runs(config, out)
    ]
    plan.append(
        Stage(
            "report",
            out / "report" / "report.html",
            _bind(report.run, report.ReportConfig(runs=[str(out)], output=str(out / "report"), title="ex2 demo")),
        )
    )
    return plan


def _bind(func: Callable, config) -> Callable[[], object]:
    return lambda: func(config)


def train_configs(config: DemoConfig, run_dir: Path):
    """``(TrainConfig, trl config)`` of the demo's training run."""
    from ex2.data import load_templates
    from ex2.train import stage as train

    heldout = max(1, len(load_templates(config.templates)) // 5)  # 5 of 25
    train_config = train.TrainConfig(
        dataset=config.dataset,
        data_root=config.data_root,
        vlm=config.vlm,
        llm=config.llm,
        reward="ex2",
        templates=config.templates,
        images_per_class=config.images_per_class,
        heldout_templates=heldout,
        eval_samples=1,
        precision=config.precision,
        resume=(run_dir / "config.yaml").is_file(),
    )
    return train_config, train.trainer_config(
        train_config,
        output_dir=str(run_dir),
        max_steps=config.train_steps,
        num_generations=config.num_generations,
        per_device_train_batch_size=config.num_generations,
        learning_rate=2e-3,  # far above EX2's 1.41e-5, so a CPU-sized run moves
        beta=0.0,  # no reference pass: about a fifth less compute per step
        save_steps=max(1, config.train_steps // 3),
        seed=config.seed,
    )


def _generate_config(config: DemoConfig, output: Path, adapter: Path | None):
    """Generate's settings, in even batches of at most 64 descriptions (the 200 of samples: 4 of 50)."""
    from ex2.data import load_templates
    from ex2.generate import stage as generate
    from ex2.llm.samplers import even_batch_size

    settings = generate.GenerateConfig(
        dataset=config.dataset,
        data_root=config.data_root,
        llm=config.llm,
        adapter=str(adapter) if adapter else None,
        templates=config.templates,
        output=str(output),
        seed=config.seed,
        device=config.device,
        dtype=config.precision,
        limit_concepts=config.limit_concepts,
    )
    descriptions = len(generate.load_concepts(settings)) * len(load_templates(config.templates))
    return dataclasses.replace(settings, batch_size=even_batch_size(descriptions))


def _inspect_config(config: DemoConfig, descriptions: Path, categories: Path, report_dir: Path):
    from ex2.inspect import stage as inspect

    return inspect.InspectConfig(
        input=str(descriptions),
        output=str(categories),
        backend="embedded",
        report_dir=str(report_dir),
        dataset=config.dataset,
        vlm=config.vlm,
    )


def _classify_runs(config: DemoConfig, out: Path):
    """(name, run folder, config) for class names, base/aligned descriptions and each category."""
    from ex2.classify import stage as classify

    def make(name: str, **kwargs):
        run_dir = out / "classify" / name
        cfg = classify.ClassifyConfig(
            dataset=config.dataset,
            data_root=config.data_root,
            vlm=config.vlm,
            device=config.device,
            output=str(run_dir),
            **kwargs,
        )
        return name, run_dir, cfg

    some_concepts = config.limit_concepts is not None  # the other classes keep their names alone
    runs = [make("clip", method="clip")]
    for variant in ("base", "aligned"):
        texts = str(out / "categories" / f"{variant}.jsonl")
        runs.append(make(f"ex2-{variant}", method="ex2", descriptions=texts, allow_missing=some_concepts))
        for category in CATEGORIES:
            runs.append(
                make(f"ex2-{variant}-{category}", method="ex2", descriptions=texts, categories=[category],
                     allow_missing=True)
            )
    return runs


def run(config: DemoConfig) -> Path:
    """Run every unfinished stage; returns the demo folder (the report is in ``report/``)."""
    out = check_output_path(config.output, "folder")
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    if config.force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out, name="demo_config.yaml")
    plan = stages(config, out)
    for number, stage in enumerate(plan, start=1):
        prefix = f"[{number}/{len(plan)}] {stage.name}"
        if stage.done_marker.exists():
            print(f"{prefix}: done already ({stage.done_marker})", flush=True)
            continue
        print(f"{prefix} ...", flush=True)
        started = time.perf_counter()
        stage.action()
        print(f"{prefix}: finished in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"report: {out / 'report' / 'report.html'}", flush=True)
    for line in headline_lines(out):
        print(line, flush=True)
    return out


def headline_lines(out: Path) -> list[str]:
    """The numbers that matter, base -> aligned: held-out reward, accuracy with the descriptions and
    informative share, read back from the demo's run outputs, each with its 95 % interval and the
    paired difference's (a finding, or within the noise)."""
    import warnings

    from ex2.report.runs import collect
    from ex2.report.tables import headline, headline_text

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        numbers = headline(collect([out], exclude=(out / "report").resolve()))
    return [headline_text(name, change) for name, change in numbers.items()]
