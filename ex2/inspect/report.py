"""Reports on categorized descriptions: ``summary.json``, ``summary.md`` and stacked-bar PNGs.

``summary.json`` has fixed keys, so ``ex2 report`` can aggregate many runs::

    schema              "ex2.inspect.stage.summary/v1"
    source              the categories JSONL it was built from
    judge               {"backend", "model", "prompt_version"}
    n_descriptions      records judged (duplicates counted)
    n_unparsed          records whose judge answer was unusable
    informative_share   share judged informative (unparsed records excluded from the denominator)
    category_shares     {"spurious", "visual", "non_visual", "unparsed"} -> share of all records
    attribute_shares    {"visual": {attribute: share}, "non_visual": {attribute: share}}, within the category
    groups              {"concept"|"dataset"|"vlm"|"model"|"adapter"|"aligned":
                          {value: {"n", "category_shares", "attribute_shares"}}}
                        (``aligned`` is "base" for records without an adapter, else "aligned")
    top_spurious        [{"phrasing", "count"}]: spurious texts with the concept masked as {concept}
    share_intervals     {"informative"|category|attribute: {"share", "low", "high"}}: each share (an
                        attribute's among all records) with its 95 % percentile bootstrap interval,
                        concepts resampled (the descriptions of one concept are not independent)
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from pathlib import Path

from ex2.core.intervals import mean_interval
from ex2.core.io import atomic_write_text, write_json
from ex2.core.plotting import pyplot, save_png
from ex2.core.taxonomy import ALL_CATEGORIES, ATTRIBUTES, NON_VISUAL_ATTRIBUTES, UNPARSED, VISUAL_ATTRIBUTES
from ex2.core.text import mask_concept

SCHEMA = "ex2.inspect.stage.summary/v1"
GROUP_FIELDS = ("concept", "dataset", "vlm", "model", "adapter", "aligned")
COLORS = {"spurious": "#d62728", "visual": "#1f77b4", "non_visual": "#2ca02c", "unparsed": "#7f7f7f"}


def group_value(record: dict, field: str) -> str | None:
    """The record's value for a report grouping (``None`` when it has none)."""
    if field == "aligned":
        return "aligned" if record.get("adapter") else "base"
    if field == "adapter":
        return str(record.get("adapter") or "base")
    value = record.get(field)
    return None if value in (None, "") else str(value)


def shares(records: list[dict]) -> dict:
    """Category shares of all records and attribute shares within visual and non-visual."""
    n = len(records)
    categories = Counter(r["category"] for r in records)
    out = {"n": n, "category_shares": {c: categories[c] / n if n else 0.0 for c in ALL_CATEGORIES}}
    out["attribute_shares"] = {}
    for category in ("visual", "non_visual"):
        attributes = Counter(r["attribute"] for r in records if r["category"] == category)
        total = sum(attributes.values())
        out["attribute_shares"][category] = {a: attributes[a] / total if total else 0.0 for a in ATTRIBUTES[category]}
    return out


def share_indicators(records: list[dict]) -> dict[str, tuple[list[float], list[str]]]:
    """Per share: each record's 0/1 and its concept. Informative leaves unparsed records out (as
    ``informative_share``); categories and attributes count among all records."""
    judged = [r for r in records if r.get("category") not in (None, UNPARSED)]
    out = {"informative": ([float(r["category"] != "spurious") for r in judged], [str(r["concept"]) for r in judged])}
    concepts = [str(r["concept"]) for r in records]
    for category in ("spurious", "visual", "non_visual"):
        out[category] = ([float(r.get("category") == category) for r in records], concepts)
    for category, names in (("visual", VISUAL_ATTRIBUTES), ("non_visual", NON_VISUAL_ATTRIBUTES)):
        for name in names:
            out[name] = ([float(r.get("category") == category and r.get("attribute") == name) for r in records],
                         concepts)
    return out


def share_intervals(records: list[dict]) -> dict[str, dict]:
    """Each share of :func:`share_indicators` with its 95 % interval, concepts resampled."""
    found = {measure: mean_interval(values, concepts) for measure, (values, concepts) in
             share_indicators(records).items() if values}
    return {measure: {"share": i.estimate, "low": i.low, "high": i.high} for measure, i in found.items()}


def spurious_phrasing(record: dict) -> str:
    """A spurious text with the concept masked, lower-cased, so phrasings can be counted across concepts."""
    text = mask_concept(record["description"].lower(), str(record["concept"]), "{concept}")
    return " ".join(text.split()).strip(" .!")


