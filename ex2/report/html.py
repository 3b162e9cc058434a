"""The plots and the HTML page of ``ex2 report`` (see :mod:`ex2.report.runs` for what is collected).

Error bars and bracketed ranges are 95 % intervals (:mod:`ex2.report.compare` says which and how).
Plots are embedded as base64 PNGs; the page's only script is inline (sorting by a column header,
filtering a table with its box; ``#filter=word`` in the address fills the descriptions' box), so the
page opens offline and fetches nothing.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ex2.core.plotting import pyplot
from ex2.core.taxonomy import INFORMATIVE_ATTRIBUTES as ATTRIBUTES
from ex2.core.taxonomy import VISUAL_ATTRIBUTES
from ex2.report.compare import Comparison
from ex2.report.runs import CATEGORY_COLORS, Runs
from ex2.report.stats import smooth
from ex2.report.tables import attribute_rows, cell_text, headline_text

TEXT_COLUMNS = ("base_description", "aligned_description", "text", "base", "trained")  # kept readable
PAGE_ROWS = 5000  # description rows on the page (the CSV has them all)


def png_base64(fig) -> str:
    """A figure as a base64 PNG (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- plots -------------------------------------------------------------------------------------


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
        values: dict[str, list[dict]] = {}
        for r in rows:
            if f"{r['dataset']} · {r['vlm']}" == name:
                values.setdefault(bar_label(r), []).append(r)
        xs = [i + (s - (len(series) - 1) / 2) * width for i, label in enumerate(labels) if label in values]
        ys = [sum(r["acc1"] for r in values[label]) / len(values[label]) for label in labels if label in values]
        ax.bar(xs, ys, width, label=name, yerr=error_bars(
            [values[label] for label in labels if label in values], ys, "acc1"), capsize=3, ecolor="#333")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-1 accuracy")
    ax.legend(fontsize=8)
    ax.set_title("accuracy by method and description category")
    return png_base64(fig)


def error_bars(groups: list[list[dict]], heights: list[float], key: str) -> list[list[float]]:
    """``[[below], [above]]`` for matplotlib's ``yerr``: each bar's 95 % interval (``key_low``,
    ``key_high``) when the bar is one row that has it, else no bar (zero)."""
    below, above = [], []
    for group, height in zip(groups, heights, strict=True):
        row = group[0] if len(group) == 1 else {}
        low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
        below.append(max(0.0, height - low) if low is not None else 0.0)
        above.append(max(0.0, high - height) if high is not None else 0.0)
    return [below, above]


def series_label(row: dict, rows: list[dict]) -> str:
    """An attribute row's name in a plot: VLM and variant, with the run when that alone is ambiguous."""
    label = f"{row['vlm'] or '?'} · {row['variant']}"
    twins = sum(f"{r['vlm'] or '?'} · {r['variant']}" == label for r in rows)
    return f"{row['run']}: {label}" if twins > 1 else label


def plot_shares(rows: list[dict]) -> str:
    """Stacked horizontal bars of category shares, one bar per inspection run (and variant)."""
    plt = pyplot()
    labels = [series_label(r, rows) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 1 + 0.45 * len(rows)))
    left = [0.0] * len(rows)
    for category, colour in CATEGORY_COLORS.items():
        values = [float(r.get(f"share_{category}") or 0.0) for r in rows]
        ax.barh(range(len(rows)), values, left=left, color=colour, label=category)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of descriptions")
    ax.legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return png_base64(fig)


