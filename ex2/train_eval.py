"""Held-out evaluation of a training run: the same prompts, sampler and seed for the base model
(adapter switched off) and the trained one; mean rewards and every sample go to ``eval.json``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from ex2.io import write_json
from ex2.reward import clean_text


def prompt_text(tokenizer, prompt: Any) -> str:
    """The text the model sees: chat messages through the chat template, a base prompt as is."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def sample(model, tokenizer, prompts: list[Any], max_new_tokens: int = 32, seed: int = 0,
           batch_size: int = 32, temperature: float = 1.0) -> list[str]:
    """One sampled completion per prompt (top-k 0, top-p 1, as in training); batch ``i`` is seeded
    with ``seed + i``, so two models sampled with the same arguments share random draws."""
    was_training = model.training
    model.eval()
    out: list[str] = []
    device = next(model.parameters()).device
    for index, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start:start + batch_size]
        texts = [prompt_text(tokenizer, p) for p in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True,
                          add_special_tokens=isinstance(chunk[0], str)).to(device)
        torch.manual_seed(seed + index)
        generated = model.generate(**batch, do_sample=True, top_k=0, top_p=1.0, temperature=temperature,
                                   max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        new = generated[:, batch["input_ids"].shape[1]:]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
    model.train(was_training)
    return out


def adapter_disabled(model):
    """A context with a peft model's adapter switched off (the base model); a no-op otherwise."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def evaluate_heldout(model, tokenizer, records: list[dict], reward, path: Path, samples: int = 2,
                     max_new_tokens: int = 32, seed: int = 0) -> dict:
    """Sample ``samples`` completions per held-out prompt from base and trained model; score them."""
    repeated = [r for r in records for _ in range(samples)]
    prompts = [r["prompt"] for r in repeated]
    ids = [r["concept_id"] for r in repeated]
    with adapter_disabled(model):
        base = [clean_text(t) for t in sample(model, tokenizer, prompts, max_new_tokens, seed)]
    trained = [clean_text(t) for t in sample(model, tokenizer, prompts, max_new_tokens, seed)]
    base_rewards, trained_rewards = reward.rewards(base, ids), reward.rewards(trained, ids)
    result = {
        "prompts": len(records), "samples_per_prompt": samples, "seed": seed,
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
