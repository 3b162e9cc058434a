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
from ex2.report import bar_label, collect

CHROMIUM = "/usr/bin/chromium"


def _metrics(folder: Path, method: str, acc1: float, categories=None, vlm="conse") -> None:
    folder.mkdir(parents=True)
    descriptions = None if method == "clip" else {"path": "d.jsonl", "model": "smollm2", "adapter": "adapter"}
    (folder / "metrics.json").write_text(json.dumps({
        "dataset": "samples", "split": "test", "vlm": vlm, "method": method, "descriptions": descriptions,
        "categories": categories, "acc1": acc1, "acc5": 1.0, "mean_per_class_recall": acc1, "n_images": 80,
        "n_classes": 8, "n_skipped_images": 0,
    }))


def _inspection(folder: Path) -> None:
    folder.mkdir(parents=True)
    shares = {"spurious": 0.2, "visual": 0.5, "non_visual": 0.3, "unparsed": 0.0}
    group = {"n": 10, "category_shares": shares, "attribute_shares": {}}
    (folder / "summary.json").write_text(json.dumps({
        "schema": "ex2.inspect.summary/v1", "source": "categories.jsonl", "judge": {"backend": "rules", "model": None},
        "n_descriptions": 20, "n_unparsed": 0, "informative_share": 0.8, "category_shares": shares,
        "groups": {"vlm": {"conse": group}, "adapter": {"base": group, "runs/train/adapter": group}},
    }))


def _training(folder: Path, torn: bool = False) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps({"step": s, "reward": 0.1 * s, "kl": 0.0}) for s in range(1, 6)]
    (folder / "log.jsonl").write_text("\n".join(lines) + ("\n{\"step\": 6, \"rew" if torn else "\n"))
    (folder / "config.yaml").write_text("vlm: conse\nllm: smollm2\nreward: ex2\n")


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
    assert page.count("<table>") == 3 and page.count('src="data:image/png;base64,') == 3
    assert not re.search(r'(src|href)="(?!data:)|<link|<script', page)  # nothing fetched from elsewhere
    assert (out / "config.yaml").is_file()


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
  const out = document.createElement('pre');
  out.id = 'check';
  out.textContent = JSON.stringify({tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('tbody tr').length, images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    widths: imgs.map(i => i.naturalWidth)});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.filterwarnings("ignore:ex2 report. skipping")
def test_page_renders_tables_and_images_in_headless_chromium(runs, tmp_path):
    assert Path(CHROMIUM).is_file(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); the Makefile does"
    )
    out = tmp_path / "report"
    assert main(["report", str(runs), "--output", str(out)]) == 0
    page = tmp_path / "page.html"  # the report itself has no script; a copy gets the check appended
    page.write_text((out / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    profile = tmp_path / "profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    found = re.search(r'<pre id="check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no check output from chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    check = json.loads(found.group(1).replace("&quot;", '"'))
    assert check["tables"] == 3 and check["rows"] == 6
    assert check["images"] == 3 and check["loaded"] == 3 and min(check["widths"]) > 100


def test_accuracy_bars_keep_base_and_aligned_descriptions_apart():
    row = {"method": "ex2", "categories": "all", "descriptions": "out/aligned.jsonl", "descriptions_model": "smollm2"}
    assert bar_label({**row, "descriptions_adapter": "runs/a/adapter"}) == "ex2 · aligned"
    assert bar_label({**row, "categories": "visual"}) == "ex2 · base [visual]"
    hand_written = {**row, "descriptions": "out/hand.jsonl", "descriptions_model": None}
    assert bar_label(hand_written) == "ex2 · hand"
    assert bar_label({"method": "clip", "categories": "all", "descriptions": None}) == "clip"
