"""Callbacks of ``ex2 train``: a JSONL step log, a progress bar with the reward, a clean stop on
SIGTERM, and the reward curve drawn from the log."""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator
from pathlib import Path

from transformers import TrainerCallback

from ex2.core.io import append_jsonl, read_jsonl, repair_jsonl, write_jsonl
from ex2.core.plotting import pyplot, save_png

LOGGED = {"reward": "reward", "reward_std": "reward_std", "kl": "kl", "loss": "loss", "entropy": "entropy",
          "learning_rate": "learning_rate", "frac_reward_zero_std": "frac_reward_zero_std",
          "completions/mean_length": "completion_length"}


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class JsonlLogger(TrainerCallback):
    """Appends one record per step: loss, KL and, on steps that generated, reward mean/std and a
    few sampled completions (steps re-using a generation have ``reward`` None)."""

    def __init__(self, path: Path, reward, samples: int = 4) -> None:
        self.path, self.reward, self.samples = Path(path), reward, samples

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or not ({"reward", "loss"} & set(logs)):
            return
        record = {"step": state.global_step, "reward": None}
        record.update({name: _number(logs[key]) for key, name in LOGGED.items() if key in logs})
        if "reward" not in logs:  # a step re-using the last generation (--num-iterations > 1)
            append_jsonl(self.path, record)
            return
        last = getattr(self.reward, "last", None) or {}
        rows = zip(last.get("concepts", []), last.get("texts", []), last.get("rewards", []), strict=True)
        record["samples"] = [{"concept": c, "text": t, "reward": _number(r)} for c, t, r in rows][: self.samples]
        append_jsonl(self.path, record)


def trim_log(path: Path, last_step: int) -> None:
    """Drop records after ``last_step`` (steps a killed run logged past its last checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return
    records = repair_jsonl(path)
    kept = [r for r in records if r.get("step", 0) <= last_step]
    if len(kept) != len(records):
        write_jsonl(path, kept)


class RewardProgress(TrainerCallback):
    """A tqdm bar over optimizer steps showing the latest mean reward."""

    def __init__(self) -> None:
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and _number(logs.get("reward")) is not None:
            postfix = {"reward": f"{logs['reward']:.3f}"}
            if _number(logs.get("kl")) is not None:
                postfix["kl"] = f"{logs['kl']:.4f}"
            self.bar.set_postfix(postfix)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopOnSignal(TrainerCallback):
    """On SIGTERM (or SIGINT), finish the current step, save a checkpoint and stop."""

    def __init__(self) -> None:
        self.received: int | None = None

    @contextlib.contextmanager
    def installed(self, *signals: int) -> Iterator[None]:
        def handle(signum, frame):
            self.received = signum

        previous = {}
        try:
            for sig in signals:
                previous[sig] = signal.signal(sig, handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True


def plot_reward_curve(log_path: Path, png_path: Path) -> Path | None:
    """Mean reward per step (± std) from ``log.jsonl``, as a PNG; None when nothing was logged."""
    records = [r for r in read_jsonl(log_path, tolerate_torn_tail=True) if r.get("reward") is not None] \
        if Path(log_path).is_file() else []
    if not records:
        return None
    plt = pyplot()
    steps = [r["step"] for r in records]
    mean = [r["reward"] for r in records]
    std = [r.get("reward_std") or 0.0 for r in records]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, mean, color="tab:blue", label="mean reward")
    low, high = [m - s for m, s in zip(mean, std, strict=True)], [m + s for m, s in zip(mean, std, strict=True)]
    ax.fill_between(steps, low, high,
                    color="tab:blue", alpha=0.2, label="± std")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.legend(loc="best")
    fig.tight_layout()
    return save_png(fig, png_path, dpi=120)
