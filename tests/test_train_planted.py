"""The planted-preference study end to end at toy scale (tiny Llama, tiny CLIP), its keyword measure,
and (slow) a scaled-down run on smollm2 + conse that must learn the planted preference."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[1] / "analysis" / "planted_preference.py"


def load_study():
    spec = importlib.util.spec_from_file_location("planted_preference", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attribute_share_is_a_keyword_match():
    study = load_study()
    assert study.has_attribute("Tigers live in the wild, in dense Jungles.")
    assert not study.has_attribute("A wildly popular drink.")  # whole words only
    assert study.share(["in its natural habitat", "a red cup", "forest green", "metal"]) == 0.5


def test_study_measures_base_and_trained_shares(tiny_llm, hf_clip_dir, tmp_path, tmp_cache):
    study = load_study()
    output = tmp_path / "planted"
    result = study.main(["--output", str(output), "--llm", str(tiny_llm), "--vlm", str(hf_clip_dir),
                         "--max-steps", "1", "--batch-size", "4", "--num-generations", "4",
                         "--max-completion-length", "4", "--eval-samples", "1"])
    saved = json.loads((output / "planted_share.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["samples"] == 8 * 5 and 0.0 <= saved["base_share"] <= 1.0 and saved["max_steps"] == 1
    log = (output / "log.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["reward"] is not None


def test_colour_attribute_keywords():
    study = load_study()
    _, keywords = study.ATTRIBUTES["red"]
    assert study.share(["a bright red coat", "crimson petals", "a redwood table", "blue sky"], keywords) == 0.5


@pytest.mark.slow
def test_smollm2_learns_the_planted_colour_preference(shared_cache, tmp_path):
    """The study scaled down on the embedded default (smollm2 + conse): two thirds of its steps and a quarter of
    its held-out samples still lift the colour share well above the base model's."""
    study = load_study()
    result = study.main(["--attribute", "colour", "--output", str(tmp_path / "colour"), "--max-steps", "32",
                         "--num-iterations", "2", "--learning-rate", "2e-3", "--batch-size", "8",
                         "--max-completion-length", "16", "--eval-samples", "1", "--save-steps", "32",
                         "--seed", "1"])
    assert result["samples"] == 40
    assert result["trained_share"] >= result["base_share"] + 0.5, result  # measured 5 % -> 95 %
    assert result["trained_mean_reward"] > result["base_mean_reward"] + 20, result  # 15.9 -> 65.9
