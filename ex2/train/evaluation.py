"""Held-out evaluation of a training run: the same prompts, sampler (:mod:`ex2.llm.samplers`) and seeds
for the base model (adapter switched off) and the trained one; mean rewards and every sample go to
``eval.json``."""

from __future__ import annotations

import contextlib
from pathlib import Path

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
        "samples": [
            {"concept": r["concept"], "query": r["query"], "base": b, "base_reward": br,
             "trained": t, "trained_reward": tr}
            for r, b, br, t, tr in zip(repeated, base, base_rewards, trained, trained_rewards, strict=True)
        ],
    }
    write_json(path, result)
    print(f"held-out templates: mean reward base {result['base_mean_reward']:.4f} -> "
          f"trained {result['trained_mean_reward']:.4f}")
    return result
