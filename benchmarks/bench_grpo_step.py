"""Where one ``ex2 train`` GRPO step on the demo's settings spends its time, against the machine's limit.

    python benchmarks/bench_grpo_step.py                     # 32 completions (8 demo steps) on its settings
    python benchmarks/bench_grpo_step.py --set num_iterations=2 --set steps_per_generation=2 \
        --set per_device_train_batch_size=4                  # the same, 4 updates per generation
    python benchmarks/bench_grpo_step.py --compare --completions 80 --baseline precision=fp32 \
        --set precision=bf16 --set num_iterations=2         # before/after at equal completions, held-out reward
    python benchmarks/bench_grpo_step.py --threads 1         # a shared 2-core box

It runs the real ``ex2.train.stage.run`` with the demo's training settings (:func:`ex2.demo.train_configs`,
then ``--set`` overrides of any trl or ex2 field; ``max_steps`` follows from ``--completions``) and
wraps methods of the real trl trainer:

generation   ``GRPOTrainer._generate_single_turn`` (``model.generate``)
reward       ``GRPOTrainer._calculate_rewards`` (the VLM reward, text encoding included)
old/ref fwd  ``_get_per_token_logps_and_entropies`` without gradients (old-policy log-probs when a
             generation serves several updates, reference log-probs when beta > 0)
policy fwd   the same with gradients (inside ``compute_loss``)
backward     ``accelerator.backward``
optimizer    between the ``on_pre_optimizer_step`` and ``on_optimizer_step`` callbacks
other        the rest of each step (decoding, padding, advantages, logging metrics)

FLOPs count the weights' matrix multiplies only (attention scores, norms and softmax are left out:
under 3 % at these lengths). With ``N`` the model's parameters outside the token embedding (LoRA's
included) and ``H = vocab × hidden`` the output head:

    forward of T tokens, logits for L of them   2·N·T + 2·H·L
    generation of B rows, prompt P, C steps     2·N·B·P + 2·H·B + (C - 1)·B·(2·N + 2·H)  (KV cache)
    backward                                    the forward's FLOPs + 2·N_lora·T  (the base is frozen:
                                                gradients flow to activations, weights get none)

Padded positions are counted, since they are computed. The limit is ``torch.matmul`` on square
matrices (1024 and 2048) in the run's precision (bf16 when trl's ``bf16`` is on, else fp32), measured
in the same process before and after training, best kept.

``--compare`` trains the baseline (the demo's settings, or ``--baseline`` overrides) and the
candidate (``--set``) one after the other on the same number of completions (or the candidate on
``--candidate-completions``), evaluates both on the held-out templates with the same sampler and
seeds, and prints the ratio of optimizer steps per second, the ratio of wall time and both rewards.
The load average before and after each run is printed: on a shared machine, compare runs whose
load was alike.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import torch
import yaml
from transformers import TrainerCallback

from ex2.core.devices import dtype_name

PARTS = ("generation", "reward", "old/ref fwd", "policy fwd", "backward", "optimizer", "other")


def matmul_flops(dtype: torch.dtype = torch.float32, sizes=(1024, 2048), seconds: float = 1.0) -> float:
    """The best FLOP/s of ``torch.matmul`` on square matrices of ``sizes`` in ``dtype``, with the current threads."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            a @ b
            calls += 1
        best = max(best, 2 * n**3 * calls / (time.perf_counter() - start))
    return best


