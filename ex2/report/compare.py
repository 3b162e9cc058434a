"""Which differences in ``ex2 report`` are findings: paired comparisons with 95 % intervals.

Only runs that saw the same units are compared, unit by unit (:mod:`ex2.core.intervals`):

accuracy         two classify runs of the same dataset, split and VLM, paired by image path through
                 their ``predictions.csv``: base → aligned descriptions (same method and categories),
                 each category → all descriptions, class names (``clip``) → each other method.
                 Paired percentile bootstrap over images, and the exact McNemar p-value.
shares           informative (unparsed texts left out), spurious, visual, non-visual and each
                 attribute's share of all descriptions, base → aligned per VLM (and adapter): both
                 shares over the same concepts drawn with replacement, since the descriptions of one
                 concept are not independent draws.
held-out reward  trained - base over the training run's held-out prompts (same prompts and seeds),
                 prompts resampled with all their samples (as ``eval.json``'s ``reward_difference``).

A difference is a *finding* when its interval excludes zero (and, for accuracy, the exact McNemar
test agrees at 5 %: with a handful of discordant images the percentile bootstrap is too narrow);
otherwise it is within the noise.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ex2.core.intervals import Interval, mcnemar, mean_interval, paired_difference, share_difference
from ex2.core.taxonomy import NON_VISUAL_ATTRIBUTES, VISUAL_ATTRIBUTES
from ex2.inspect.report import share_indicators

CATEGORY_SHARES = ("informative", "spurious", "visual", "non_visual")
FEW_UNITS = 10  # below this many clusters a percentile bootstrap understates the noise
ALPHA = 0.05  # McNemar's level, matching the 95 % intervals
SHARES = CATEGORY_SHARES + VISUAL_ATTRIBUTES + NON_VISUAL_ATTRIBUTES


@dataclass
class Comparison:
    """One paired difference ``after - before`` and whether it is a finding."""

    kind: str  # "accuracy", "share" or "held-out reward"
    measure: str  # "acc1", a share's name or "reward"
    what: str  # what changed: "base → aligned descriptions", "visual vs all descriptions", ...
    before: str  # the run (or set of descriptions) compared from
    after: str
    n: int  # paired units
    unit: str  # "images", "concepts" or "prompts"
    before_value: float
    after_value: float
    difference: Interval
    p_value: float | None = None  # exact McNemar, for accuracy

    @property
    def finding(self) -> bool:
        return self.difference.excludes(0.0) and (self.p_value is None or self.p_value < ALPHA)

    def reading(self) -> str:
        """The comparison in words."""
        test = f"; McNemar p = {self.p_value:.3g}" if self.p_value is not None else ""
        if self.difference.low is None:
            return f"too few {self.unit} to tell{test}"
        few = f"; only {self.n} {self.unit}: the interval is too narrow to trust" if self.n < FEW_UNITS else ""
        if self.finding:
            way = "up" if self.difference.estimate > 0 else "down"
            return f"a finding: {way}, the 95 % interval excludes 0{test}{few}"
        if self.difference.excludes(0.0):
            return f"not a finding: the bootstrap interval excludes 0 but the exact test does not agree{test}"
        return f"within the noise: the 95 % interval includes 0 ({self.n} {self.unit}){test}"

    def row(self) -> dict:
        return {"kind": self.kind, "measure": self.measure, "what": self.what, "before": self.before,
                "after": self.after, "n": self.n, "unit": self.unit, "before_value": self.before_value,
                "after_value": self.after_value, **self.difference.columns("difference"),
                "p_value": self.p_value, "finding": "yes" if self.finding else "no", "reading": self.reading()}


# --- accuracy ----------------------------------------------------------------------------------


def read_correct(path: Path) -> dict[str, bool]:
    """Image path -> right or wrong, from a classify run's predictions.csv (empty when absent)."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"path", "correct"} <= set(reader.fieldnames or ()):
            raise ValueError("expected predictions.csv columns path and correct")
        return {row["path"]: row["correct"] == "1" for row in reader}


def _source(row: dict) -> str | None:
    """Whose descriptions a classify row used: "aligned", "base" or None (class names, a file)."""
    if row.get("descriptions_adapter"):
        return "aligned"
    return "base" if row.get("descriptions_model") else None


