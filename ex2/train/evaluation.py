"""Held-out evaluation of a training run: the same prompts, sampler (:mod:`ex2.llm.samplers`) and seeds
for the base model (adapter switched off) and the trained one; mean rewards and every sample go to
``eval.json``, with 95 % intervals of both means and of their paired difference (a percentile
bootstrap that resamples prompts, each with all its samples: :func:`heldout_intervals`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ex2.core.intervals import mean_interval, paired_difference
from ex2.core.io import write_json
from ex2.core.text import scored_text
from ex2.llm.models import format_prompt
from ex2.llm.samplers import SamplingSettings, TransformersSampler, encode_prompts, even_batch_size


def adapter_disabled(model):
    """A context with a peft model's adapter switched off (the base model); a no-op otherwise."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def sample_both(model, tokenizer, queries: list[str], prompt_format: str, settings: SamplingSettings,
                seed: int = 0, text: str = "raw") -> tuple[list[str], list[str]]:
    """``(base, trained)`` completions, one per query, as the reward scores them (``text``: ``raw``
    or ``first-paragraph``, :func:`ex2.core.text.scored_text`); query ``i`` draws from seed ``seed + i``
    in both."""
    was_training = model.training
    sampler = TransformersSampler.from_model(model, tokenizer, settings, even_batch_size(max(1, len(queries))))
    prompt_ids = encode_prompts(tokenizer, [format_prompt(tokenizer, q, prompt_format) for q in queries],
                                prompt_format)
    seeds = [seed + i for i in range(len(queries))]
    special = list(getattr(tokenizer, "all_special_tokens", []))
    with adapter_disabled(model):
        base = sampler.generate(prompt_ids, seeds)
    trained = sampler.generate(prompt_ids, seeds)
    model.train(was_training)
    return ([scored_text(raw, text, special) for raw in base], [scored_text(raw, text, special) for raw in trained])


def heldout_intervals(base_rewards: list[float], trained_rewards: list[float], prompts: list) -> dict:
    """``base_mean_reward_low/high``, ``trained_mean_reward_low/high`` and ``reward_difference``
    (trained - base, paired: both models answered the same prompt with the same seed), resampling
    ``prompts`` (the samples of one prompt are not independent)."""
    out = {}
    for name, rewards in (("base_mean_reward", base_rewards), ("trained_mean_reward", trained_rewards)):
        found = mean_interval(rewards, prompts)
        out |= {f"{name}_low": found.low, f"{name}_high": found.high}
    out["reward_difference"] = paired_difference(base_rewards, trained_rewards, prompts).as_dict()
    return out


def evaluate_heldout(model, tokenizer, records: list[dict], prompt_format: str, reward, path: Path,
                     samples: int = 2, settings: SamplingSettings | None = None, seed: int = 0) -> dict:
    """Sample ``samples`` completions per held-out prompt from base and trained model; score them as
    training does (the reward's scored text and empty-text rule)."""
    repeated = [r for r in records for _ in range(samples)]
    ids = [r["concept_id"] for r in repeated]
    base, trained = sample_both(model, tokenizer, [r["query"] for r in repeated], prompt_format,
                                settings or SamplingSettings(), seed, getattr(reward, "text", "raw"))
    base_rewards, trained_rewards = reward.rewards(base, ids), reward.rewards(trained, ids)
    result = {
        "prompts": len(records), "samples_per_prompt": samples, "seed": seed,
        "scored_text": getattr(reward, "text", "raw"),
        "base_mean_reward": sum(base_rewards) / len(base_rewards),
        "trained_mean_reward": sum(trained_rewards) / len(trained_rewards),
        **heldout_intervals(base_rewards, trained_rewards, [r["query"] for r in repeated]),
        "samples": [
            {"concept": r["concept"], "query": r["query"], "base": b, "base_reward": br,
             "trained": t, "trained_reward": tr}
            for r, b, br, t, tr in zip(repeated, base, base_rewards, trained, trained_rewards, strict=True)
        ],
    }
    write_json(path, result)
    low, high = result["reward_difference"]["low"], result["reward_difference"]["high"]
    span = "one prompt: no interval" if low is None else f"95 % interval {low:+.4f} to {high:+.4f}, prompts resampled"
    print(f"held-out templates: mean reward base {result['base_mean_reward']:.4f} -> "
          f"trained {result['trained_mean_reward']:.4f} ({span})")
    return result
