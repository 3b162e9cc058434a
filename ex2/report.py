"""Tables, plots and one self-contained HTML page across runs: ``ex2 report``.

    ex2 report runs/clip runs/ex2-visual runs/inspect runs/train --output runs/report

Every folder given is searched recursively for run outputs, never for models:

    metrics.json   from ``ex2 classify`` (accuracy by dataset, VLM, method, categories)
    summary.json   from ``ex2 inspect`` (category shares, grouped by VLM and adapter)
    log.jsonl      from ``ex2 train`` (reward per step; labels from the run's config.yaml)

``summary.csv`` gets one row per run (columns: the union over kinds); ``report.html`` holds the
tables and the plots as embedded base64 PNGs, so it can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ex2.config import option, save_config
from ex2.io import atomic_open, atomic_write_text, check_output_path, read_jsonl
from ex2.plotting import pyplot

CATEGORY_COLORS = {"spurious": "#d62728", "visual": "#1f77b4", "non_visual": "#2ca02c", "unparsed": "#7f7f7f"}


@dataclass
class ReportConfig:
    """Tables, plots and an HTML report from classify, inspect and train run folders."""

    runs: list[str] = option([], "run folders to search recursively (also as bare arguments)", positional=True)
    output: str = option("runs/report", "folder for summary.csv and report.html")
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
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # run -> (steps, rewards)
    groups: dict[str, dict] = field(default_factory=dict)  # inspect run -> summary["groups"]
    skipped: list[str] = field(default_factory=list)  # "file: why"


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


def classify_row(run: str, metrics: dict) -> dict:
    source = metrics.get("descriptions") or {}
    categories = metrics.get("categories")
    return {
        "kind": "classify", "run": run, "dataset": metrics.get("dataset"), "split": metrics.get("split"),
        "vlm": metrics.get("vlm"), "method": metrics["method"],
        "categories": "+".join(categories) if categories else "all",
        "descriptions_model": source.get("model"), "descriptions_adapter": source.get("adapter"),
        "descriptions": source.get("path"), "acc1": metrics["acc1"], "acc1_std": metrics.get("acc1_std"),
        "acc5": metrics.get("acc5"), "mean_per_class_recall": metrics.get("mean_per_class_recall"),
        "n_images": metrics.get("n_images"), "n_classes": metrics.get("n_classes"),
        "n_skipped_images": metrics.get("n_skipped_images"),
        "classes_without_descriptions": len(metrics.get("classes_without_descriptions") or []) or None,
    }


def inspect_row(run: str, summary: dict, config: dict) -> dict:
    judge = summary.get("judge") or {}
    shares = summary["category_shares"]
    vlms = ", ".join((summary.get("groups") or {}).get("vlm") or {})  # the VLMs the records name
    return {
        "kind": "inspect", "run": run, "source": summary.get("source"),
        "vlm": config.get("vlm") or vlms or None, "judge": judge.get("model") or judge.get("backend"),
        "n_descriptions": summary.get("n_descriptions"), "informative_share": summary.get("informative_share"),
        **{f"share_{name}": shares.get(name) for name in CATEGORY_COLORS},
    }


def train_row(run: str, records: list[dict], config: dict) -> tuple[dict, list[float], list[float]]:
    points = [(r.get("step", i), r["reward"]) for i, r in enumerate(records) if r.get("reward") is not None]
    steps, rewards = [float(s) for s, _ in points], [float(r) for _, r in points]
    row = {
        "kind": "train", "run": run, "vlm": config.get("vlm"), "llm": config.get("llm"),
        "reward": config.get("reward"), "steps": int(steps[-1]) if steps else 0,
        "reward_first": rewards[0] if rewards else None, "reward_last": rewards[-1] if rewards else None,
        "reward_max": max(rewards) if rewards else None,
    }
    return row, steps, rewards


def _add(runs: Runs, path: Path, run: str) -> None:
    """Read one candidate file into ``runs`` (files of other kinds are ignored)."""
    if path.name == "metrics.json":
        metrics = _read_json(path)
        if "acc1" in metrics and "method" in metrics:
            runs.classify.append(classify_row(run, metrics))
    elif path.name == "summary.json":
        summary = _read_json(path)
        if isinstance(summary.get("category_shares"), dict):
            runs.inspect.append(inspect_row(run, summary, _run_config(path.parent)))
            runs.groups[run] = summary.get("groups") or {}
    elif path.name == "log.jsonl":
        records = read_jsonl(path, tolerate_torn_tail=True)
        if any("reward" in r for r in records):
            row, steps, rewards = train_row(run, records, _run_config(path.parent))
            runs.train.append(row)
            runs.curves[run] = (steps, rewards)


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
    return runs


# --- plots -------------------------------------------------------------------------------------


def png_base64(fig) -> str:
    """A figure as a base64 PNG (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def bar_label(row: dict) -> str:
    """A classify row's bar: method, whose descriptions (base or aligned model, or the file) and category."""
    label = row["method"]
    if row.get("descriptions"):
        source = ("aligned" if row.get("descriptions_adapter") else "base" if row.get("descriptions_model")
                  else Path(row["descriptions"]).stem)
        label += f" · {source}"
    return label if row["categories"] == "all" else f"{label} [{row['categories']}]"


def plot_accuracy(rows: list[dict]) -> str:
    """Grouped bars: top-1 accuracy per method, description source and category filter, one colour per
    dataset × VLM (runs with the same bar and colour are averaged)."""
    plt = pyplot()
    labels = list(dict.fromkeys(bar_label(r) for r in rows))
    series = list(dict.fromkeys(f"{r['dataset']} · {r['vlm']}" for r in rows))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(labels) * max(1, len(series) / 2)), 3.8))
    for s, name in enumerate(series):
        values = {}
        for r in rows:
            if f"{r['dataset']} · {r['vlm']}" == name:
                values.setdefault(bar_label(r), []).append(r["acc1"])
        xs = [i + (s - (len(series) - 1) / 2) * width for i, label in enumerate(labels) if label in values]
        ys = [sum(values[label]) / len(values[label]) for label in labels if label in values]
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-1 accuracy")
    ax.legend(fontsize=8)
    ax.set_title("accuracy by method and description category")
    return png_base64(fig)