def plot_attributes(rows: list[dict], shares: list[dict] | None = None) -> str:
    """EX2's central figure: each attribute's share of the descriptions, one panel per VLM, a bar per
    variant (base, aligned) side by side, with 95 % error bars (concepts resampled) from ``shares``."""
    intervals = {(r["run"], r["variant"], r["measure"]): r for r in shares or []}
    plt = pyplot()
    vlms = list(dict.fromkeys(r["vlm"] or "?" for r in rows))
    fig, axes = plt.subplots(1, len(vlms), figsize=(6.5 * len(vlms), 3.8), sharey=True, squeeze=False)
    top = max([float(r.get(a) or 0.0) for r in rows for a in ATTRIBUTES]
              + [float(s["share_high"] or 0.0) for s in shares or [] if s["measure"] in ATTRIBUTES] + [0.05])
    for ax, vlm in zip(axes[0], vlms, strict=True):
        mine = [r for r in rows if (r["vlm"] or "?") == vlm]
        width = 0.8 / len(mine)
        for s, row in enumerate(mine):
            xs = [i + (s - (len(mine) - 1) / 2) * width for i in range(len(ATTRIBUTES))]
            colour = "#ff7f0e" if row["variant"] == "aligned" else "#1f77b4" if row["variant"] == "base" else None
            heights = [float(row.get(a) or 0.0) for a in ATTRIBUTES]
            found = [[intervals.get((row["run"], row["variant"], a), {})] for a in ATTRIBUTES]
            ax.bar(xs, heights, width, color=colour, label=series_label(row, mine),
                   yerr=error_bars(found, heights, "share"), capsize=2, ecolor="#333")
        ax.axvline(len(VISUAL_ATTRIBUTES) - 0.5, color="#999", linestyle=":")
        ax.text(len(VISUAL_ATTRIBUTES) / 2 - 0.5, top * 1.08, "visual", ha="center", fontsize=9, color="#555")
        ax.text(len(VISUAL_ATTRIBUTES) + (len(ATTRIBUTES) - len(VISUAL_ATTRIBUTES)) / 2 - 0.5, top * 1.08,
                "non-visual", ha="center", fontsize=9, color="#555")
        ax.set_xticks(range(len(ATTRIBUTES)), ATTRIBUTES, rotation=40, ha="right", fontsize=8)
        ax.set_ylim(0, top * 1.2)
        ax.set_title(f"VLM: {vlm}", fontsize=10)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("share of all descriptions")
    return png_base64(fig)


def plot_differences(found: list[Comparison], title: str) -> str:
    """Each paired difference as a point with its 95 % interval; findings (the interval excludes 0)
    filled, differences within the noise hollow and grey."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * len(found)))
    for y, item in enumerate(found):
        low, high = item.difference.low, item.difference.high
        colour = ("#d62728" if item.difference.estimate < 0 else "#1f77b4") if item.finding else "#888"
        if low is not None:
            ax.plot([low, high], [y, y], color=colour, linewidth=2)
        ax.plot([item.difference.estimate], [y], "o", color=colour, mfc=colour if item.finding else "white")
    ax.axvline(0, color="#333", linewidth=1)
    ax.set_yticks(range(len(found)), [f"{c.measure}: {c.what}" for c in found], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("difference after - before, with its 95 % interval (filled: excludes 0)")
    ax.set_title(title, fontsize=10)
    return png_base64(fig)


def _points(curve: dict, key: str) -> tuple[list[float], list[float]]:
    pairs = [(s, v) for s, v in zip(curve["step"], curve[key], strict=True) if v is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot_training(runs: Runs) -> str:
    """Reward per step (raw and smoothed) with the held-out base → trained reward at the end; KL and
    completion length per step."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    heldout = {r["run"]: r for r in runs.train}
    for index, (run, curve) in enumerate(runs.curves.items()):
        colour = f"C{index}"
        steps, rewards = _points(curve, "reward")
        axes[0].plot(steps, rewards, color=colour, alpha=0.35, linewidth=1)
        axes[0].plot(steps, smooth(rewards), color=colour, linewidth=2, label=f"{run} (smoothed)")
        row = heldout.get(run, {})
        if row.get("heldout_base_reward") is not None and steps:
            x = steps[-1] + max(1.0, 0.03 * steps[-1])
            for key, marker, label in (("heldout_base_reward", "o", "held-out base"),
                                       ("heldout_trained_reward", "*", "held-out trained")):
                axes[0].errorbar([x], [row[key]], yerr=error_bars([[row]], [row[key]], key), fmt=marker,
                                 color=colour, markersize=9 if marker == "*" else 6, capsize=3,
                                 mfc="none" if marker == "o" else colour, label=label, zorder=3)
        for ax, key in ((axes[1], "kl"), (axes[2], "completion_length")):
            xs, ys = _points(curve, key)
            if ys:
                ax.plot(xs, ys, color=colour, marker="o" if len(xs) < 30 else None, markersize=3, label=run)
    for ax, title in zip(axes, ("mean reward", "KL to the base model", "completion length (tokens)"), strict=True):
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged" + (" (beta = 0)" if title.startswith("KL") else ""),
                    ha="center", va="center", transform=ax.transAxes, color="#777")
    return png_base64(fig)


# --- HTML --------------------------------------------------------------------------------------


