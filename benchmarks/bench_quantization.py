"""Step time and peak memory of QLoRA (4-bit, 8-bit) against the unquantized base, same GRPO job, same run.

    python benchmarks/bench_quantization.py                  # demo settings, 16 completions per mode
    python benchmarks/bench_quantization.py --completions 32 --precision fp32 --threads 1

Each mode trains the demo's settings (:func:`bench_grpo_step.demo_training`, profiled by its
``StepProfile``) in a fresh process, so that each peak resident memory is its own: ``none`` (the base in
``--precision``), ``4bit`` (NF4, double quantization, computing in that precision) and ``8bit``
(LLM.int8). Printed per mode: seconds per optimizer step, the policy model's memory footprint
(``get_memory_footprint``), the process's peak RSS (the VLM reward and the libraries included, alike
in every mode), and each as a ratio to the unquantized run. On a CPU bitsandbytes runs its own torch
kernels; where its optional CPU kernel package is missing it says so once and falls back.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

MODES = ("none", "4bit", "8bit")


def child(mode: str, completions: int, precision: str) -> dict:
    """Train one mode here; its step time, footprint and peak memory."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_grpo_step import StepProfile, demo_training

    from ex2.train import stage as train

    with tempfile.TemporaryDirectory() as tmp:
        config, args = demo_training({"quantization": mode, "precision": precision}, completions, 0, Path(tmp) / "run")
        profile, footprint, build = StepProfile(), {}, train.build_trainer

        def build_instrumented(*a, **k):
            trainer = build(*a, **k)
            profile.instrument(trainer)
            footprint["bytes"] = trainer.model.get_memory_footprint()
            return trainer

        with mock.patch.object(train, "build_trainer", build_instrumented):
            train.run(config, args)
    return {"mode": mode, "steps": profile.steps, "step_s": profile.step_seconds / profile.steps,
            "footprint_mb": footprint["bytes"] / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_mode(mode: str, args) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--completions", str(args.completions),
               "--precision", args.precision]
    env = os.environ | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: failed\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=16, help="completions per mode (4 per demo step)")
    parser.add_argument("--precision", default="fast", help="the run's precision (the demo's: fast)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (OMP_NUM_THREADS)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.completions, args.precision)))
        return
    print(f"GRPO on the demo's settings, precision {args.precision}, {args.completions} completions per mode")
    print(f"{'mode':<6} {'s/step':>7} {'x none':>7} {'model MB':>9} {'x none':>7} {'peak RSS MB':>12} {'x none':>7} "
          f"{'load':>5}", flush=True)
    base = None
    for mode in MODES:  # each row as soon as its run ends
        load = os.getloadavg()[0]
        row = run_mode(mode, args)
        base = base or row
        print(f"{mode:<6} {row['step_s']:7.2f} {row['step_s'] / base['step_s']:7.2f} {row['footprint_mb']:9.0f} "
              f"{row['footprint_mb'] / base['footprint_mb']:7.2f} {row['peak_rss_mb']:12.0f} "
              f"{row['peak_rss_mb'] / base['peak_rss_mb']:7.2f} {load:5.1f}", flush=True)


if __name__ == "__main__":
    main()
