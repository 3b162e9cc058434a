"""Every accuracy of ``ex2 classify`` carries its 95 % interval, recomputable from predictions.csv;
``--seeds N`` repeats a method with randomness and reports mean ± std."""

from __future__ import annotations

import csv
import json

import numpy as np
import PIL.Image
import pytest

from ex2.cli import main
from ex2.core.intervals import proportion_interval, stratified_recall_interval

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "grey": (128, 128, 128),
           "yellow": (230, 220, 30), "purple": (120, 30, 160)}


@pytest.fixture
def base_args(tmp_path, open_clip_dir, tmp_cache) -> list[str]:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            PIL.Image.fromarray(pixels).save(root / name / f"{i}.png")
    return ["--dataset", "imagefolder", "--data-root", str(root), "--vlm", f"local-dir:{open_clip_dir}",
            "--no-progress"]


def test_intervals_in_metrics_json_are_recomputed_from_predictions_csv(base_args, tmp_path):
    out = tmp_path / "clip"
    assert main(["classify", *base_args, "--method", "clip", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    correct = [int(r["correct"]) for r in rows]
    in_top5 = [r["label"] in r["top5"].split("|") for r in rows]
    for key, hits in (("acc1", correct), ("acc5", in_top5)):
        again = proportion_interval(sum(hits), len(hits))
        assert (metrics[f"{key}_low"], metrics[f"{key}_high"]) == pytest.approx((again.low, again.high))
        assert metrics[f"{key}_low"] <= metrics[key] <= metrics[f"{key}_high"]
        assert metrics["interval"][key] == "Clopper-Pearson exact"
    recall = stratified_recall_interval(correct, [r["label"] for r in rows])
    assert metrics["mean_per_class_recall"] == pytest.approx(recall.estimate)
    assert (metrics["mean_per_class_recall_low"], metrics["mean_per_class_recall_high"]) == pytest.approx(
        (recall.low, recall.high))
    assert metrics["interval"]["level"] == 0.95


def test_seeds_repeat_waffle_and_report_mean_std_and_the_interval_of_the_mean(base_args, tmp_path):
    out = tmp_path / "waffle"
    assert main(["classify", *base_args, "--method", "waffle", "--seeds", "3", "--waffle-count", "3",
                 "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    per_seed = [s["acc1"] for s in metrics["per_seed"]]
    assert len(per_seed) == 3 and metrics["waffle"]["seeds"] == [0, 1, 2]
    assert metrics["acc1"] == pytest.approx(np.mean(per_seed)) and metrics["acc1_std"] == pytest.approx(np.std(per_seed))
    assert metrics["acc1_low"] <= metrics["acc1"] <= metrics["acc1_high"]
    assert metrics["interval"]["acc1"] == "percentile bootstrap over units"  # images resampled, seeds averaged
    assert all(s["acc1_low"] <= s["acc1"] <= s["acc1_high"] for s in metrics["per_seed"])


def test_seeds_are_refused_where_they_repeat_nothing(base_args, tmp_path, capsys):
    with pytest.raises(SystemExit):  # a bad flag value: argparse's one-line error
        main(["classify", *base_args, "--method", "clip", "--seeds", "2", "--output", str(tmp_path / "r")])
    assert "--seeds is an option of --method waffle, not of --method clip" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