def run_label(row: dict) -> str:
    """A classify run in a comparison: method, whose descriptions and the category kept."""
    source = _source(row)
    label = row["method"] + (f" · {source}" if source else "")
    return label if row["categories"] == "all" else f"{label} [{row['categories']}]"


def accuracy_pairs(rows: list[dict]) -> list[tuple[str, dict, dict]]:
    """``(what, before, after)`` for the classify runs worth comparing (same dataset, split and VLM)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row.get("dataset"), row.get("split"), row.get("vlm"))].append(row)
    pairs = []
    for group in groups.values():
        names = next((r for r in group if r["method"] == "clip"), None)
        for row in group:
            if names is not None and row is not names and row["method"] != "clip":
                pairs.append((f"{run_label(row)} vs class names", names, row))
            if row["categories"] != "all":
                whole = next((r for r in group if r["categories"] == "all" and r["method"] == row["method"]
                              and r.get("descriptions") == row.get("descriptions")), None)
                if whole is not None:
                    pairs.append((f"{run_label(row)} vs all descriptions", whole, row))
            if _source(row) == "aligned":
                base = next((r for r in group if _source(r) == "base" and r["method"] == row["method"]
                             and r["categories"] == row["categories"]), None)
                if base is not None:
                    pairs.append((f"base → aligned descriptions ({row['categories']})", base, row))
    return pairs


def accuracy_comparison(what: str, before: dict, after: dict, correct: dict[str, dict[str, bool]]) -> Comparison | None:
    """Top-1 accuracy ``after - before`` over the images both runs scored (None without predictions)."""
    first, second = correct.get(before["run"]) or {}, correct.get(after["run"]) or {}
    common = sorted(set(first) & set(second))
    if not common:
        return None
    a, b = [first[p] for p in common], [second[p] for p in common]
    test = mcnemar(a, b)
    return Comparison("accuracy", "acc1", what, before["run"], after["run"], len(common), "images",
                      sum(a) / len(a), sum(b) / len(b), paired_difference(a, b), test.p_value)


# --- shares ------------------------------------------------------------------------------------


def share_rows(descriptions: list[dict]) -> list[dict]:
    """shares.csv: each share of each set of descriptions (run, VLM, variant) with its interval,
    concepts resampled."""
    sets: dict[tuple, list[dict]] = defaultdict(list)
    for record in descriptions:
        sets[(record["run"], record.get("vlm"), record["variant"])].append(record)
    rows = []
    for (run, vlm, variant), records in sets.items():
        for measure, (values, concepts) in share_indicators(records).items():
            if values:
                found = mean_interval(values, concepts)
                rows.append({"run": run, "vlm": vlm, "variant": variant, "measure": measure, "n": len(values),
                             "concepts": len(set(concepts)), **found.columns("share")})
    return rows


def share_comparisons(descriptions: list[dict]) -> list[Comparison]:
    """Every share, base → aligned, per VLM and adapter (concepts present in both resampled)."""
    by_vlm: dict[tuple, list[dict]] = defaultdict(list)
    for record in descriptions:
        side = "base" if record["variant"] == "base" else str(record.get("adapter") or "aligned")
        by_vlm[(record.get("vlm"), side)].append(record)
    found = []
    for (vlm, side), aligned in by_vlm.items():
        base = by_vlm.get((vlm, "base"))
        if side == "base" or not base:
            continue
        before, after = share_indicators(base), share_indicators(aligned)
        for measure in SHARES:
            (a, ca), (b, cb) = before[measure], after[measure]
            if not (set(ca) & set(cb)) or not (any(a) or any(b)):  # nothing in common, or absent on both sides
                continue
            difference = share_difference(a, ca, b, cb)
            found.append(Comparison("share", measure, f"base → aligned descriptions ({vlm or '?'})",
                                    _runs(base), _runs(aligned), len(set(ca) & set(cb)), "concepts",
                                    sum(a) / len(a), sum(b) / len(b), difference))
    return found


def _runs(records: list[dict]) -> str:
    return ", ".join(dict.fromkeys(r["run"] for r in records))


# --- held-out reward ---------------------------------------------------------------------------


def heldout_comparisons(heldout: list[dict]) -> list[Comparison]:
    """Trained - base reward on each training run's held-out prompts."""
    by_run: dict[str, list[dict]] = defaultdict(list)
    for sample in heldout:
        if isinstance(sample.get("base_reward"), int | float) and isinstance(sample.get("trained_reward"), int | float):
            by_run[sample["run"]].append(sample)
    found = []
    for run, samples in by_run.items():
        base = [float(s["base_reward"]) for s in samples]
        trained = [float(s["trained_reward"]) for s in samples]
        prompts = [str(s.get("query")) for s in samples]
        difference = paired_difference(base, trained, prompts)
        found.append(Comparison("held-out reward", "reward", "base → trained model", f"{run} (base)",
                                f"{run} (trained)", len(set(prompts)), "prompts", sum(base) / len(base),
                                sum(trained) / len(trained), difference))
    return found


