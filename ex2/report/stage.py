"""Tables, plots and one self-contained HTML page across runs: ``ex2 report``.

    ex2 report runs/clip runs/ex2-visual runs/inspect runs/train --output runs/report

Every folder given is searched recursively for run outputs, never for models
(:mod:`ex2.report.runs`: classify's metrics.json, inspect's summary.json and the descriptions it
names, train's log.jsonl and eval.json); the tables are built in :mod:`ex2.report.tables`, the page
in :mod:`ex2.report.html`.

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

from dataclasses import dataclass
from pathlib import Path

from ex2.core.config import option, save_config
from ex2.core.io import atomic_write_text, check_output_path
from ex2.report.html import render_html
from ex2.report.runs import collect
from ex2.report.tables import headline, relative_paths, tables, write_table


@dataclass
class ReportConfig:
    """Tables, plots and an HTML report from classify, inspect and train run folders."""

    runs: list[str] = option([], "run folders to search recursively (also as bare arguments)", positional=True)
    output: str = option("runs/report", "folder for summary.csv, the other CSVs and report.html")
    title: str = option("ex2 report", "title of the HTML page")

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("no run folders given; pass them as arguments: ex2 report RUN_DIR [RUN_DIR ...]")


def run(config: ReportConfig) -> Path:
    """Collect the runs and write summary.csv, a CSV per table, report.html and the resolved config."""
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
    write_table(out / "summary.csv", runs.classify + runs.inspect + runs.train)
    extra = tables(runs)
    for name, rows in extra.items():
        write_table(out / f"{name}.csv", rows)
    atomic_write_text(out / "report.html", render_html(runs, extra, config.title, headline(runs)))
    print(f"report of {len(runs.classify)} classify, {len(runs.inspect)} inspect and {len(runs.train)} "
          f"train run(s) -> {out / 'report.html'}")
    return out
