"""A run folder's checkpoints (accelerate's full state every ``--save-steps``), resuming from the
latest, and the plot of its log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ex2.core.io import file_problem, newest_intact, repair_jsonl, write_json, write_jsonl

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer.json"  # written last into a checkpoint: its presence marks it complete


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in (output / CHECKPOINTS).glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (its step record or a state file torn), or None."""
    try:
        int(json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{STATE_FILE} is unreadable"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        problem = file_problem(path)
        if problem:
            return f"{path.relative_to(folder)} {problem}"
    return None


def save_checkpoint(accelerator, output: Path, step: int, limit: int) -> None:
    folder = output / CHECKPOINTS / f"step-{step:07d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        write_json(folder / STATE_FILE, {"step": step})
        for old in checkpoints(output)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def plot_log(records: list[dict], path: Path) -> Path:
    from ex2.core.plotting import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["loss"] for r in records], label="loss", color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    acc = ax.twinx()
    for key, colour in (("desc_acc", "tab:orange"), ("name_acc", "tab:green"), ("caption_acc", "tab:orange"),
                        ("region_acc", "tab:red")):
        if records and key in records[0]:
            acc.plot(steps, [r[key] for r in records], label=key, color=colour, linestyle="--")
    acc.set_ylabel("top-1 accuracy")
    acc.set_ylim(0, 1)
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)



def resume_step(accelerator, config, output: Path, log: Path) -> int:
    """The step to start from: the latest checkpoint's under ``--resume`` (its state loaded, the log
    cut back to it), else 0 (an old log removed)."""
    found = checkpoints(output)
    if not config.resume or not found:
        if accelerator.is_main_process and log.exists():
            log.unlink()
        return 0
    latest = newest_intact(found, checkpoint_problem, remove=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if latest is None:
        accelerator.print(f"no intact checkpoint in {output / CHECKPOINTS}; training starts from step 0")
        if accelerator.is_main_process and log.exists():
            log.unlink()
        return 0
    accelerator.load_state(str(latest))
    step = json.loads((latest / STATE_FILE).read_text(encoding="utf-8"))["step"]
    if accelerator.is_main_process and log.exists():
        write_jsonl(log, [r for r in repair_jsonl(log, required=("step",)) if r["step"] <= step])
    accelerator.print(f"resuming from {latest} at step {step}")
    return step