def summarize(records: list[dict], source: str = "") -> dict:
    """The fixed-key summary described in the module docstring."""
    first = records[0] if records else {}
    judged = [r for r in records if r["category"] != UNPARSED]
    summary = {
        "schema": SCHEMA,
        "source": source,
        "judge": {k: first.get(f"judge_{k}") for k in ("backend", "model", "prompt_version")},
        "n_descriptions": len(records),
        "n_unparsed": len(records) - len(judged),
        "informative_share": sum(bool(r["informative"]) for r in judged) / len(judged) if judged else 0.0,
    }
    overall = shares(records)
    summary["category_shares"] = overall["category_shares"]
    summary["attribute_shares"] = overall["attribute_shares"]
    summary["groups"] = {}
    for field in GROUP_FIELDS:
        buckets: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            value = group_value(record, field)
            if value is not None:
                buckets[value].append(record)
        summary["groups"][field] = {value: shares(group) for value, group in sorted(buckets.items())}
    phrasings = Counter(spurious_phrasing(r) for r in records if r["category"] == "spurious")
    summary["top_spurious"] = [{"phrasing": p, "count": c} for p, c in phrasings.most_common(20)]
    summary["share_intervals"] = share_intervals(records)
    return summary


def plot_stacked(groups: dict, title: str, path: Path) -> Path:
    """Stacked bars of category shares, one bar per group value (matplotlib Agg)."""
    plt = pyplot()
    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.5))
    bottom = [0.0] * len(names)
    for category in ALL_CATEGORIES:
        values = [groups[n]["category_shares"][category] for n in names]
        if any(values):
            ax.bar(names, values, bottom=bottom, label=category, color=COLORS[category])
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("share of descriptions")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def md_text(value: object) -> str:
    """Text from descriptions or judges, safe in a Markdown table cell: HTML escaped (a ``<script>``
    shows as text, as in report.html), table pipes escaped, on one line."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return text.replace("|", "\\|").replace("`", "&#96;")


def _table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(md_text(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _share_rows(groups: dict) -> list[list]:
    return [[name, g["n"]] + [f"{g['category_shares'][c]:.0%}" for c in ALL_CATEGORIES] for name, g in groups.items()]


def markdown(summary: dict, records: list[dict], plots: list[Path]) -> str:
    """The Markdown summary: shares overall and per group, top spurious phrasings, examples, plots."""
    judge = summary["judge"]
    parts = [
        "# Description categories",
        f"Judge: {' / '.join(md_text(judge[k]) for k in ('backend', 'model', 'prompt_version'))}; "
        f"{summary['n_descriptions']} descriptions, {summary['n_unparsed']} unparsed, "
        f"{summary['informative_share']:.0%} informative. Source: `{summary['source']}`.",
        _table(_share_rows({"all": {"n": summary["n_descriptions"], **summary}}), ["", "n", *ALL_CATEGORIES]),
    ]
    for field, groups in summary["groups"].items():
        if len(groups) > 1 or field == "concept":
            parts += [f"## By {field}", _table(_share_rows(groups), [field, "n", *ALL_CATEGORIES])]
    for category, attrs in summary["attribute_shares"].items():
        parts += [f"## {category} attributes", _table([[a, f"{s:.0%}"] for a, s in attrs.items()], ["attribute", "share"])]
    parts += ["## Most frequent spurious phrasings",
              _table([[t["phrasing"], t["count"]] for t in summary["top_spurious"][:10]], ["phrasing", "count"])]
    examples = [r for c in ALL_CATEGORIES for r in [x for x in records if x["category"] == c][:3]]
    parts += ["## Examples", _table([[r["concept"], r["description"][:100], r["category"], r["attribute"],
                                      r.get("explanation", "")[:80]] for r in examples],
                                    ["concept", "description", "category", "attribute", "explanation"])]
    parts += ["## Plots"] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n\n".join(parts) + "\n"


def write_report(records: list[dict], report_dir: str | Path, source: str = "") -> Path:
    """Write ``summary.json``, ``summary.md`` and the PNG plots into ``report_dir``; returns it."""
    report_dir = Path(report_dir)
    summary = summarize(records, source)
    plots = []
    for field in ("concept", "adapter", "model", "vlm", "dataset"):
        groups = summary["groups"][field]
        if groups and (field == "concept" or len(groups) > 1):
            plots.append(plot_stacked(groups, f"categories by {field}", report_dir / f"categories_by_{field}.png"))
    write_json(report_dir / "summary.json", summary)
    atomic_write_text(report_dir / "summary.md", markdown(summary, records, plots))
    return report_dir
