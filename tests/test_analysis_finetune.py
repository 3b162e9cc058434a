"""analysis/finetune_before_after.py: the held-out split of samples and a before/after run on the
tiny open_clip model."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "analysis" / "finetune_before_after.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("finetune_before_after", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_holds_out_the_last_views(study, tmp_path, shared_cache):
    rows = list(csv.DictReader(open(study.write_manifest(tmp_path), encoding="utf-8")))
    assert len(rows) == 80 and {r["label"] for r in rows} == set(study.DESCRIPTIONS)
    test = [Path(r["path"]).stem for r in rows if r["split"] == "test"]
    assert sorted(set(test)) == ["07", "08", "09"] and len(test) == 24


def test_before_and_after(study, open_clip_dir, tmp_path, shared_cache):
    result = study.measure(tmp_path, vlm=str(open_clip_dir), steps=4, batch_size=8, device="cpu")
    assert set(result) >= {"ex2_before", "ex2_after", "clip_before", "clip_after"}
    assert all(0 <= result[k] <= 1 for k in ("ex2_before", "ex2_after", "clip_before", "clip_after"))
    assert (tmp_path / "ft" / "model" / "open_clip_model.safetensors").is_file()
