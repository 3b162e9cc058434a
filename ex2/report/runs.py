"""What ``ex2 report`` finds in run folders (:func:`collect`), as :class:`Runs`: flat rows per run
plus the data for the plots, read from run outputs only, never from a model:

    metrics.json   from ``ex2 classify`` (accuracy by dataset, VLM, method, categories)
    summary.json   from ``ex2 inspect`` (category and attribute shares); the categorized descriptions
                   it names (its ``source``) are read too, for the description tables
    log.jsonl      from ``ex2 train`` (reward, KL, completion length per step, sampled completions;
                   labels from the run's config.yaml); ``eval.json`` beside it gives the held-out
                   base → trained rewards and pairs
    predictions.csv  beside a metrics.json: which images a run got right, for paired comparisons

:func:`collect` also computes the shares with their intervals and the paired comparisons
(:mod:`ex2.report.compare`), and adds the interval columns to the inspect and train rows.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ex2.core.io import read_jsonl
from ex2.report import compare

CATEGORY_COLORS = {"spurious": "#d62728", "visual": "#1f77b4", "non_visual": "#2ca02c", "unparsed": "#7f7f7f"}


@dataclass
class Runs:
    """What was found under the given folders, as flat rows plus data for the plots."""

    classify: list[dict] = field(default_factory=list)
    inspect: list[dict] = field(default_factory=list)
    train: list[dict] = field(default_factory=list)
    curves: dict[str, dict[str, list]] = field(default_factory=dict)  # run -> {"step", "reward", "kl", ...}
    summaries: dict[str, dict] = field(default_factory=dict)  # inspect run -> summary.json
    descriptions: list[dict] = field(default_factory=list)  # categorized records, with "run", "vlm", "variant"
    heldout: list[dict] = field(default_factory=list)  # eval.json samples, with "run"
    rewarded: list[dict] = field(default_factory=list)  # every text with a known reward
    skipped: list[str] = field(default_factory=list)  # "file: why"
    correct: dict[str, dict[str, bool]] = field(default_factory=dict)  # classify run -> image path -> right
    shares: list[dict] = field(default_factory=list)  # each share of each set of descriptions, with its interval
    comparisons: list[compare.Comparison] = field(default_factory=list)  # paired differences (ex2.report.compare)


# --- reading run outputs -----------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _run_config(folder: Path) -> dict:
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def variant_of(adapter) -> str:
    """"base" for descriptions from the base model, else "aligned"."""
    return "aligned" if adapter not in (None, "", "base") else "base"


def classify_row(run: str, metrics: dict) -> dict:
    source = metrics.get("descriptions") or {}
    categories = metrics.get("categories")
    return {
        "kind": "classify", "run": run, "dataset": metrics.get("dataset"), "split": metrics.get("split"),
        "vlm": metrics.get("vlm"), "method": metrics["method"],
        "categories": "+".join(categories) if categories else "all",
        "descriptions_model": source.get("model"), "descriptions_adapter": source.get("adapter"),
        "descriptions": source.get("path"), "acc1": metrics["acc1"],
        **{key: metrics.get(key) for key in ("acc1_low", "acc1_high", "acc1_std", "acc5", "acc5_low", "acc5_high",
                                             "mean_per_class_recall", "mean_per_class_recall_low",
                                             "mean_per_class_recall_high")},
        "n_images": metrics.get("n_images"), "n_classes": metrics.get("n_classes"),
        "n_skipped_images": metrics.get("n_skipped_images"),
        "classes_without_descriptions": len(metrics.get("classes_without_descriptions") or []) or None,
    }


def inspect_row(run: str, summary: dict, config: dict) -> dict:
    judge = summary.get("judge") or {}
    shares = summary["category_shares"]
    vlms = ", ".join((summary.get("groups") or {}).get("vlm") or {})  # the VLMs the records name
    variants = ", ".join((summary.get("groups") or {}).get("aligned") or {})
    return {
        "kind": "inspect", "run": run, "source": summary.get("source"),
        "vlm": config.get("vlm") or vlms or None, "variant": variants or None,
        "judge": judge.get("model") or judge.get("backend"),
        "n_descriptions": summary.get("n_descriptions"), "informative_share": summary.get("informative_share"),
        **{f"share_{name}": shares.get(name) for name in CATEGORY_COLORS},
    }


def _series(records: list[dict], key: str) -> list:
    return [r.get(key) for r in records]


def train_row(run: str, records: list[dict], config: dict) -> tuple[dict, dict[str, list]]:
    """The run's row and its per-step series (reward on steps that generated; KL, length where logged)."""
    curve = {"step": [float(r.get("step", i)) for i, r in enumerate(records)]}
    for key in ("reward", "reward_std", "kl", "completion_length"):
        curve[key] = [float(v) if isinstance(v, int | float) else None for v in _series(records, key)]
    rewards = [r for r in curve["reward"] if r is not None]
    row = {
        "kind": "train", "run": run, "vlm": config.get("vlm"), "llm": config.get("llm"),
        "reward": config.get("reward"), "steps": int(curve["step"][-1]) if records else 0,
        "reward_first": rewards[0] if rewards else None, "reward_last": rewards[-1] if rewards else None,
        "reward_max": max(rewards) if rewards else None,
        "kl_last": next((k for k in reversed(curve["kl"]) if k is not None), None),
        "completion_length_last": next((k for k in reversed(curve["completion_length"]) if k is not None), None),
    }
    return row, curve


