"""Every stage checks its output before it loads any model: pointed at an output of the wrong kind
(a folder where a file goes, a file where a run folder goes), ``ex2 <stage>`` prints one line naming
it and exits 1, having loaded no model and written nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ex2.cli import STAGES, main


def _cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (``ex2`` arguments but ``--output``, "file" or "folder": what the output is)."""
    descriptions = tmp_path / "inputs" / "descriptions.jsonl"
    runs = tmp_path / "inputs" / "runs"
    cases = {
        "train": (["--dataset", "samples", "--vlm", "conse", "--llm", "smollm2"], "folder"),
        "generate": (["--dataset", "samples", "--llm", "smollm2"], "file"),
        "knowledge": (["--dataset", "samples", "--llm", "smollm2", "--kinds", "attributes,synonyms"], "file"),
        "inspect": (["--input", str(descriptions), "--model", "smollm2"], "file"),
        "annotate": (["--dataset", "samples", "--descriptions", str(descriptions)], "file"),
        "finetune": (["--dataset", "samples", "--vlm", "ViT-B-32:openai", "--descriptions", str(descriptions)], "folder"),
        "classify": (["--dataset", "samples", "--vlm", "conse"], "folder"),
        "probe": (["--dataset", "samples", "--vlm", "conse"], "folder"),
        "report": ([str(runs)], "folder"),
        "demo": (["--dataset", "samples"], "folder"),
    }
    cases = {stage: ([stage, *argv], kind) for stage, (argv, kind) in cases.items()}
    cases["classify-generative"] = (["classify", "--dataset", "samples", "--vlm", "gen:org/model", "--method", "open"],
                                    "folder")
    return cases


def _inputs(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    (inputs / "runs").mkdir(parents=True)
    (inputs / "runs" / "metrics.json").write_text(json.dumps({"acc1": 0.5, "method": "clip"}))
    (inputs / "descriptions.jsonl").write_text(
        json.dumps({"concept": "cat", "class_id": 0, "description": "a small furry animal"}) + "\n")


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading any model fails the test: every lazily registered backend (VLMs, samplers, judges) and
    every transformers or open_clip model or tokenizer."""
    import open_clip
    import transformers

    import ex2.core.registry

    def loaded(*args, **kwargs):
        raise AssertionError(f"a model was loaded before the output was checked: {args[:2]}")

    load_object = ex2.core.registry.load_object

    def load_unless_a_model(reference: str):  # classification methods are code, not models
        return load_object(reference) if reference.startswith("ex2.classify.methods.") else loaded(reference)

    monkeypatch.setattr(ex2.core.registry, "load_object", load_unless_a_model)
    for owner, name in ((transformers.PreTrainedModel, "from_pretrained"),
                        (transformers.PreTrainedTokenizerBase, "from_pretrained"),
                        (transformers.AutoConfig, "from_pretrained"),
                        (open_clip, "create_model_and_transforms"), (open_clip, "create_model")):
        monkeypatch.setattr(owner, name, loaded)


def test_every_cli_stage_has_a_case_here(tmp_path):
    assert {argv[0] for argv, _ in _cases(tmp_path).values()} == set(STAGES)


CASES = [*STAGES, "classify-generative"]


@pytest.mark.parametrize("case", CASES)
def test_a_stage_checks_its_output_before_loading_a_model(case, tmp_path, tmp_cache, no_model_loads, capsys):
    _inputs(tmp_path)
    argv, kind = _cases(tmp_path)[case]
    stage = argv[0]
    wrong = tmp_path / "out"
    if kind == "folder":
        wrong.write_text("a file where the run folder goes\n")
    else:
        wrong.mkdir()
    before = _files(tmp_path)
    assert main([*argv, "--output", str(wrong)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith(f"ex2 {stage}: error:"), error
    assert str(wrong) in error and ("expected a folder" if kind == "folder" else "expected the path of a file") in error
    assert _files(tmp_path) == before  # nothing written, no folder made


def test_the_guard_sees_a_model_load(tmp_path, tmp_cache, no_model_loads):
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["generate", "--dataset", "samples", "--llm", "smollm2", "--output", str(tmp_path / "d.jsonl")])