def html_table(rows: list[dict], caption: str, table_id: str | None = None, csv_name: str | None = None,
               filterable: bool = False) -> str:
    """A sortable table (click a header); ``filterable`` adds a box hiding rows without its text."""
    columns = [k for k in dict.fromkeys(key for row in rows for key in row) if k != "kind"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)

    def td(column: str, value) -> str:
        css = f' class="c-{value}"' if column.endswith("category") and value in CATEGORY_COLORS else ""
        if column in TEXT_COLUMNS:
            css = ' class="text"'
        if column == "finding":
            css = ' class="finding"' if value == "yes" else ' class="noise"'
        return f"<td{css}>{html.escape(cell_text(value))}</td>"

    body = "".join("<tr>" + "".join(td(c, row.get(c)) for c in columns) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    link = f' <a class="csv" href="{html.escape(csv_name)}">{html.escape(csv_name)}</a>' if csv_name else ""
    box = ""
    if filterable and table_id:
        box = (f'<p><input type="search" class="filter" id="{table_id}-filter" data-table="{table_id}" '
               f'placeholder="filter rows: concept, word, category, attribute…" size="50"> '
               f'<span id="{table_id}-count">{len(rows)} of {len(rows)} rows</span></p>')
    return (f'{box}<div class="scroll"><table class="sortable"{ident}><caption>{html.escape(caption)}{link}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def html_image(data: str, alt: str) -> str:
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1600px}table{border-collapse:collapse;
margin:.5em 0 1em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0;cursor:pointer;position:sticky;top:0}th:hover{background:#e0e0e0}caption{font-weight:bold;
text-align:left;padding:4px 0}td{max-width:34em}img{max-width:100%}figure{margin:1em 0}code{background:#f5f5f5}
.scroll{overflow:auto;max-height:36em}.c-spurious{background:#fbe3e3}.c-visual{background:#e1ecf7}
.c-non_visual{background:#e3f3e3}a.csv{font-weight:normal;font-size:12px;margin-left:1em}
nav a{margin-right:1em}td.text{min-width:22em}.headline li{font-size:15px;margin:.2em 0}
td.finding{background:#fff3c4;font-weight:bold}td.noise{color:#777}"""

SCRIPT = """<script>
for (const table of document.querySelectorAll('table.sortable')) {
  table.querySelectorAll('th').forEach((th, column) => th.addEventListener('click', () => {
    const body = table.tBodies[0], rows = [...body.rows], up = th.dataset.dir !== 'up';
    th.dataset.dir = up ? 'up' : 'down';
    const key = r => r.cells[column].textContent, num = s => s === '' ? NaN : Number(s);
    rows.sort((a, b) => {
      const x = key(a), y = key(b), nx = num(x), ny = num(y);
      const order = !isNaN(nx) && !isNaN(ny) ? nx - ny : isNaN(nx) !== isNaN(ny) ? (isNaN(nx) ? 1 : -1)
        : x.localeCompare(y);
      return up ? order : -order;
    });
    rows.forEach(r => body.appendChild(r));
  }));
}
for (const box of document.querySelectorAll('input.filter')) {
  const table = document.getElementById(box.dataset.table);
  const count = document.getElementById(box.dataset.table + '-count');
  const apply = () => {
    const words = box.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let shown = 0;
    for (const row of table.tBodies[0].rows) {
      const text = row.textContent.toLowerCase();
      row.hidden = !words.every(w => text.includes(w));
      shown += !row.hidden;
    }
    count.textContent = shown + ' of ' + table.tBodies[0].rows.length + ' rows';
  };
  box.addEventListener('input', apply);
  const wanted = location.hash.match(/filter=([^&]*)/);
  if (wanted && box.id === 'descriptions-filter') { box.value = decodeURIComponent(wanted[1]); apply(); }
}
</script>"""


def headline_html(numbers: dict) -> str:
    """The headline numbers (:class:`ex2.report.compare.Change`), each with its intervals and verdict."""
    if not numbers:
        return ""
    items = "".join(f"<li>{html.escape(headline_text(name, change, '→'))}</li>" for name, change in numbers.items())
    return (f'<h2 id="s-headline">Base → aligned</h2><ul class="headline">{items}</ul>'
            "<p>Brackets hold 95 % intervals; a difference is a finding when its interval excludes 0.</p>")


def _differences_section(runs: Runs, extra: dict[str, list[dict]]) -> list[str]:
    """The paired comparisons: a sentence on how many are findings, the forest plots, the table."""
    if not runs.comparisons:
        return []
    findings = [c for c in runs.comparisons if c.finding]
    noise = [c for c in runs.comparisons if not c.finding]
    shown = ", ".join(f"{c.measure} ({c.what})" for c in noise[:6]) + (f" and {len(noise) - 6} more"
                                                                        if len(noise) > 6 else "")
    words = (f"{len(findings)} of {len(runs.comparisons)} differences are findings (their 95 % interval excludes 0)"
             + (f"; {len(noise)} are within the noise: {shown}" if noise else "") + ".")
    parts = ['<h2 id="s-differences">Differences and their noise</h2>',
             f"<p>Each pair of runs is compared on what both saw: the same images (accuracy; exact McNemar "
             f"p-value too), the same concepts (shares, concepts resampled) or the same prompts (held-out "
             f"reward). {html.escape(words)}</p>"]
    fractions = [c for c in runs.comparisons if c.kind != "held-out reward"]
    rewards = [c for c in runs.comparisons if c.kind == "held-out reward"]
    if fractions:
        parts.append(html_image(plot_differences(fractions, "accuracy and shares: after - before"),
                                "paired differences of accuracy and shares with 95 % intervals"))
    if rewards:
        parts.append(html_image(plot_differences(rewards, "held-out reward: trained - base"),
                                "held-out reward difference with its 95 % interval"))
    parts.append(html_table(extra["differences"], "paired differences (finding: the interval excludes 0)",
                            "differences", "differences.csv", True))
    return parts


def _descriptions_section(runs: Runs, extra: dict[str, list[dict]]) -> list[str]:
    names = ("descriptions", "top_rewarded", "bottom_rewarded", "heldout_pairs")
    parts = ['<h2 id="s-descriptions">Descriptions, base vs aligned</h2>'] if any(n in extra for n in names) else []
    if "descriptions" in extra:
        rows = extra["descriptions"]
        cut = f" The first {PAGE_ROWS} of {len(rows)} rows; all are in descriptions.csv." if len(rows) > PAGE_ROWS else ""
        parts += ["<p>Same concept, template and sample side by side; rewards where training or held-out "
                  f"evaluation scored the same text. Click a header to sort.{cut}</p>",
                  html_table(rows[:PAGE_ROWS], "descriptions", "descriptions", "descriptions.csv", True)]
    for name, caption in (("top_rewarded", "highest-rewarded texts"), ("bottom_rewarded", "lowest-rewarded texts"),
                          ("heldout_pairs", "held-out templates: base vs trained sample of the same prompt")):
        if name in extra:
            parts.append(html_table(extra[name], caption, name, f"{name}.csv", name == "heldout_pairs"))
    return parts


def render_html(runs: Runs, extra: dict[str, list[dict]], title: str, numbers: dict | None = None) -> str:
    """The page: headline numbers, descriptions, attributes, classification, training, reward hacking."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    sections = [("differences", bool(runs.comparisons)),
                ("descriptions", any(n in extra for n in ("descriptions", "top_rewarded", "heldout_pairs"))),
                ("attributes", bool(runs.inspect)), ("classification", bool(runs.classify)),
                ("training", bool(runs.train)), ("hacking", "hacking" in extra)]
    parts.append("<nav>" + "".join(f'<a href="#s-{s}">{s}</a>' for s, present in sections if present) + "</nav>")
    parts.append(headline_html(numbers or {}))
    parts += _differences_section(runs, extra)
    parts += _descriptions_section(runs, extra)
    if runs.inspect:
        rows = attribute_rows(runs)
        parts += ['<h2 id="s-attributes">Attributes and categories</h2>',
                  html_image(plot_attributes(rows, runs.shares), "attribute shares per VLM, base vs aligned "
                             "(error bars: 95 % intervals, concepts resampled)"),
                  html_table(extra.get("attributes", rows), "category and attribute shares per inspection run",
                             "attributes", "attributes.csv"),
                  html_image(plot_shares(rows), "category shares per inspection run"),
                  html_table(runs.inspect, "inspection runs", "inspect", "summary.csv"),
                  html_table(extra["shares"], "each share with its 95 % interval (concepts resampled)", "shares",
                             "shares.csv", True) if "shares" in extra else ""]
    if runs.classify:
        parts += ['<h2 id="s-classification">Classification</h2>',
                  html_table(runs.classify, "zero-shot accuracy per run", "classify", "summary.csv"),
                  html_image(plot_accuracy(runs.classify), "accuracy by method and category (error bars: "
                             "95 % Clopper-Pearson intervals)")]
    if runs.train:
        parts += ['<h2 id="s-training">Training</h2>', html_table(runs.train, "training runs", "train", "summary.csv"),
                  html_image(plot_training(runs), "reward, KL and completion length per step")]
    if "hacking" in extra:
        parts += ['<h2 id="s-hacking">Signs of reward hacking</h2>',
                  "<p>Headers (a text ending in a colon), empty or one-word-repeated texts, texts that only "
                  "name the concept, distinct-1/2 (diversity) and mean length in words, base vs aligned.</p>",
                  html_table(extra["hacking"], "reward-hacking signs", "hacking", "hacking.csv")]
    if runs.skipped:
        items = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in runs.skipped)
        parts += [f"<h2>Skipped files</h2><ul>{items}</ul>"]
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n{SCRIPT}\n</body></html>\n")