class StepProfile(TrainerCallback):
    """Seconds and FLOPs per part of each optimizer step of a GRPO trainer (see the module docstring)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, float] = defaultdict(float)
        self.steps, self.step_seconds, self.generated = 0, 0.0, 0
        self._step_start = self._optimizer_start = 0.0
        self._last_forward = 0.0

    # --- sizes ------------------------------------------------------------------------------------
    def measure_model(self, model) -> None:
        head = model.get_output_embeddings().weight
        embed = model.get_input_embeddings().weight
        unique = {id(p): p.numel() for p in model.parameters()}
        self.head = head.numel()
        self.body = sum(unique.values()) - embed.numel() - (0 if head is embed else head.numel())
        self.lora = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def forward_flops(self, tokens: int, logit_tokens: int) -> float:
        return 2.0 * self.body * tokens + 2.0 * self.head * logit_tokens

    # --- the trainer's methods, wrapped -------------------------------------------------------------
    def instrument(self, trainer) -> None:
        self.measure_model(trainer.model)
        self._wrap(trainer, "_generate_single_turn", self._time_generation)
        self._wrap(trainer, "_calculate_rewards", lambda call, *_, **__: self._time("reward", call))
        self._wrap(trainer, "_get_per_token_logps_and_entropies", self._time_forward)
        self._wrap(trainer.accelerator, "backward", self._time_backward)
        trainer.add_callback(self)

    @staticmethod
    def _wrap(owner, name: str, timer) -> None:
        method = getattr(owner, name)

        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            return timer(lambda: method(*args, **kwargs), *args, **kwargs)

        setattr(owner, name, wrapper)

    def _time(self, part: str, call, flops: float = 0.0):
        start = time.perf_counter()
        out = call()
        self.seconds[part] += time.perf_counter() - start
        self.flops[part] += flops
        return out

    def _time_generation(self, call, prompt_ids, *args, **kwargs):
        completion_ids, logprobs = self._time("generation", call)
        rows, width = len(prompt_ids), max(len(p) for p in prompt_ids)
        steps = max(len(c) for c in completion_ids)
        flops = 2.0 * self.body * rows * width + 2.0 * self.head * rows
        flops += (steps - 1) * rows * (2.0 * self.body + 2.0 * self.head)
        self.flops["generation"] += flops
        self.generated += rows
        return completion_ids, logprobs

    def _time_forward(self, call, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        part = "policy fwd" if torch.is_grad_enabled() else "old/ref fwd"
        flops = self.forward_flops(input_ids.numel(), input_ids.size(0) * logits_to_keep)
        if part == "policy fwd":
            self._last_forward = flops + 2.0 * self.lora * input_ids.numel()
        return self._time(part, call, flops)

    def _time_backward(self, call, *args, **kwargs):
        return self._time("backward", call, self._last_forward)

    # --- callbacks ----------------------------------------------------------------------------------
    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.seconds["optimizer"] += time.perf_counter() - self._optimizer_start

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds += time.perf_counter() - self._step_start
        self.steps += 1

    # --- report -------------------------------------------------------------------------------------
    def table(self, limit: float) -> list[str]:
        measured = sum(self.seconds[p] for p in PARTS if p != "other")
        seconds = {**self.seconds, "other": max(0.0, self.step_seconds - measured)}
        total_flops = sum(self.flops.values())
        lines = [f"{'part':<12} {'s/step':>7} {'share':>6} {'GFLOP/step':>10} {'GFLOP/s':>8} {'of limit':>8}"]
        for part in PARTS:
            s, f = seconds[part] / self.steps, self.flops[part] / self.steps
            rate = f / s if s and f else 0.0
            lines.append(f"{part:<12} {s:7.2f} {s * self.steps / self.step_seconds:6.1%} {f / 1e9:10.1f} "
                         f"{rate / 1e9:8.1f} {rate / limit:8.1%}" if f else
                         f"{part:<12} {s:7.2f} {s * self.steps / self.step_seconds:6.1%} {'':>10} {'':>8} {'':>8}")
        step = self.step_seconds / self.steps
        lines.append(f"{'step':<12} {step:7.2f} {1:6.0%} {total_flops / self.steps / 1e9:10.1f} "
                     f"{total_flops / self.step_seconds / 1e9:8.1f} {total_flops / self.step_seconds / limit:8.1%}")
        return lines


def parse_overrides(items: list[str]) -> dict:
    """``FIELD=VALUE`` strings as a dict, values read as YAML (``2`` is an int, ``true`` a bool)."""
    pairs = [item.split("=", 1) for item in items]
    bad = [item for item, pair in zip(items, pairs, strict=True) if len(pair) != 2]
    if bad:
        raise SystemExit(f"--set {bad[0]!r}: expected FIELD=VALUE")
    return {key.replace("-", "_"): yaml.safe_load(value) for key, value in pairs}


def demo_training(overrides: dict, completions: int, eval_samples: int, output: Path):
    """``(TrainConfig, trl config)``: the demo's training settings with ``overrides`` (ex2's or trl's
    fields), ``max_steps`` set so the run generates ``completions`` completions, no checkpoints."""
    import dataclasses

    from ex2.demo import DemoConfig, train_configs
    from ex2.train import stage as train

    demo, args = train_configs(DemoConfig(), output)
    ours = {f.name for f in dataclasses.fields(train.TrainConfig)}
    config = dataclasses.replace(demo, eval_samples=eval_samples, resume=False,
                                 **{k: v for k, v in overrides.items() if k in ours})
    # the fields the demo set, read against its own config: the device's (precision) follow ``config``
    settings = {**train.trainer_settings(demo, args), "save_strategy": "no",
                **{k: v for k, v in overrides.items() if k not in ours}}
    shape = train.trainer_config(config, **settings)
    generations = max(1, completions // shape.generation_batch_size)
    micro_batches = generations * shape.steps_per_generation * shape.num_iterations
    settings["max_steps"] = max(1, micro_batches // shape.gradient_accumulation_steps)
    return config, train.trainer_config(config, **settings)


def profile_run(overrides: dict, completions: int, eval_samples: int, output: Path):
    """Train the demo's settings with ``overrides`` under a :class:`StepProfile`; returns the profile,
    the trl config, eval.json (empty when ``eval_samples`` is 0) and ``train()``'s wall seconds."""
    import json

    from ex2.train import stage as train

    config, args = demo_training(overrides, completions, eval_samples, output)
    profile = StepProfile()
    build = train.build_trainer

    def build_instrumented(*a, **k):
        trainer = build(*a, **k)
        profile.instrument(trainer)
        return trainer

    with mock.patch.object(train, "build_trainer", build_instrumented):
        train.run(config, args)
    eval_path = output / "eval.json"
    return profile, args, json.loads(eval_path.read_text()) if eval_path.is_file() else {}


