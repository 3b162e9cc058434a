"""How often the embedded judge (:mod:`ex2.inspect.categorize`) names the right category and attribute.

    python analysis/judge_attribute_accuracy.py          # CPU, a minute or two with MiniLM cached

Leave-one-concept-out on ``ex2/inspect_data/labelled_descriptions.jsonl``: each description is judged
with the exemplars of its own concept set aside. Rows by the records' ``split``: ``seed`` (the
concepts the cue words were first written from), ``tune`` and ``tune2`` (hard cases looked at while
revising the judge), ``check`` and ``check2`` (hard cases on other concepts, never looked at while
revising it: the honest estimate on unseen concepts; ``unseen`` is both together). Then per-attribute
precision and recall over all records and over the unseen ones.
"""

from __future__ import annotations

from ex2.core.io import read_jsonl
from ex2.inspect.categorize import (
    SPLITS,
    UNSEEN_SPLITS,
    EmbeddedJudge,
    labelled_path,
    loco_judgements,
    score_judgements,
)


def split_of(record: dict) -> str:
    return record.get("split", "seed")


def measure(judge: EmbeddedJudge | None = None) -> dict[str, dict]:
    """Scores per split and over everything, every record judged leave-one-concept-out."""
    records = read_jsonl(labelled_path(), required=("concept", "description", "category", "attribute"))
    judge = judge or EmbeddedJudge(exemplars=records)
    found = loco_judgements(records, judge)
    groups = {name: [i for i, r in enumerate(records) if split_of(r) == name] for name in SPLITS}
    groups["unseen"] = [i for i, r in enumerate(records) if split_of(r) in UNSEEN_SPLITS]
    groups["all"] = list(range(len(records)))
    return {name: score_judgements([records[i] for i in rows], [found[i] for i in rows])
            for name, rows in groups.items() if rows}


def _pct(value: float | None) -> str:
    return "   -" if value is None else f"{100 * value:4.0f}"


def _cell(a: dict | None) -> str:
    """One group's n, times said, precision and recall of an attribute."""
    if a is None:
        return f" | {'':>11} {'':>5} {_pct(None):>6} {_pct(None):>6}"
    return f" | {a['n']:>11} {a['predicted']:>5} {_pct(a['precision']):>6} {_pct(a['recall']):>6}"


def table(results: dict[str, dict]) -> str:
    lines = [f"{'split':<6} {'n':>4} {'concepts':>8} {'category %':>10} {'attribute % | category right':>29}"]
    for name, r in results.items():
        lines.append(f"{name:<6} {r['n']:>4} {r['concepts']:>8} {100 * r['category_accuracy']:>10.1f} "
                     f"{100 * r['attribute_accuracy_given_category']:>29.1f}")
    groups = [name for name in ("all", "unseen") if name in results]
    lines += ["", f"{'attribute':<10}" + "".join(f" | {name + ': n':>11} {'said':>5} {'prec %':>6} {'rec %':>6}"
                                                 for name in groups)]
    for attribute in results["all"]["per_attribute"]:
        lines.append(f"{attribute:<10}" + "".join(_cell(results[g]["per_attribute"].get(attribute)) for g in groups))
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(measure()))
