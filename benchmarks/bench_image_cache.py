"""How much faster a second pass over the same images is, thanks to the on-disk embedding cache.

    python benchmarks/bench_image_cache.py                      # conse on the embedded samples, CPU
    python benchmarks/bench_image_cache.py /data/photos --vlm ViT-B-32:openai --device cuda

One process, an empty temporary cache: ``embed_images`` over every image in the folder (cold:
decode, preprocess, forward, write shards), then again (cached: read the shards back; the
in-process index is dropped first, as in a fresh process). Prints both times and their ratio;
the model load is timed apart and not counted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(folder: str | None) -> list[Path]:
    """Every image under ``folder`` (sorted), or the samples dataset's images."""
    if folder is None:
        from ex2.data import load_dataset

        return [path for path, _ in load_dataset("samples").items]
    files = sorted(p for p in Path(folder).expanduser().rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        raise SystemExit(f"no images ({', '.join(sorted(SUFFIXES))}) under {folder}")
    return files


def timed_pass(vlm, paths: list[Path], batch_size: int) -> tuple[float, int]:
    from ex2.vlm import embed_images

    start = time.perf_counter()
    result = embed_images(vlm, paths, batch_size=batch_size, progress=False)
    return time.perf_counter() - start, len(result.paths)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="folder of images (default: the samples dataset)")
    parser.add_argument("--vlm", default="conse")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    paths = image_files(args.folder)  # before the cache moves: samples materialise in the user's cache

    from ex2.vlm import load_vlm
    from ex2.vlm.cache import EmbeddingCache

    start = time.perf_counter()
    vlm = load_vlm(args.vlm, args.device)
    load = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="ex2-bench-cache-") as cache:
        os.environ["EX2_CACHE"] = cache
        cold, n = timed_pass(vlm, paths, args.batch_size)
        EmbeddingCache._indexes.clear()  # read the shards back from disk, as a new process would
        EmbeddingCache._seen.clear()
        warm, _ = timed_pass(vlm, paths, args.batch_size)
    print(f"{vlm.identity} on {n} images ({len(paths) - n} unreadable), device {vlm.device}")
    print(f"  model load     {load:8.2f} s  (not counted)")
    print(f"  cold pass      {cold:8.2f} s  {n / cold:8.1f} img/s  (empty cache)")
    print(f"  cached pass    {warm:8.2f} s  {n / warm:8.1f} img/s")
    print(f"cached pass speed-up over cold: {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