def _source_path(summary_path: Path, source: str) -> Path | None:
    """The categorized-descriptions file a summary names: as written, else near the summary."""
    candidates = [Path(source), summary_path.parent / source, summary_path.parent / Path(source).name,
                  summary_path.parent.parent / Path(source).name]
    return next((p for p in candidates if source and p.is_file()), None)


def _add_descriptions(runs: Runs, run: str, summary_path: Path, summary: dict, vlm: str | None) -> None:
    source = _source_path(summary_path, str(summary.get("source") or ""))
    if source is None:
        return
    for record in read_jsonl(source, required=("concept", "description"), tolerate_torn_tail=True):
        runs.descriptions.append({
            "run": run, "vlm": record.get("vlm") or vlm, "variant": variant_of(record.get("adapter")),
            "adapter": record.get("adapter"), "concept": record["concept"], "template": record.get("template"),
            "sample": record.get("sample"), "description": record["description"],
            "category": record.get("category"), "attribute": record.get("attribute"), "reward": None,
        })


def _add_training(runs: Runs, run: str, path: Path) -> None:
    records = read_jsonl(path, tolerate_torn_tail=True)
    if not any("reward" in r for r in records):
        return
    row, curve = train_row(run, records, _run_config(path.parent))
    for record in records:
        for sample in record.get("samples") or []:
            if isinstance(sample, dict) and isinstance(sample.get("reward"), int | float):
                runs.rewarded.append({"run": run, "from": f"training step {record.get('step')}",
                                      "concept": sample.get("concept"), "text": sample.get("text"),
                                      "reward": float(sample["reward"])})
    evaluation = path.parent / "eval.json"
    if evaluation.is_file():
        result = _read_json(evaluation)
        row["heldout_base_reward"] = result.get("base_mean_reward")
        row["heldout_trained_reward"] = result.get("trained_mean_reward")
        for sample in result.get("samples") or []:
            runs.heldout.append({"run": run, **{k: sample.get(k) for k in (
                "concept", "query", "base", "base_reward", "trained", "trained_reward")}})
            for variant, key in (("base", "base"), ("aligned", "trained")):
                if isinstance(sample.get(f"{key}_reward"), int | float):
                    runs.rewarded.append({"run": run, "from": f"held-out {variant}", "concept": sample.get("concept"),
                                          "text": sample.get(key), "reward": float(sample[f"{key}_reward"])})
    runs.train.append(row)
    runs.curves[run] = curve


def _add(runs: Runs, path: Path, run: str) -> None:
    """Read one candidate file into ``runs`` (files of other kinds are ignored)."""
    if path.name == "metrics.json":
        metrics = _read_json(path)
        if "acc1" in metrics and "method" in metrics:
            runs.classify.append(classify_row(run, metrics))
            runs.correct[run] = compare.read_correct(path.parent / "predictions.csv")
    elif path.name == "summary.json":
        summary = _read_json(path)
        if isinstance(summary.get("category_shares"), dict):
            row = inspect_row(run, summary, _run_config(path.parent))
            runs.inspect.append(row)
            runs.summaries[run] = summary
            _add_descriptions(runs, run, path, summary, row["vlm"])
    elif path.name == "log.jsonl":
        _add_training(runs, run, path)


def _attach_rewards(runs: Runs) -> None:
    """Descriptions whose (concept, text) was scored in training or held-out evaluation get that reward."""
    known = {(r["concept"], r["text"]): r["reward"] for r in runs.rewarded}
    for record in runs.descriptions:
        record["reward"] = known.get((record["concept"], record["description"]))


def collect(folders: list[str | Path], exclude: Path | None = None) -> Runs:
    """Walk the folders for run outputs; unreadable files are listed in ``skipped``, not fatal."""
    runs = Runs()
    for folder in map(Path, folders):
        folder = folder.resolve() if folder.name in ("", ".", "..") else folder
        if not folder.is_dir():
            raise FileNotFoundError(f"run folder {folder} does not exist")
        for parent, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(parent, d).resolve() != exclude)
            for name in sorted({"metrics.json", "summary.json", "log.jsonl"} & set(files)):
                path = Path(parent, name)
                run = str(Path(folder.name, path.parent.relative_to(folder)))
                try:
                    _add(runs, path, run)
                except (ValueError, KeyError, TypeError, OSError) as err:
                    runs.skipped.append(f"{path}: {err}")
                    warnings.warn(f"ex2 report: skipping {path}: {err}", stacklevel=2)
    _attach_rewards(runs)
    _add_intervals(runs)
    return runs


def _add_intervals(runs: Runs) -> None:
    """Shares with intervals, the paired comparisons, and the interval columns of inspect and train rows."""
    runs.shares = compare.share_rows(runs.descriptions)
    runs.comparisons = compare.comparisons(runs.classify, runs.correct, runs.descriptions, runs.heldout)
    for row in runs.inspect:
        if row.get("variant") and "," not in row["variant"]:  # a run mixing variants: see shares.csv
            row.update(compare.share_columns(runs.shares, row["run"], row["variant"]))
    for row in runs.train:
        row.update(compare.heldout_columns(runs.heldout, runs.comparisons, row["run"]))
