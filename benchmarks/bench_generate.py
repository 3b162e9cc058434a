"""Tokens per second of the batched transformers sampler against one prompt at a time, same run.

    .venv/bin/python benchmarks/bench_generate.py                       # smollm2, 2 sample concepts
    .venv/bin/python benchmarks/bench_generate.py --concepts 1 --threads 1   # a shared 2-core box
    .venv/bin/python benchmarks/bench_generate.py --llm mistralai/Mistral-7B-v0.1 --device cuda \\
        --concepts 4 --batch-size 100 --vllm                            # adds vLLM (needs vllm + CUDA)

Both modes sample the same prompts with the same per-description seeds, so they produce the same
completions (checked) and the ratio of tokens per second is the ratio of wall times.
"""

from __future__ import annotations

import argparse
import time

import torch

from ex2.data import concept_names, load_templates
from ex2.generate.stage import plan_jobs
from ex2.llm.models import format_prompt, resolve_prompt_format
from ex2.llm.samplers import SamplingSettings, encode_prompts, load_sampler, record_seed


def prompts_and_seeds(sampler, dataset: str, n_concepts: int, prompt_format: str):
    jobs = plan_jobs(concept_names(dataset)[:n_concepts], load_templates("describe25"))
    prompts = [format_prompt(sampler.tokenizer, job.query, prompt_format) for job in jobs]
    return encode_prompts(sampler.tokenizer, prompts, prompt_format), [record_seed(0, *job.key) for job in jobs]


def timed(sampler, prompt_ids, seeds, batch_size: int) -> tuple[float, list[str]]:
    """Wall seconds and completions, sampling ``batch_size`` prompts per call."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start, raws = time.perf_counter(), []
    for i in range(0, len(prompt_ids), batch_size):
        raws += sampler.generate(prompt_ids[i:i + batch_size], seeds[i:i + batch_size])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, raws


def count_tokens(tokenizer, raws: list[str]) -> int:
    return sum(len(tokenizer(raw, add_special_tokens=False)["input_ids"]) for raw in raws)


def vllm_ready() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="smollm2")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--dataset", default="samples")
    parser.add_argument("--concepts", type=int, default=2, help="concepts (x 25 templates) to describe")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    parser.add_argument("--vllm", action="store_true", help="also time the vllm sampler (needs vllm + CUDA)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    sampler = load_sampler("transformers", args.llm, args.adapter, settings, device=args.device,
                           batch_size=args.batch_size)
    fmt = resolve_prompt_format(sampler.tokenizer, "auto")
    prompt_ids, seeds = prompts_and_seeds(sampler, args.dataset, args.concepts, fmt)
    timed(sampler, prompt_ids[:2], seeds[:2], 2)  # warm-up
    single_s, single = timed(sampler, prompt_ids, seeds, 1)
    batched_s, batched = timed(sampler, prompt_ids, seeds, args.batch_size)
    tokens = count_tokens(sampler.tokenizer, single)
    device = next(sampler.model.parameters()).device
    print(f"{args.llm} on {device}: {len(prompt_ids)} prompts, {tokens} generated tokens, "
          f"format {fmt}, {torch.get_num_threads()} threads")
    print(f"one at a time        : {single_s:7.2f} s  {tokens / single_s:8.1f} tok/s")
    print(f"batched ({args.batch_size:>3})        : {batched_s:7.2f} s  "
          f"{count_tokens(sampler.tokenizer, batched) / batched_s:8.1f} tok/s")
    print(f"ratio batched / single: {single_s / batched_s:.2f}x  "
          f"(same completions: {sum(a == b for a, b in zip(single, batched, strict=True))}/{len(single)})")
    if not args.vllm:
        return
    # --- vLLM: runs only where vllm and CUDA exist -----------------------------------------
    if not vllm_ready():
        print("vllm: skipped (needs pip install 'ex2[vllm]' and a CUDA GPU)")
        return
    del sampler
    torch.cuda.empty_cache()
    engine = load_sampler("vllm", args.llm, args.adapter, settings)
    timed(engine, prompt_ids[:2], seeds[:2], 2)  # warm-up
    vllm_s, vllm_raws = timed(engine, prompt_ids, seeds, len(prompt_ids))
    print(f"vllm (all at once)   : {vllm_s:7.2f} s  {count_tokens(engine.tokenizer, vllm_raws) / vllm_s:8.1f} tok/s")
    print(f"ratio vllm / single  : {single_s / vllm_s:.2f}x")


if __name__ == "__main__":
    main()
