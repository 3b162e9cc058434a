"""``ex2 train --resume`` past a checkpoint half-written when the run was killed: the newest complete
checkpoint is chosen, each skipped one is named with its reason, and every step is logged once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import train_argv

from ex2.cli import main
from ex2.core.io import read_jsonl
from ex2.train.stage import checkpoint_problem, resume_checkpoint


def write_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint folder with the files trl's trainer writes (small stand-ins for the real contents)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"lora_A.weight": torch.zeros(2, 4), "lora_B.weight": torch.ones(4, 2)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text("{}")
    torch.save({"state": {}}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def empty_folder(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES = {
    "empty folder": (empty_folder, "the folder is empty"),
    "0-byte optimizer.pt": (lambda f: (f / "optimizer.pt").write_bytes(b""), "optimizer.pt is empty"),
    "no trainer_state.json": (lambda f: (f / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    "no scheduler.pt": (lambda f: (f / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    "no adapter": (lambda f: (f / "adapter_model.safetensors").unlink(), "no adapter weights"),
    "truncated adapter": (lambda f: truncate(f / "adapter_model.safetensors"),
                          "adapter_model.safetensors is unreadable"),
    "torn trainer_state.json": (lambda f: truncate(f / "trainer_state.json"),
                                "trainer_state.json is not valid JSON"),
    "state without a step": (lambda f: (f / "trainer_state.json").write_text("[]"),
                             "trainer_state.json has no global_step"),
}


def test_a_complete_checkpoint_has_no_problem(tmp_path):
    assert checkpoint_problem(write_checkpoint(tmp_path / "checkpoint-2", 2)) is None


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_skips_a_damaged_newest_checkpoint_saying_why(tmp_path, capsys, damage):
    spoil, reason = DAMAGES[damage]
    write_checkpoint(tmp_path / "checkpoint-2", 2)
    newest = write_checkpoint(tmp_path / "checkpoint-10", 10)  # numeric order, not by name
    spoil(newest)
    assert checkpoint_problem(newest).startswith(reason)
    assert resume_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    printed = capsys.readouterr().out
    assert f"skipping {newest}: {reason}" in printed and "falling back" in printed
    assert not newest.exists()  # a half-written checkpoint does not stay on disk looking like one


def test_resume_with_no_complete_checkpoint_starts_over(tmp_path, capsys):
    (tmp_path / "checkpoint-1").mkdir()
    assert resume_checkpoint(tmp_path) is None
    assert "no complete checkpoint" in capsys.readouterr().out
    assert not (tmp_path / "checkpoint-1").exists()


def test_resume_after_a_torn_checkpoint_logs_every_step_once(tiny_llm, hf_clip_dir, tmp_path, tmp_cache, capsys):
    run = tmp_path / "run"
    argv = train_argv(tiny_llm, hf_clip_dir, run, "--max-steps", "4", "--save-steps", "2", "--eval-samples", "0")
    assert main(argv) == 0
    # the step-4 checkpoint torn by a kill, and a later one killed before anything was written
    truncate(run / "checkpoint-4" / "trainer_state.json")
    truncate(run / "checkpoint-4" / "adapter_model.safetensors")
    (run / "checkpoint-5").mkdir()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"skipping {run / 'checkpoint-5'}: the folder is empty" in printed
    assert f"skipping {run / 'checkpoint-4'}:" in printed and "Traceback" not in printed
    assert checkpoint_problem(run / "checkpoint-4") is None  # written again by the resumed run
    assert json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert [r["step"] for r in read_jsonl(run / "log.jsonl")] == [1, 2, 3, 4]
