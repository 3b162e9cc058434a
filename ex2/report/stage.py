"""Tables, plots and one self-contained HTML page across runs: ``ex2 report``.

    ex2 report runs/clip runs/ex2-visual runs/inspect runs/train --output runs/report

Every folder given is searched recursively for run outputs, never for models:

    metrics.json   from ``ex2 classify`` (accuracy by dataset, VLM, method, categories)
    summary.json   from ``ex2 inspect`` (category and attribute shares); the categorized descriptions
                   it names (its ``source``) are read too, for the description tables
    log.jsonl      from ``ex2 train`` (reward, KL, completion length per step, sampled completions;
                   labels from the run's config.yaml); ``eval.json`` beside it gives the held-out
                   base → trained rewards and pairs
    predictions.csv  beside a metrics.json: which images a run got right, for paired comparisons

The page (``report.html``, plots as embedded PNGs, inline script only, so it opens offline) shows
accuracy, the descriptions base vs aligned side by side (sortable, filterable), the best and worst
rewarded texts, held-out pairs, attribute shares per VLM and adapter, training curves and signs of
reward hacking. ``summary.csv`` has one row per run; every other table is a CSV beside it.

Every number comes with its 95 % interval where the run outputs allow one, and every base → aligned
difference (and each category vs all, each method vs class names) is tested on the units both sides
share (:mod:`ex2.report.compare`): ``differences.csv`` says which are findings and which lie within
the noise; ``shares.csv`` has each share with its interval, concepts resampled.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ex2.core.config import option, save_config
from ex2.core.io import atomic_open, atomic_write_text, check_output_path, read_jsonl
from ex2.core.taxonomy import NON_VISUAL_ATTRIBUTES, VISUAL_ATTRIBUTES
from ex2.report import compare
from ex2.report.stats import hacking_signs

CATEGORY_COLORS = {"spurious": "#d62728", "visual": "#1f77b4", "non_visual": "#2ca02c", "unparsed": "#7f7f7f"}
EXTREMES = 10  # texts in the top- and bottom-rewarded tables


@dataclass
class ReportConfig:
    """Tables, plots and an HTML report from classify, inspect and train run folders."""

    runs: list[str] = option([], "run folders to search recursively (also as bare arguments)", positional=True)
    output: str = option("runs/report", "folder for summary.csv, the other CSVs and report.html")
    title: str = option("ex2 report", "title of the HTML page")

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("no run folders given; pass them as arguments: ex2 report RUN_DIR [RUN_DIR ...]")


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


# --- tables ------------------------------------------------------------------------------------


def attribute_rows(runs: Runs) -> list[dict]:
    """One row per inspection run (per variant when a run mixes base and aligned descriptions): category
    shares and each attribute's share of all its descriptions."""
    rows = []
    for row in runs.inspect:
        summary = runs.summaries[row["run"]]
        groups = (summary.get("groups") or {}).get("aligned") or {}
        parts = groups.items() if len(groups) > 1 else [(row.get("variant") or "all", summary)]
        for variant, part in parts:
            categories = part.get("category_shares") or {}
            within = part.get("attribute_shares") or {}
            out = {"run": row["run"], "vlm": row.get("vlm"), "variant": variant,
                   "n": part.get("n", summary.get("n_descriptions"))}
            out |= {f"share_{c}": categories.get(c) for c in CATEGORY_COLORS}
            for category, names in (("visual", VISUAL_ATTRIBUTES), ("non_visual", NON_VISUAL_ATTRIBUTES)):
                found = within.get(category) or {}
                out |= {a: (categories.get(category) or 0.0) * float(found.get(a) or 0.0) for a in names}
            rows.append(out)
    order = {"base": 0, "aligned": 1}
    return sorted(rows, key=lambda r: (r["vlm"] or "", order.get(r["variant"], 2)))  # base before aligned


def side_by_side(descriptions: list[dict]) -> list[dict]:
    """Base and aligned descriptions of the same concept, template and sample in one row."""
    rows: dict[tuple, dict] = {}
    for record in descriptions:
        key = (record["vlm"], record["concept"], record["template"], record["sample"])
        while record["variant"] in rows.get(key, {}).get("_filled", ()):
            key = (*key, "again")  # a second aligned run: its own row
        row = rows.setdefault(key, {"_filled": set(), "vlm": record["vlm"], "concept": record["concept"],
                                    "template": record["template"]})
        row["_filled"].add(record["variant"])
        for name in ("description", "category", "attribute", "reward"):
            row[f"{record['variant']}_{name}"] = record[name]
    columns = ["vlm", "concept", "template"] + [f"{v}_{n}" for v in ("base", "aligned")
                                                for n in ("description", "category", "attribute", "reward")]
    return [{c: row.get(c) for c in columns} for row in rows.values()]


def extremes(rewarded: list[dict], count: int = EXTREMES) -> tuple[list[dict], list[dict]]:
    """The ``count`` highest- and lowest-rewarded texts (each text of a concept once)."""
    unique: dict[tuple, dict] = {}
    for record in rewarded:  # a text scored at several steps is listed once, at its first
        if record.get("text") is not None:
            unique.setdefault((record["concept"], record["text"]), record)
    ordered = sorted(unique.values(), key=lambda r: r["reward"], reverse=True)
    return ordered[:count], ordered[::-1][:count]


