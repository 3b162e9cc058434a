"""The tables of ``ex2 report``, built from :class:`~ex2.report.runs.Runs`: attribute shares,
descriptions base vs aligned side by side, the best and worst rewarded texts, signs of reward
hacking, the headline numbers; each written as a CSV (:func:`write_table`)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from ex2.core.io import write_csv
from ex2.core.taxonomy import NON_VISUAL_ATTRIBUTES, VISUAL_ATTRIBUTES
from ex2.report import compare
from ex2.report.runs import CATEGORY_COLORS, Runs
from ex2.report.stats import hacking_signs

EXTREMES = 10  # texts in the top- and bottom-rewarded tables


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


def cell_text(value) -> str:
    """A table cell as text: empty for None, floats to four places."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_table(path: Path, rows: list[dict]) -> Path:
    """One CSV row per record; columns are the union of all rows' keys, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return write_csv(path, columns, ([cell_text(row.get(k)) for k in columns] for row in rows))


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
