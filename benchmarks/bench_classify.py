"""How much the image-embedding cache buys ``ex2 classify``, against the bare image encoder.

    python benchmarks/bench_classify.py                       # conse on 4 copies of the samples, CPU
    python benchmarks/bench_classify.py --vlm ViT-L-14:openai --dataset cub --data-root DIR --device cuda

Three fresh processes, each loading the VLM first (load time is not counted):

    bare     load, preprocess and encode every image in batches: no cache, no texts, no scoring
    first    ``ex2.classify.stage.run`` with an empty embedding cache (encodes and caches every image)
    second   ``ex2.classify.stage.run`` again, reading the cache

and prints two ratios: the first run's throughput as a share of the bare encoder's (target
>= 0.9), and how many times faster the second run is than the first (target >= 20).
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


def bare(vlm, paths: list[Path], batch_size: int) -> float:
    """Seconds to load, preprocess and encode ``paths`` with nothing else (images decoded by the
    same number of threads as ``embed_images`` uses)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from ex2.data import load_image

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for i in range(0, len(paths), batch_size):
            pixels = list(pool.map(lambda p: vlm.preprocess(load_image(p)), paths[i : i + batch_size]))
            vlm.encode_images(torch.stack(pixels))
    return time.perf_counter() - start


def copied_folder(dataset, copies: int, root: Path) -> Path:
    """An ImageFolder holding ``copies`` hard links (or copies) of every image, each its own file."""
    import shutil

    for path, label in dataset.items:
        folder = root / dataset.classnames[label]
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            target = folder / f"{path.stem}-{k}{path.suffix}"
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
    return root


def worker(args: argparse.Namespace) -> None:
    """Load the VLM and dataset with the user's cache, then time one step against ``args.cache``."""
    from ex2.classify import stage as classify
    from ex2.data import load_dataset
    from ex2.vlm import load_vlm

    dataset = load_dataset(args.dataset, args.data_root, args.split)
    vlm = load_vlm(args.vlm, args.device)
    os.environ["EX2_CACHE"] = args.cache  # image embeddings only go to the benchmark's cache
    if args.worker == "bare":
        seconds = bare(vlm, [p for p, _ in dataset.items], args.batch_size)
    else:
        config = classify.ClassifyConfig(dataset=args.dataset, data_root=args.data_root, split=args.split, vlm=args.vlm,
                                 device=args.device, method=args.method, batch_size=args.batch_size,
                                 progress=False, output=str(Path(args.cache) / f"run-{args.worker}"))
        start = time.perf_counter()
        classify.run(config, vlm=vlm, dataset=dataset)
        seconds = time.perf_counter() - start
    print(json.dumps({"step": args.worker, "seconds": seconds, "images": len(dataset)}))


def timed(step: str, argv: list[str], cache: str) -> dict:
    command = [sys.executable, __file__, *argv, "--worker", step, "--cache", cache]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{step} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", default="conse")
    parser.add_argument("--dataset", default="samples")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--split", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--method", default="clip")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--copies", type=int, default=4,
                        help="run on an ImageFolder of this many copies of every image (1: the dataset itself)")
    parser.add_argument("--worker", choices=("bare", "first", "second"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="ex2-bench-") as cache:
        argv = [a for a in sys.argv[1:]]
        if args.copies > 1:
            from ex2.data import load_dataset

            folder = copied_folder(load_dataset(args.dataset, args.data_root, args.split), args.copies,
                                   Path(cache) / "images")
            argv += ["--dataset", "imagefolder", "--data-root", str(folder), "--split", "test"]
        results = {step: timed(step, argv, cache) for step in ("bare", "first", "second")}
    n = results["bare"]["images"]
    b, f, s = (results[k]["seconds"] for k in ("bare", "first", "second"))
    copies = f", {args.copies} copies of each image" if args.copies > 1 else ""
    print(f"{args.vlm} on {args.dataset} ({n} images{copies}), model load excluded")
    print(f"  bare encoder   {b:8.2f} s  {n / b:8.1f} img/s")
    print(f"  first run      {f:8.2f} s  {n / f:8.1f} img/s  (empty cache)")
    print(f"  second run     {s:8.2f} s  {n / s:8.1f} img/s  (cached)")
    print(f"first-run throughput / bare encoder: {b / f:.2f}  (target >= 0.90)")
    print(f"second run speed-up over the first:  {f / s:.1f}x  (target >= 20)")


if __name__ == "__main__":
    main()