def run_dtype(args) -> torch.dtype:
    """The dtype the run's matrix multiplies ran in (trl's ``bf16`` autocast, else fp32)."""
    return torch.bfloat16 if args.bf16 else torch.float32


def describe(name: str, overrides: dict) -> str:
    return f"{name} ({', '.join(f'{k}={v}' for k, v in overrides.items()) or 'the demo settings'})"


def compare(baseline: dict, candidate: dict, budgets: tuple[int, int], eval_samples: int, limit_fn) -> None:
    """Train both (for ``completions`` each: the same number, or the candidate's own budget); print
    both profiles, the ratios of optimizer steps per second and of wall time, and the held-out
    reward each reached."""
    rows = []
    for name, overrides, completions in (("baseline", baseline, budgets[0]), ("candidate", candidate, budgets[1])):
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            profile, args, result = profile_run(overrides, completions, eval_samples, Path(tmp) / "run")
        limit = limit_fn(run_dtype(args))
        print(f"\n{describe(name, overrides)}: {profile.steps} updates on {profile.generated} completions, "
              f"load {load:.1f} -> {os.getloadavg()[0]:.1f}, limit {limit / 1e9:.1f} GFLOP/s in {dtype_name(run_dtype(args))}")
        print("\n".join(profile.table(limit)))
        rows.append((profile, result))
    (base, base_eval), (cand, cand_eval) = rows
    rate = lambda p: p.steps / p.step_seconds  # noqa: E731
    print(f"\noptimizer steps/s: baseline {rate(base):.3f}, candidate {rate(cand):.3f}: "
          f"ratio {rate(cand) / rate(base):.2f}x")
    print(f"wall time of the steps: baseline {base.step_seconds:.0f} s on {base.generated} completions, "
          f"candidate {cand.step_seconds:.0f} s on {cand.generated}: ratio {cand.step_seconds / base.step_seconds:.2f}")
    if base_eval and cand_eval:
        print(f"held-out reward (base model {base_eval['base_mean_reward']:.2f}): baseline "
              f"{base_eval['trained_mean_reward']:.2f}, candidate {cand_eval['trained_mean_reward']:.2f} "
              f"({base_eval['prompts']} prompts x {base_eval['samples_per_prompt']} samples)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=32, help="completions to generate (32: 8 demo steps)")
    parser.add_argument("--set", dest="candidate", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a trl or ex2 training field (repeatable), e.g. num_iterations=2")
    parser.add_argument("--compare", action="store_true",
                        help="also train the baseline and print the ratios, held-out reward included")
    parser.add_argument("--baseline", action="append", default=[], metavar="FIELD=VALUE",
                        help="with --compare: the baseline's overrides (default: the demo's settings)")
    parser.add_argument("--candidate-completions", type=int, default=None,
                        help="with --compare: the candidate's budget (default: --completions, as the baseline's)")
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="samples per held-out prompt after training (default: 2 with --compare, else none)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    candidate = parse_overrides(args.candidate)
    first = {dtype: matmul_flops(dtype) for dtype in (torch.float32, torch.bfloat16)}
    limit_fn = lambda dtype: max(first[dtype], matmul_flops(dtype))  # noqa: E731
    print(f"{torch.get_num_threads()} threads; matmul limit fp32 {first[torch.float32] / 1e9:.1f} GFLOP/s, "
          f"bf16 {first[torch.bfloat16] / 1e9:.1f} GFLOP/s")
    if args.compare:
        budgets = (args.completions, args.candidate_completions or args.completions)
        compare(parse_overrides(args.baseline), candidate, budgets,
                2 if args.eval_samples is None else args.eval_samples, limit_fn)
        return
    with tempfile.TemporaryDirectory() as tmp:
        profile, settings, result = profile_run(candidate, args.completions, args.eval_samples or 0,
                                                Path(tmp) / "run")
    limit = limit_fn(run_dtype(settings))
    print(f"\n{describe('profile', candidate)}: {profile.steps} updates on {profile.generated} completions; "
          f"limit {limit / 1e9:.1f} GFLOP/s in {dtype_name(run_dtype(settings))}")
    print("\n".join(profile.table(limit)))
    if result:
        print(f"held-out reward: base model {result['base_mean_reward']:.2f}, trained "
              f"{result['trained_mean_reward']:.2f} ({result['prompts']} prompts x {result['samples_per_prompt']} samples)")


if __name__ == "__main__":
    main()
