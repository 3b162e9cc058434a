"""`ex2 demo` end to end on the embedded default, at a smaller size."""

from __future__ import annotations

import json

import pytest
import yaml

from ex2.cli import main
from ex2.core.io import read_jsonl

pytestmark = pytest.mark.slow


def test_demo_runs_every_stage_and_reuses_finished_work(shared_cache, tmp_path, capsys):
    templates = tmp_path / "templates.txt"
    templates.write_text("Describe a photo of a {}.\nWhat does a {} look like?\n"
                         "Write a caption for an image of a {}.\nWhere does a {} live?\nWrite a poem about a {}.\n")
    out = tmp_path / "demo"
    argv = ["demo", "--output", str(out), "--train-steps", "2", "--num-generations", "2",
            "--limit-concepts", "2", "--templates", str(templates)]
    assert main(argv) == 0

    train = out / "train"
    assert (train / "adapter" / "adapter_config.json").is_file()
    assert (train / "reward_curve.png").stat().st_size > 0
    steps = read_jsonl(train / "log.jsonl")
    assert [s["step"] for s in steps if "step" in s][-1] == 2
    for variant in ("base", "aligned"):
        descriptions = read_jsonl(out / "descriptions" / f"{variant}.jsonl")
        assert len(descriptions) == 2 * 5  # 2 concepts x 5 templates
        assert {r["adapter"] is None for r in descriptions} == {variant == "base"}
        judged = read_jsonl(out / "categories" / f"{variant}.jsonl")
        assert {r["category"] for r in judged} <= {"spurious", "visual", "non_visual"}
        assert json.loads((out / "categories" / f"{variant}_report" / "summary.json").read_text())
    runs = sorted(p.name for p in (out / "classify").iterdir())
    assert runs == sorted(["clip"] + [f"ex2-{v}{c}" for v in ("base", "aligned")
                                      for c in ("", "-visual", "-non_visual", "-spurious")])
    for run in runs:
        metrics = json.loads((out / "classify" / run / "metrics.json").read_text())
        assert 0.0 <= metrics["acc1"] <= 1.0 and metrics["n_images"] == 80
    assert json.loads((out / "classify" / "clip" / "metrics.json").read_text())["acc1"] > 0.5
    html = (out / "report" / "report.html").read_text()
    assert "<table" in html and "data:image/png;base64," in html
    assert yaml.safe_load((out / "demo_config.yaml").read_text())["train_steps"] == 2
    # the LLM trains and samples in the demo's precision (fast: bf16 where the CPU computes it natively)
    assert yaml.safe_load((train / "config.yaml").read_text())["precision"] == "fast"
    assert {yaml.safe_load((out / "descriptions" / f"{v}.jsonl.config.yaml").read_text())["dtype"]
            for v in ("base", "aligned")} == {"fast"}

    printed = capsys.readouterr().out
    assert "report: " in printed and "held-out reward: base " in printed and "informative share: base " in printed
    assert "accuracy with the descriptions: base " in printed
    assert main(argv) == 0  # everything finished: every stage is skipped
    assert capsys.readouterr().out.count("done already") == 1 + 4 + 9 + 1  # train, generate+inspect x2, classify x9, report


def test_demo_refuses_an_unknown_precision_before_any_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--output", str(out), "--precision", "half"])
    assert exit_.value.code == 2
    assert "precision must be one of auto, fast, fp32, fp16, bf16, got 'half'" in capsys.readouterr().err
    assert not out.exists()