def heldout_means(heldout: list[dict], run: str) -> tuple[Interval | None, Interval | None]:
    """The base and trained mean rewards of one training run's held-out samples, prompts resampled."""
    samples = [s for s in heldout if s["run"] == run and isinstance(s.get("base_reward"), int | float)
               and isinstance(s.get("trained_reward"), int | float)]
    if not samples:
        return None, None
    prompts = [str(s.get("query")) for s in samples]
    return (mean_interval([float(s["base_reward"]) for s in samples], prompts),
            mean_interval([float(s["trained_reward"]) for s in samples], prompts))


def comparisons(classify: list[dict], correct: dict[str, dict[str, bool]], descriptions: list[dict],
                heldout: list[dict]) -> list[Comparison]:
    """Every paired comparison the runs allow: held-out reward, shares, accuracy."""
    accuracy = [accuracy_comparison(what, a, b, correct) for what, a, b in accuracy_pairs(classify)]
    return heldout_comparisons(heldout) + share_comparisons(descriptions) + [c for c in accuracy if c is not None]


# --- the headline and the per-run rows ---------------------------------------------------------


@dataclass
class Change:
    """A headline number base → aligned: both values with their intervals and the paired difference."""

    base: Interval | None
    aligned: Interval | None
    difference: Comparison | None = None

    def text(self, digits: int = 3, arrow: str = "->") -> str:
        """``base 0.875 [0.78, 0.94] -> aligned 0.912 [...]; difference +0.037 [...]: within the noise ...``."""
        def show(value: Interval | None) -> str:
            return "?" if value is None else value.format(digits)

        line = f"base {show(self.base)} {arrow} aligned {show(self.aligned)}"
        if self.difference is not None:
            line += f"; difference {self.difference.difference.format(digits, sign=True)}: {self.difference.reading()}"
        return line


def row_interval(row: dict | None, key: str) -> Interval | None:
    """``row[key]`` with the interval of its ``_low``/``_high`` columns (None without the value)."""
    if row is None or row.get(key) is None:
        return None
    return Interval(float(row[key]), row.get(f"{key}_low"), row.get(f"{key}_high"), "")


def find(found: list[Comparison], **match) -> Comparison | None:
    return next((c for c in found if all(getattr(c, k) == v for k, v in match.items())), None)


def share_columns(shares: list[dict], run: str, variant: str | None) -> dict:
    """An inspection row's interval columns (``informative_share_low``, ``share_visual_high``, ...)."""
    out = {}
    for row in shares:
        if row["run"] == run and (variant is None or row["variant"] == variant):
            name = "informative_share" if row["measure"] == "informative" else f"share_{row['measure']}"
            if row["measure"] in CATEGORY_SHARES:
                out |= {f"{name}_low": row["share_low"], f"{name}_high": row["share_high"]}
    return out


def heldout_columns(heldout: list[dict], found: list[Comparison], run: str) -> dict:
    """A training row's interval columns of the held-out rewards and their difference."""
    base, trained = heldout_means(heldout, run)
    if base is None:
        return {}
    difference = find(found, kind="held-out reward", before=f"{run} (base)")
    out = {"heldout_base_reward_low": base.low, "heldout_base_reward_high": base.high,
           "heldout_trained_reward_low": trained.low, "heldout_trained_reward_high": trained.high}
    if difference is not None:
        out |= {f"heldout_difference{k[len('difference'):]}": v
                for k, v in difference.difference.columns("difference").items()}
    return out