def hacking_rows(runs: Runs) -> list[dict]:
    """Signs of reward hacking per set of descriptions: each inspection run's base and aligned texts,
    and each training run's held-out samples."""
    sets: dict[tuple, list[dict]] = defaultdict(list)
    for record in runs.descriptions:
        sets[("descriptions", record["run"], record["vlm"], record["variant"])].append(
            {"text": record["description"], "concept": record["concept"]})
    vlms = {row["run"]: row.get("vlm") for row in runs.train}
    for sample in runs.heldout:
        for variant, key in (("base", "base"), ("aligned", "trained")):
            if isinstance(sample.get(key), str):
                sets[("held-out", sample["run"], vlms.get(sample["run"]), variant)].append({"text": sample[key],
                                                                          "concept": str(sample["concept"])})
    rows = []
    for (source, run, vlm, variant), items in sets.items():
        signs = hacking_signs([i["text"] for i in items], [i["concept"] for i in items])
        rows.append({"from": source, "run": run, "vlm": vlm, "variant": variant, **signs})
    return rows


def _first(rows: list[dict], key: str, **match) -> dict | None:
    """The first row with a value for ``key`` whose other fields match."""
    return next((r for r in rows if r.get(key) is not None and all(r.get(k) == v for k, v in match.items())), None)


def headline(runs: Runs) -> dict[str, compare.Change]:
    """The numbers that matter, base → aligned, with their intervals and the paired difference: held-out
    reward, accuracy with all the descriptions, informative share (the first run of each kind that has
    them; pairs missing both are left out)."""
    described = [r for r in runs.classify if r["method"] == "ex2" and r["categories"] == "all"]
    pairs = {
        "held-out reward": (_first(runs.train, "heldout_base_reward"), "heldout_base_reward",
                            _first(runs.train, "heldout_trained_reward"), "heldout_trained_reward"),
        "accuracy with the descriptions": (
            _first([r for r in described if not r.get("descriptions_adapter") and r.get("descriptions_model")],
                   "acc1"), "acc1", _first([r for r in described if r.get("descriptions_adapter")], "acc1"), "acc1"),
        "informative share": (_first(runs.inspect, "informative_share", variant="base"), "informative_share",
                              _first(runs.inspect, "informative_share", variant="aligned"), "informative_share"),
    }
    changes = {}
    for name, (base, base_key, aligned, aligned_key) in pairs.items():
        if base is None and aligned is None:
            continue
        if name == "held-out reward":
            difference = compare.find(runs.comparisons, kind="held-out reward", before=f"{(base or aligned)['run']} (base)")
        elif name == "informative share":
            difference = compare.find(runs.comparisons, kind="share", measure="informative")
        else:
            difference = compare.find(runs.comparisons, kind="accuracy", before=(base or {}).get("run"),
                                      after=(aligned or {}).get("run"))
        changes[name] = compare.Change(compare.row_interval(base, base_key), compare.row_interval(aligned, aligned_key),
                                       difference)
    return changes


def headline_text(name: str, change: compare.Change, arrow: str = "->") -> str:
    """One headline number as a line: rewards to two places, accuracies and shares to three."""
    return f"{name}: {change.text(2 if name == 'held-out reward' else 3, arrow)}"


# --- outputs -----------------------------------------------------------------------------------


def cell_text(value) -> str:
    """A table cell as text: empty for None, floats to four places."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_csv(path: Path, rows: list[dict]) -> Path:
    """One row per record; columns are the union of all rows' keys, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_open(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: cell_text(row.get(k)) for k in columns} for row in rows)
    return path


def relative_paths(rows: list[dict], out: Path, keys=("descriptions", "descriptions_adapter", "source")) -> None:
    """Paths in ``keys`` rewritten relative to the report folder (when they name an existing file)."""
    for row in rows:
        for key in keys:
            value = row.get(key)
            if value and Path(value).exists():
                row[key] = os.path.relpath(Path(value).resolve(), out.resolve())


def tables(runs: Runs) -> dict[str, list[dict]]:
    """Every table beyond the per-run rows, by CSV name (empty tables are left out)."""
    top, bottom = extremes(runs.rewarded)
    found = {"descriptions": side_by_side(runs.descriptions), "attributes": attribute_rows(runs),
             "hacking": hacking_rows(runs), "top_rewarded": top, "bottom_rewarded": bottom,
             "heldout_pairs": runs.heldout, "differences": [c.row() for c in runs.comparisons],
             "shares": runs.shares}
    return {name: rows for name, rows in found.items() if rows}


def run(config: ReportConfig) -> Path:
    """Collect the runs and write summary.csv, a CSV per table, report.html and the resolved config."""
    from ex2.report.html import render_html

    out = check_output_path(config.output, "folder")
    runs = collect(config.runs, exclude=out.resolve() if out.exists() else None)
    if not (runs.classify or runs.inspect or runs.train):
        raise ValueError(
            f"no run outputs under {', '.join(config.runs)}: expected metrics.json (ex2 classify), "
            "summary.json (ex2 inspect) or log.jsonl (ex2 train) somewhere inside"
        )
    out.mkdir(parents=True, exist_ok=True)
    relative_paths(runs.classify + runs.inspect, out)
    save_config(config, out)
    write_csv(out / "summary.csv", runs.classify + runs.inspect + runs.train)
    extra = tables(runs)
    for name, rows in extra.items():
        write_csv(out / f"{name}.csv", rows)
    atomic_write_text(out / "report.html", render_html(runs, extra, config.title, headline(runs)))
    print(f"report of {len(runs.classify)} classify, {len(runs.inspect)} inspect and {len(runs.train)} "
          f"train run(s) -> {out / 'report.html'}")
    return out
