"""Where ``embed_images``' first pass spends its time, against the bare image encoder.

    python benchmarks/bench_image_loop.py                                  # conse on the samples, CPU
    python benchmarks/bench_image_loop.py /data/val --vlm ViT-B-32:/path/to/checkpoint.pt --images 320

One process, no cache. Per image: decoding alone (``load_image``), preprocessing on this process's
torch threads and on one thread (what a DataLoader worker uses), and the forward pass on tensors
already preprocessed (the bare encoder). Then, in alternated rounds (the best of ``--rounds``),
the bare encoder against ``embed_images`` decoding in this process (``workers=0``) and with its
default decoding workers, each as a share of the bare encoder's throughput (target >= 0.9).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def image_files(folder: str | None, limit: int) -> list[Path]:
    """The first ``limit`` images under ``folder`` (sorted), or the samples' images repeated."""
    if folder is None:
        from ex2.data import load_dataset

        paths = [path for path, _ in load_dataset("samples").items]
    else:
        paths = sorted(p for p in Path(folder).expanduser().rglob("*") if p.suffix.lower() in SUFFIXES)
        if not paths:
            raise SystemExit(f"no images ({', '.join(sorted(SUFFIXES))}) under {folder}")
    return [paths[i % len(paths)] for i in range(limit)]


def per_image_ms(fn, items: list) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="folder of images (default: the samples dataset, repeated)")
    parser.add_argument("--vlm", default="conse")
    parser.add_argument("--device", default=None)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from ex2.data import load_image
    from ex2.vlm import embed_images, load_vlm

    vlm = load_vlm(args.vlm, args.device)
    paths = image_files(args.folder, args.images)
    sample = paths[: min(64, len(paths))]
    pictures = [load_image(p) for p in sample]
    decode = per_image_ms(load_image, sample)
    threads = torch.get_num_threads()
    preprocess = per_image_ms(vlm.preprocess, pictures)
    torch.set_num_threads(1)
    preprocess_one = per_image_ms(vlm.preprocess, pictures)
    torch.set_num_threads(threads)
    pixels = torch.stack([vlm.preprocess(load_image(p)) for p in paths])

    def bare() -> None:
        for start in range(0, len(pixels), args.batch_size):
            vlm.encode_images(pixels[start : start + args.batch_size])

    steps = {
        "bare encoder": bare,
        "embed_images, decoding in process": lambda: embed_images(
            vlm, paths, cache=False, batch_size=args.batch_size, progress=False, workers=0),
        "embed_images, decoding workers": lambda: embed_images(
            vlm, paths, cache=False, batch_size=args.batch_size, progress=False),
    }
    bare()  # warm-up
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    forward = best["bare encoder"] / len(paths) * 1000
    print(f"{vlm.identity} on {len(paths)} images, device {vlm.device}, {threads} torch threads, "
          f"batch {args.batch_size}, best of {args.rounds} rounds")
    print(f"  per image: decode {decode:.1f} ms, preprocess {preprocess:.1f} ms on {threads} threads / "
          f"{preprocess_one:.1f} ms on 1 thread, forward {forward:.1f} ms")
    for name, seconds in best.items():
        print(f"  {name:<36} {len(paths) / seconds:8.1f} img/s  {best['bare encoder'] / seconds:5.2f} x bare")


if __name__ == "__main__":
    main()
