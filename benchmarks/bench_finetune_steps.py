"""Optimizer steps per second of ``ex2 finetune`` on a random-init open_clip model, full and LoRA.

    python benchmarks/bench_finetune_steps.py                                  # ViT-B-16, bf16, batch 256 (a GPU)
    python benchmarks/bench_finetune_steps.py --method lora --batch-size 128
    python benchmarks/bench_finetune_steps.py --arch ViT-B-32 --batch-size 8 --steps 2 --warmup 1 \
        --device cpu --precision fp32 --num-workers 0                         # the script itself, on a CPU

For each method it saves a random-init ``--arch`` checkpoint (seed 0), writes a synthetic grounding
set (coloured shapes with boxes and descriptions, ``ex2.finetune.data.synthetic_grounding``) of
``--batch-size`` images per step, and runs the real ``ex2 finetune`` twice in this process: for
``--warmup`` steps and for ``--warmup + --steps``. The difference of the two wall times over
``--steps`` is the time of a step with loading, compilation of kernels, the first steps and saving
the model taken out. The objective is GRAIN's (image–caption contrast, region decoder, box and
region–description losses), with ``--decoder`` GRAIN's region decoder (default) or ours.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def checkpoint(arch: str, folder: Path) -> str:
    """A random-init ``arch`` checkpoint (seed 0) as an ex2 VLM name."""
    import open_clip

    path = folder / f"{arch}-random.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model(arch).state_dict(), path)
    return f"{arch}:{path}"


def finetune_seconds(args, vlm: str, annotations: Path, method: str, steps: int, output: Path) -> float:
    """Wall seconds of one ``ex2 finetune`` run of ``steps`` optimizer steps."""
    from ex2.finetune.stage import FinetuneConfig, run

    config = FinetuneConfig(
        output=str(output), objective="grain", vlm=vlm, annotations=str(annotations), method=method,
        batch_size=args.batch_size, max_steps=steps, save_steps=steps + 1, log_steps=max(1, steps),
        device=args.device, precision=args.precision, num_workers=args.num_workers, lr_schedule="constant",
        decoder=args.decoder,
    )
    start = time.perf_counter()
    run(config)
    if args.device == "cuda" or (args.device is None and torch.cuda.is_available()):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (random init)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per step")
    parser.add_argument("--steps", type=int, default=20, help="steps timed")
    parser.add_argument("--warmup", type=int, default=3, help="steps of the run the timed one is measured against")
    parser.add_argument("--method", choices=("full", "lora", "both"), default="both")
    parser.add_argument("--precision", default="bf16", help="ex2 finetune --precision")
    parser.add_argument("--decoder", choices=("grain", "ex2"), default="grain", help="ex2 finetune --decoder")
    parser.add_argument("--device", default=None, help="ex2 finetune --device (default: accelerate's choice)")
    parser.add_argument("--num-workers", type=int, default=8, help="image loader workers")
    parser.add_argument("--image-size", type=int, default=224, help="side of the synthetic images")
    args = parser.parse_args()
    methods = ("full", "lora") if args.method == "both" else (args.method,)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from ex2.finetune.data import synthetic_grounding

        annotations = synthetic_grounding(root / "grounding", n=args.batch_size * 2, size=args.image_size)
        vlm = checkpoint(args.arch, root)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
        print(f"ex2 finetune --objective grain --decoder {args.decoder}, {args.arch} random init, batch {args.batch_size}, "
              f"{args.precision}, on {device}")
        results = {}
        for method in methods:
            short = finetune_seconds(args, vlm, annotations, method, args.warmup, root / f"{method}-short")
            long = finetune_seconds(args, vlm, annotations, method, args.warmup + args.steps, root / f"{method}-long")
            per_step = (long - short) / args.steps
            results[method] = {"seconds_per_step": per_step, "steps_per_second": 1 / per_step,
                               "images_per_second": args.batch_size / per_step}
            print(f"{method:>5}: {1 / per_step:.2f} steps/s, {args.batch_size / per_step:.0f} images/s "
                  f"({args.steps} steps timed: {long:.1f} s - {short:.1f} s)")
        if len(results) == 2:
            print(f"lora/full steps/s: {results['lora']['steps_per_second'] / results['full']['steps_per_second']:.2f}x")
        print(json.dumps(results))


if __name__ == "__main__":
    main()
