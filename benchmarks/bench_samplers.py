"""``ex2 generate`` with the transformers sampler against vLLM, on the demo's generation, same run.

    make vllm-venv && .venv-vllm/bin/python benchmarks/bench_samplers.py       # both samplers, one venv
    .venv-vllm/bin/python benchmarks/bench_samplers.py --concepts 2 --transformers-python .venv/bin/python

Each sampler runs the real ``ex2 generate`` as its own process, on the demo's settings
(:func:`ex2.demo._generate_config`: the samples' 8 concepts x describe25's 25 templates, seed 0,
``--dtype fast``, even batches of 50, 32 new tokens). Printed per sampler:

wall          the whole command, interpreter start, imports and engine start-up included
start-up      from the process start to the first batch handed to the sampler
sampling      the seconds inside ``sampler.generate`` (all batches)
tokens/s      generated tokens (the raw completions re-tokenized) per second of sampling

and each sampler's ratio of wall time to the transformers sampler's. vLLM runs with ex2's CPU
settings (:func:`ex2.llm.samplers.vllm_device_kwargs`: eager, a 1 GiB KV cache, vLLM's own thread
binding). Seeds differ between the samplers' random streams, so their texts differ; lengths are alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# run inside each child: time the sampler's calls, then run `ex2 generate` as the command line does
CHILD = """
import json, sys, time
start = time.perf_counter()
from ex2.llm import samplers
spent, first = [0.0], []
def timed(cls):
    real = cls.generate
    def generate(self, ids, seeds):
        first.append(first[0] if first else time.perf_counter() - start)
        t = time.perf_counter()
        out = real(self, ids, seeds)
        spent[0] += time.perf_counter() - t
        return out
    cls.generate = generate
timed(samplers.TransformersSampler)
timed(samplers.VLLMSampler)
from ex2.cli import main
code = main(json.loads(sys.argv[1]))
print("BENCH " + json.dumps({"code": code, "startup_s": first[0], "sampling_s": spent[0]}), flush=True)
"""


def demo_argv(sampler: str, output: Path, concepts: int) -> list[str]:
    return ["generate", "--llm", "smollm2", "--dataset", "samples", "--limit-concepts", str(concepts),
            "--templates", "describe25", "--seed", "0", "--dtype", "fast", "--batch-size", "50",
            "--max-new-tokens", "32", "--sampler", sampler, "--output", str(output)]


def run_sampler(python: str, sampler: str, output: Path, concepts: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([python, "-c", CHILD, json.dumps(demo_argv(sampler, output, concepts))], cwd=REPO,
                          capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{sampler}: ex2 generate failed\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, **json.loads(lines[-1][len("BENCH "):])}


def generated_tokens(output: Path) -> int:
    from ex2.core.io import read_jsonl
    from ex2.llm.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    return sum(len(tokenizer(r["raw"], add_special_tokens=False)["input_ids"]) for r in read_jsonl(output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=8, help="concepts x 25 templates (the demo: all 8)")
    parser.add_argument("--transformers-python", default=sys.executable,
                        help="interpreter for the transformers sampler (default: this one)")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sampler, python in (("transformers", args.transformers_python), ("vllm", sys.executable)):
            load = os.getloadavg()[0]
            output = Path(tmp) / f"{sampler}.jsonl"
            rows[sampler] = {**run_sampler(python, sampler, output, args.concepts),
                             "tokens": generated_tokens(output), "load": load}
    base = rows["transformers"]["wall_s"]
    print(f"ex2 generate, demo settings: {args.concepts} concepts x 25 templates, 32 new tokens, dtype fast, "
          f"{os.cpu_count()} CPUs")
    print(f"{'sampler':<13} {'wall s':>7} {'start-up s':>10} {'sampling s':>10} {'tokens':>7} {'tok/s':>7} "
          f"{'wall vs transformers':>21} {'load':>5}")
    for sampler, row in rows.items():
        print(f"{sampler:<13} {row['wall_s']:7.1f} {row['startup_s']:10.1f} {row['sampling_s']:10.1f} "
              f"{row['tokens']:7d} {row['tokens'] / row['sampling_s']:7.1f} {base / row['wall_s']:20.2f}x "
              f"{row['load']:5.1f}")


if __name__ == "__main__":
    main()