def share_bars(runs: Runs) -> dict[str, dict[str, float]]:
    """Bar label -> category shares, by VLM and by adapter (one bar per run when ungrouped)."""
    bars: dict[str, dict[str, float]] = {}
    for row in runs.inspect:
        groups = runs.groups.get(row["run"], {})
        prefix = f"{row['run']}: " if len(runs.inspect) > 1 else ""
        added = False
        for field_name in ("vlm", "adapter"):
            for value, group in (groups.get(field_name) or {}).items():
                if isinstance(group, dict) and isinstance(group.get("category_shares"), dict):
                    bars[f"{prefix}{field_name}={value}"] = group["category_shares"]
                    added = True
        if not added:
            bars[row["run"]] = {name: row.get(f"share_{name}") or 0.0 for name in CATEGORY_COLORS}
    return bars


def plot_shares(bars: dict[str, dict[str, float]]) -> str:
    """Stacked horizontal bars of category shares."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 1 + 0.45 * len(bars)))
    left = [0.0] * len(bars)
    for category, colour in CATEGORY_COLORS.items():
        values = [float(shares.get(category) or 0.0) for shares in bars.values()]
        ax.barh(range(len(bars)), values, left=left, color=colour, label=category)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_yticks(range(len(bars)), list(bars), fontsize=8)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of descriptions")
    ax.legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return png_base64(fig)


def plot_curves(curves: dict[str, tuple[list[float], list[float]]]) -> str:
    """Mean reward against step, one line per training run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for run, (steps, rewards) in curves.items():
        ax.plot(steps, rewards, marker="o" if len(steps) < 30 else None, markersize=3, label=run)
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=8)
    ax.set_title("reward curves")
    return png_base64(fig)


# --- outputs -----------------------------------------------------------------------------------


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_csv(path: Path, rows: list[dict]) -> Path:
    """One row per run; columns are the union of all rows' keys, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_open(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _cell(row.get(k)) for k in columns} for row in rows)
    return path


def html_table(rows: list[dict], caption: str) -> str:
    columns = [k for k in dict.fromkeys(key for row in rows for key in row) if k != "kind"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return (f'<div class="scroll"><table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def html_image(data: str, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0;
font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f0f0f0}caption{font-weight:bold;
text-align:left;padding:4px 0}img{max-width:100%}figure{margin:1em 0}code{background:#f5f5f5}
.scroll{overflow-x:auto}"""


def render_html(runs: Runs, title: str) -> str:
    """The page: a section per kind of run found, tables first, then plots."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if runs.classify:
        parts += ["<h2>Classification</h2>", html_table(runs.classify, "zero-shot accuracy per run"),
                  html_image(plot_accuracy(runs.classify), "accuracy by method and category")]
    if runs.inspect:
        parts += ["<h2>Inspection</h2>", html_table(runs.inspect, "description categories per run"),
                  html_image(plot_shares(share_bars(runs)), "category shares by VLM and adapter")]
    if runs.train:
        parts += ["<h2>Training</h2>", html_table(runs.train, "reward per training run"),
                  html_image(plot_curves(runs.curves), "reward curves")]
    if runs.skipped:
        items = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in runs.skipped)
        parts += [f"<h2>Skipped files</h2><ul>{items}</ul>"]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def run(config: ReportConfig) -> Path:
    """Collect the runs and write summary.csv, report.html and the resolved config."""
    out = check_output_path(config.output, "folder")
    runs = collect(config.runs, exclude=out.resolve() if out.exists() else None)
    if not (runs.classify or runs.inspect or runs.train):
        raise ValueError(
            f"no run outputs under {', '.join(config.runs)}: expected metrics.json (ex2 classify), "
            "summary.json (ex2 inspect) or log.jsonl (ex2 train) somewhere inside"
        )
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out)
    write_csv(out / "summary.csv", runs.classify + runs.inspect + runs.train)
    atomic_write_text(out / "report.html", render_html(runs, config.title))
    print(f"report of {len(runs.classify)} classify, {len(runs.inspect)} inspect and {len(runs.train)} "
          f"train run(s) -> {out / 'report.html'}")
    return out
