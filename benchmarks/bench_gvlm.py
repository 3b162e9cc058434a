"""Likelihood scoring of class names with a generative VLM: the prompt's KV cache shared by all
classes against one full forward (image + prompt + class name) per class, as in Zhang et al.'s code.

    python benchmarks/bench_gvlm.py                                   # tiny random LLaVA, CPU
    python benchmarks/bench_gvlm.py --hidden 128 --layers 4 --image-size 64 --classes 50

The model is built at random in a temporary folder (nothing is downloaded); the scores are
checked to agree before the times are compared.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import PIL.Image
import torch

from ex2.gvlm import load_gvlm
from ex2.gvlm.backend import join_continuation
from ex2.gvlm.testing import build_tiny_llava

CLASSES = ["cat", "espresso", "rocket", "tripod", "motorcycle", "helmet", "temple", "dahlia", "golden retriever",
           "red-winged blackbird", "Boeing 737-800", "fire truck", "strawberry ice cream", "sunflower"]


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64, help="with patch 8: (size/8)^2 image tokens")
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="candidates per cached forward")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as folder:
        build_tiny_llava(folder, hidden=args.hidden, layers=args.layers, image_size=args.image_size)
        vlm = load_gvlm(f"gen:local-dir:{folder}", device="cpu")
        rng = np.random.default_rng(0)
        images = [PIL.Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)) for _ in range(args.images)]
        names = [CLASSES[i % len(CLASSES)] + ("" if i < len(CLASSES) else f" {i}") for i in range(args.classes)]
        prompt = vlm.prompt("What type of object is in this photo?", answer_prefix="This is a photo of a")
        continuations = [join_continuation(prompt, n) for n in names]

        def cached() -> torch.Tensor:
            return vlm.score_continuations(images, prompt, continuations, "sum", args.batch_size)

        def per_class() -> torch.Tensor:
            return torch.stack([torch.stack([vlm.full_logprobs(im, prompt, c).sum() for c in continuations])
                                for im in images])

        difference = (cached() - per_class()).abs().max().item()
        assert difference < 1e-3, f"the two scorings disagree by {difference}"
        prefix_tokens = vlm.prefix(images[0], prompt).length
        t_cached, t_full = best_of(cached, args.repeats), best_of(per_class, args.repeats)
    print(f"{args.images} images x {args.classes} classes, prompt {prefix_tokens} tokens "
          f"(hidden {args.hidden}, {args.layers} layers, CPU, {torch.get_num_threads()} threads); "
          f"max score difference {difference:.1e}")
    print(f"  shared prefix cache : {t_cached * 1000:8.1f} ms")
    print(f"  full forward / class: {t_full * 1000:8.1f} ms")
    print(f"  ratio               : {t_full / t_cached:8.2f}x faster with the shared cache")


if __name__ == "__main__":
    main()
