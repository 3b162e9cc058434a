"""``ex2 report`` on hand-written run outputs; the page is opened in headless Chromium."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ex2.cli import main
from ex2.report.html import bar_label
from ex2.report.runs import collect
from ex2.report.tables import headline, side_by_side

CHROMIUM = "/usr/bin/chromium"


def _metrics(folder: Path, method: str, acc1: float, categories=None, vlm="conse") -> None:
    folder.mkdir(parents=True)
    descriptions = None if method == "clip" else {"path": "d.jsonl", "model": "smollm2", "adapter": "adapter"}
    (folder / "metrics.json").write_text(json.dumps({
        "dataset": "samples", "split": "test", "vlm": vlm, "method": method, "descriptions": descriptions,
        "categories": categories, "acc1": acc1, "acc5": 1.0, "mean_per_class_recall": acc1, "n_images": 80,
        "n_classes": 8, "n_skipped_images": 0,
    }))
    right = round(acc1 * 80)  # the same 80 images in every run, the first ones right
    (folder / "predictions.csv").write_text("path,label,prediction,correct,top5\n" + "".join(
        f"img{i}.png,c{i % 8},c{i % 8 if i < right else (i + 1) % 8},{int(i < right)},c{i % 8}\n" for i in range(80)))


DESCRIPTIONS = [  # (concept, template, adapter, description, category, attribute)
    ("cardinal", "t1", None, "A cardinal is a songbird.", "non_visual", "behavior"),
    ("cardinal", "t1", "runs/train/adapter", "The cardinal has bright red plumage and a crest.", "visual", "color"),
    ("cardinal", "t2", None, "Here's a description of a cardinal:", "spurious", "none"),
    ("cardinal", "t2", "runs/train/adapter", "A red bird with a black mask.", "visual", "color"),
    ("tabby", "t1", None, "Tabby cat photo, free download", "spurious", "none"),
    ("tabby", "t1", "runs/train/adapter", "A cat with a striped coat and an M on the forehead.", "visual", "pattern"),
]


def _inspection(folder: Path) -> None:
    folder.mkdir(parents=True)
    shares = {"spurious": 0.2, "visual": 0.5, "non_visual": 0.3, "unparsed": 0.0}
    within = {"visual": {"color": 0.6, "pattern": 0.4}, "non_visual": {"behavior": 1.0}}
    group = {"n": 10, "category_shares": shares, "attribute_shares": within}
    records = [{"concept": c, "template": t, "sample": 0, "adapter": a, "model": "smollm2", "description": d,
                "category": cat, "attribute": attr, "informative": cat != "spurious", "vlm": "conse"}
               for c, t, a, d, cat, attr in DESCRIPTIONS]
    (folder / "categories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "summary.json").write_text(json.dumps({
        "schema": "ex2.inspect.stage.summary/v1", "source": "elsewhere/categories.jsonl",  # found beside the summary
        "judge": {"backend": "rules", "model": None},
        "n_descriptions": 20, "n_unparsed": 0, "informative_share": 0.8, "category_shares": shares,
        "attribute_shares": within,
        "groups": {"vlm": {"conse": group}, "adapter": {"base": group, "runs/train/adapter": group},
                   "aligned": {"aligned": group, "base": group}},
    }))


def _training(folder: Path, torn: bool = False) -> None:
    folder.mkdir(parents=True)
    samples = [{"concept": "cardinal", "text": "A red bird with a black mask.", "reward": 31.5}]
    lines = [json.dumps({"step": s, "reward": 0.1 * s, "kl": 0.01 * s, "completion_length": 20 - s,
                         "samples": samples}) for s in range(1, 6)]
    (folder / "log.jsonl").write_text("\n".join(lines) + ("\n{\"step\": 6, \"rew" if torn else "\n"))
    (folder / "config.yaml").write_text("vlm: conse\nllm: smollm2\nreward: ex2\n")
    (folder / "eval.json").write_text(json.dumps({
        "prompts": 2, "samples_per_prompt": 1, "seed": 0, "base_mean_reward": 25.0, "trained_mean_reward": 30.0,
        "samples": [{"concept": "cardinal", "query": "q1", "base": "Here's a cardinal:", "base_reward": 20.0,
                     "trained": "Red crest, black face.", "trained_reward": 33.0},
                    {"concept": "tabby", "query": "q2", "base": "tabby", "base_reward": 30.0,
                     "trained": "Striped grey fur.", "trained_reward": 27.0}],
    }))


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    _metrics(root / "clip", "clip", 0.9)
    _metrics(root / "ex2" / "visual", "ex2", 0.8, ["visual"])
    _metrics(root / "ex2" / "spurious", "ex2", 0.4, ["spurious"])
    _metrics(root / "clip-b32", "clip", 0.7, vlm="ViT-B-32:openai")
    _inspection(root / "inspect")
    _training(root / "train", torn=True)
    (root / "train" / "metrics.json").write_text("{not json")  # listed as skipped, not fatal
    (root / "generate").mkdir()
    (root / "generate" / "summary.json").write_text(json.dumps({"unrelated": True}))
    return root


@pytest.mark.filterwarnings("ignore:ex2 report. skipping")
def test_collect_finds_every_kind_of_run_recursively(runs):
    found = collect([runs])
    assert sorted(r["run"] for r in found.classify) == ["runs/clip", "runs/clip-b32", "runs/ex2/spurious", "runs/ex2/visual"]
    assert [r["run"] for r in found.inspect] == ["runs/inspect"]
    assert found.inspect[0]["vlm"] == "conse"  # named by the records when the run's config has none
    assert found.train[0]["steps"] == 5 and found.train[0]["reward_last"] == pytest.approx(0.5)
    assert found.train[0]["llm"] == "smollm2"
    assert len(found.skipped) == 1 and "train/metrics.json" in found.skipped[0]


def test_report_writes_csv_and_a_self_contained_page(runs, tmp_path):
    out = tmp_path / "report"
    with pytest.warns(UserWarning, match="skipping"):
        assert main(["report", str(runs / "clip"), str(runs / "ex2"), str(runs / "inspect"), str(runs / "train"),
                     "--output", str(out)]) == 0
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["kind"] for r in rows] == ["classify"] * 3 + ["inspect", "train"]
    assert {r["categories"] for r in rows if r["kind"] == "classify"} == {"all", "visual", "spurious"}
    page = (out / "report.html").read_text()
    assert page.count("<table") == 11 and page.count('src="data:image/png;base64,') == 6
    assert not re.search(r'src="(?!data:)|<link|<script[^>]', page)  # nothing fetched from elsewhere
    for target in re.findall(r'href="([^"]*)"', page):  # in-page anchors and the CSVs beside the page
        assert (target.startswith("#") and f'id="{target[1:]}"' in page) or (out / target).is_file(), target
    assert (out / "config.yaml").is_file()

    def table(name: str) -> list[dict]:
        with (out / f"{name}.csv").open() as handle:
            return list(csv.DictReader(handle))

    pairs = table("descriptions")
    assert len(pairs) == 3 and {p["concept"] for p in pairs} == {"cardinal", "tabby"}
    mask = next(p for p in pairs if p["aligned_description"] == "A red bird with a black mask.")
    assert mask["aligned_reward"] == "31.5000" and mask["base_category"] == "spurious"  # reward from the log
    attributes = table("attributes")
    assert [(r["run"], r["variant"]) for r in attributes] == [("inspect", "base"), ("inspect", "aligned")]
    assert float(attributes[1]["color"]) == pytest.approx(0.5 * 0.6)  # share of all descriptions
    assert float(attributes[1]["diet"]) == 0.0  # every attribute has a column
    hacking = {(r["from"], r["variant"]): r for r in table("hacking")}
    assert float(hacking["descriptions", "base"]["header_share"]) == pytest.approx(1 / 3, abs=1e-4)
    assert float(hacking["held-out", "base"]["name_only_share"]) == pytest.approx(1 / 2)
    assert float(hacking["held-out", "aligned"]["header_share"]) == 0.0
    assert table("top_rewarded")[0]["text"] == "Red crest, black face."
    assert table("bottom_rewarded")[0]["reward"] == "20.0000"
    assert len(table("heldout_pairs")) == 2
    assert [r["heldout_trained_reward"] for r in rows if r["kind"] == "train"] == ["30.0000"]


@pytest.mark.filterwarnings("ignore:ex2 report. skipping")
def test_each_inspection_run_once_and_the_numbers_that_matter(runs, tmp_path):
    found = collect([runs])
    assert [r["run"] for r in found.inspect] == ["runs/inspect"]  # once, whatever its groupings
    (reward,) = headline(found).values()
    assert (reward.base.estimate, reward.aligned.estimate) == (25.0, 30.0)
    assert reward.difference.difference.estimate == 5.0 and reward.difference.n == 2  # two prompts
    assert reward.base.low == 20.0 and reward.base.high == 30.0  # two prompts: the bootstrap spans both
    rows = side_by_side(found.descriptions)
    assert [(r["concept"], r["template"]) for r in rows] == [("cardinal", "t1"), ("cardinal", "t2"), ("tabby", "t1")]
    again = side_by_side(found.descriptions + [dict(found.descriptions[1], description="another adapter")])
    assert len(again) == 4 and again[-1]["aligned_description"] == "another adapter" and not again[-1]["base_description"]


@pytest.mark.filterwarnings("ignore:ex2 report. skipping")
def test_demo_ends_with_the_numbers_that_matter(runs):
    from ex2.demo import headline_lines

    assert headline_lines(runs) == [
        "held-out reward: base 25.00 [20.00, 30.00] -> aligned 30.00 [27.00, 33.00]; difference +5.00 [-3.00, 13.00]: "
        "within the noise: the 95 % interval includes 0 (2 prompts)"]


def test_paths_in_the_tables_are_relative_to_the_report(tmp_path):
    from ex2.report.tables import relative_paths

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "d.jsonl").write_text("")
    rows = [{"descriptions": str(tmp_path / "runs" / "d.jsonl"), "source": "not/there.jsonl"}]
    relative_paths(rows, tmp_path / "report")
    assert rows == [{"descriptions": "../runs/d.jsonl", "source": "not/there.jsonl"}]


@pytest.mark.filterwarnings("ignore:ex2 report. skipping")
def test_every_in_page_link_has_its_section_with_training_alone(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(runs / "train"), "--output", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "held-out templates" in page and "<table" in page
    for target in re.findall(r'href="#([^"]*)"', page):
        assert f'id="{target}"' in page, target


def test_report_takes_runs_as_a_flag_too_and_fails_clearly_without_outputs(runs, tmp_path, capsys):
    assert main(["report", "--runs", str(runs / "clip"), "--output", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--output", str(tmp_path / "r2")]) == 1
    assert "no run outputs under" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r3")]) == 1


CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const rows = () => [...document.querySelectorAll('#descriptions tbody tr')];
  const result = {tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('tbody tr').length, images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    widths: imgs.map(i => i.naturalWidth), descriptions: rows().length,
    findings: document.querySelectorAll('#differences td.finding').length,
    noise: document.querySelectorAll('#differences td.noise').length,
    preset: document.getElementById('descriptions-filter').value};
  const box = document.getElementById('descriptions-filter');
  box.value = 'tabby';
  box.dispatchEvent(new Event('input'));
  result.shownTabby = rows().filter(r => !r.hidden).length;
  result.count = document.getElementById('descriptions-count').textContent;
  box.value = '';
  box.dispatchEvent(new Event('input'));
  result.shownAll = rows().filter(r => !r.hidden).length;
  const header = [...document.querySelectorAll('#descriptions th')].find(th => th.textContent === 'concept');
  header.click();
  header.click();
  result.firstAfterSort = rows()[0].cells[1].textContent;
  const out = document.createElement('pre');
  out.id = 'check';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def _chromium_check(page: Path, tmp_path: Path, fragment: str = "") -> dict:
    profile = tmp_path / "profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri() + fragment]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    found = re.search(r'<pre id="check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no check output from chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.filterwarnings("ignore:ex2 report. skipping")
def test_page_renders_tables_and_images_in_headless_chromium(runs, tmp_path):
    assert Path(CHROMIUM).is_file(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); the Makefile does"
    )
    out = tmp_path / "report"
    assert main(["report", str(runs), "--output", str(out)]) == 0
    page = tmp_path / "page.html"  # a copy of the report with the check appended
    page.write_text((out / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    check = _chromium_check(page, tmp_path)
    assert check["tables"] == 11 and check["descriptions"] == 3
    assert check["images"] == 6 and check["loaded"] == 6 and min(check["widths"]) > 100
    assert check["findings"] >= 2 and check["noise"] >= 1  # differences marked as findings or noise
    assert check["shownTabby"] == 1 and check["count"] == "1 of 3 rows" and check["shownAll"] == 3
    assert check["firstAfterSort"] == "tabby"  # clicked twice: descending
    assert _chromium_check(page, tmp_path, "#filter=cardinal")["preset"] == "cardinal"  # a link can preset it


def test_accuracy_bars_keep_base_and_aligned_descriptions_apart():
    row = {"method": "ex2", "categories": "all", "descriptions": "out/aligned.jsonl", "descriptions_model": "smollm2"}
    assert bar_label({**row, "descriptions_adapter": "runs/a/adapter"}) == "ex2 · aligned"
    assert bar_label({**row, "categories": "visual"}) == "ex2 · base [visual]"
    hand_written = {**row, "descriptions": "out/hand.jsonl", "descriptions_model": None}
    assert bar_label(hand_written) == "ex2 · hand"
    assert bar_label({"method": "clip", "categories": "all", "descriptions": None}) == "clip"


@pytest.mark.filterwarnings("ignore:ex2 report. skipping")
def test_differences_compare_runs_on_the_images_prompts_and_concepts_both_saw(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--output", str(out)]) == 0
    with (out / "differences.csv").open() as handle:
        rows = {(r["kind"], r["measure"], r["after"]): r for r in csv.DictReader(handle)}
    visual = rows["accuracy", "acc1", "runs/ex2/visual"]  # clip 72 of 80 right, visual 64: the same first 64
    assert visual["before"] == "runs/clip" and visual["n"] == "80" and float(visual["difference"]) == pytest.approx(-0.1)
    assert float(visual["p_value"]) == pytest.approx(2 * 0.5 ** 8, abs=1e-4)  # 8 discordant images, all one way
    assert visual["finding"] == "yes" and float(visual["difference_high"]) < 0
    assert not any(r["after"] == "runs/clip-b32" for r in rows.values())  # another VLM: other images' scores
    reward = rows["held-out reward", "reward", "runs/train (trained)"]
    assert reward["finding"] == "no" and "within the noise" in reward["reading"] and reward["unit"] == "prompts"
    spurious = rows["share", "spurious", "runs/inspect"]
    assert float(spurious["difference"]) == pytest.approx(-2 / 3, abs=1e-4) and spurious["unit"] == "concepts"
    assert "only 2 concepts" in spurious["reading"]  # a finding on two concepts is flagged as fragile
    with (out / "shares.csv").open() as handle:
        shares = {(r["variant"], r["measure"]): r for r in csv.DictReader(handle)}
    base = shares["base", "spurious"]
    assert float(base["share"]) == pytest.approx(2 / 3, abs=1e-4) and base["concepts"] == "2"
    assert float(base["share_low"]) <= 2 / 3 <= float(base["share_high"])
    with (out / "summary.csv").open() as handle:
        summary = {r["run"]: r for r in csv.DictReader(handle)}
    assert summary["runs/clip"]["acc1_low"] == ""  # a metrics.json without intervals (an older run): empty cells
    assert summary["runs/train"]["heldout_difference_low"] == "-3.0000"  # prompts resampled: -3 or +13 per prompt
    page = (out / "report.html").read_text()
    assert "within the noise" in page and 'id="s-differences"' in page


def test_accuracy_pairs_base_aligned_each_category_and_class_names():
    from ex2.report.compare import accuracy_pairs

    def row(run, method="ex2", categories="all", model="smollm2", adapter=None, path="d.jsonl", vlm="conse"):
        return {"run": run, "dataset": "samples", "split": "test", "vlm": vlm, "method": method,
                "categories": categories, "descriptions_model": model, "descriptions_adapter": adapter,
                "descriptions": path}

    rows = [row("clip", "clip", model=None, path=None), row("base"), row("base-visual", categories="visual"),
            row("aligned", adapter="a", path="e.jsonl"), row("aligned-visual", categories="visual", adapter="a",
                                                             path="e.jsonl"), row("other-vlm", vlm="b32")]
    found = {(before["run"], after["run"]): what for what, before, after in accuracy_pairs(rows)}
    assert found[("base", "aligned")] == "base → aligned descriptions (all)"
    assert found[("base-visual", "aligned-visual")] == "base → aligned descriptions (visual)"
    assert found[("base", "base-visual")] == "ex2 · base [visual] vs all descriptions"
    assert found[("aligned", "aligned-visual")] == "ex2 · aligned [visual] vs all descriptions"
    assert found[("clip", "aligned")] == "ex2 · aligned vs class names"
    assert not any("other-vlm" in pair for pair in found)  # nothing else saw its images' scores
    assert len(found) == 4 + 4  # each of the four described runs also vs class names


def test_an_accuracy_difference_is_a_finding_only_when_mcnemar_agrees():
    from ex2.report.compare import accuracy_comparison

    correct = {"a": {f"img{i}": i >= 4 for i in range(80)}, "b": {f"img{i}": True for i in range(80)}}
    few = accuracy_comparison("b vs a", {"run": "a"}, {"run": "b"}, correct)  # 4 discordant images, one way
    assert few.difference.excludes(0) and few.p_value == pytest.approx(2 * 0.5 ** 4)
    assert not few.finding and "exact test does not agree" in few.reading()
    correct["a"] = {f"img{i}": i >= 12 for i in range(80)}  # 12 discordant: p = 2 / 2**12
    assert accuracy_comparison("b vs a", {"run": "a"}, {"run": "b"}, correct).finding
