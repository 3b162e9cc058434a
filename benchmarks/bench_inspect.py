"""Descriptions judged per second: the embedded judge, and the openai judge at concurrency 1 vs 8.

    .venv/bin/python benchmarks/bench_inspect.py                       # embedded + transformers serve/smollm2
    .venv/bin/python benchmarks/bench_inspect.py --skip-server         # embedded only
    .venv/bin/python benchmarks/bench_inspect.py --base-url http://127.0.0.1:8000/v1 --model NAME   # your server

The openai judge runs against ``transformers serve`` on loopback (started here, stopped after) unless
``--base-url`` names a running server. Descriptions come from the labelled set, so every mode judges
the same texts; ratios are against the concurrency-1 run (and the embedded judge) of this same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ex2.core.io import read_jsonl
from ex2.inspect.categorize import EmbeddedJudge, labelled_path
from ex2.inspect.judges import OpenAIJudge

TESTS = Path(__file__).resolve().parents[1] / "tests"  # holds serving.py, the loopback server


def pairs(n: int) -> list[tuple[str, str]]:
    records = read_jsonl(labelled_path())
    return [(r["concept"], r["description"]) for r in (records * (n // len(records) + 1))[:n]]


def embedded_rate(n: int) -> float:
    judge = EmbeddedJudge()
    work = pairs(n)
    judge.judge_batch(work[:8])  # warm up
    start = time.perf_counter()
    judge.judge_batch(work)
    return n / (time.perf_counter() - start)


def openai_rate(base_url: str, model: str, n: int, concurrency: int, max_tokens: int) -> float:
    judge = OpenAIJudge(model, base_url=base_url, api_key="EMPTY", max_retries=0, max_tokens=max_tokens,
                        timeout=120.0)  # a CPU server under load answers slowly
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda pair: judge.judge(*pair), pairs(n)))
    return n / (time.perf_counter() - start)


def openai_rates(args) -> dict[int, float]:
    run = lambda url: {c: openai_rate(url, args.model, args.n_openai, c, args.max_tokens) for c in (1, 8)}  # noqa: E731
    if args.base_url:
        return run(args.base_url)
    from ex2.llm.models import resolve_llm

    sys.path.insert(0, str(TESTS))
    from serving import local_server

    args.model = resolve_llm("smollm2")
    with tempfile.TemporaryDirectory() as tmp, local_server(args.model, Path(tmp) / "server.log") as url:
        openai_rate(url, args.model, 1, 1, args.max_tokens)  # warm up
        return run(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-embedded", type=int, default=500)
    parser.add_argument("--n-openai", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--base-url", default="")
    parser.add_argument("--model", default="")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    embedded = embedded_rate(args.n_embedded)
    print(f"embedded judge:        {embedded:8.1f} descriptions/s  ({args.n_embedded} descriptions)")
    if args.skip_server:
        return
    rates = openai_rates(args)
    for concurrency, rate in rates.items():
        print(f"openai, concurrency {concurrency}: {rate:8.2f} descriptions/s  ({args.n_openai} descriptions)")
    print(f"ratio concurrency 8 / 1:   {rates[8] / rates[1]:.2f}x")
    print(f"ratio embedded / openai@8: {embedded / rates[8]:.1f}x")


if __name__ == "__main__":
    main()
