"""The embedded judge with the real MiniLM: leave-one-concept-out accuracy and the CLI end to end."""

from __future__ import annotations

import json

import pytest

from ex2.cli import main
from ex2.core.io import read_jsonl, write_jsonl
from ex2.core.taxonomy import CATEGORIES, VISUAL_ATTRIBUTES
from ex2.inspect.categorize import EmbeddedJudge, evaluate, labelled_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def judge():
    return EmbeddedJudge()


def test_labelled_set_covers_the_taxonomy():
    records = read_jsonl(labelled_path())
    assert len(records) >= 100 and len({r["concept"] for r in records}) >= 8
    assert {r["category"] for r in records} == set(CATEGORIES)


def test_leave_one_concept_out_accuracy(judge):
    result = evaluate(judge=judge)  # the judge's exemplars are the labelled file: its LOCO fits are kept
    assert result["category_accuracy"] >= 0.85 and result["informative_accuracy"] >= 0.9, result


def test_cli_writes_categories_and_summary(tmp_path, judge, monkeypatch, tmp_cache):
    monkeypatch.setattr("ex2.inspect.stage.make_judge", lambda config: judge)
    rows = [{"concept": "zebra", "description": d, "model": "smollm2", "adapter": a}
            for d, a in (("Zebra stock photos and wallpapers.", None), ("Its coat has black and white stripes.", "x"),
                         ("Zebras graze on grasses in the African savanna.", None))]
    write_jsonl(tmp_path / "descriptions.jsonl", rows)
    argv = ["inspect", "--input", str(tmp_path / "descriptions.jsonl"), "--dataset", "demo", "--vlm", "conse"]
    assert main(argv) == 0 and main(argv) == 0  # the rerun finds everything done
    records = read_jsonl(tmp_path / "categories.jsonl")
    assert [r["category"] for r in records] == ["spurious", "visual", "non_visual"]
    assert records[1]["attribute"] in VISUAL_ATTRIBUTES and records[2]["dataset"] == "demo"
    summary = json.loads((tmp_path / "inspect_report" / "summary.json").read_text())
    assert summary["judge"]["backend"] == "embedded" and summary["groups"]["vlm"]["conse"]["n"] == 3


def test_attribute_accuracy_leave_one_concept_out(judge):
    """Measured 96 % category and 91 % attribute overall, 89 % attribute on the ``check`` and ``check2``
    concepts no setting was chosen from; 3 points' margin."""
    import importlib.util

    from ex2.inspect.categorize import labelled_path as path

    spec = importlib.util.spec_from_file_location("judge_attribute_accuracy",
                                                  path().parents[2] / "analysis" / "judge_attribute_accuracy.py")
    if spec is None or not (path().parents[2] / "analysis").is_dir():
        pytest.skip("analysis/ is not next to this ex2 (an installed copy)")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    results = study.measure(judge)
    assert results["all"]["category_accuracy"] >= 0.93, results["all"]
    assert results["all"]["attribute_accuracy_given_category"] >= 0.88, results["all"]
    assert results["unseen"]["attribute_accuracy_given_category"] >= 0.86, results["unseen"]
