"""Description-based accuracy on held-out views of ``samples`` before and after ``ex2 finetune``.

    python analysis/finetune_before_after.py                  # tiny random-init open_clip model, CPU
    python analysis/finetune_before_after.py --vlm ViT-B-32:openai --steps 300 --device cuda

Views 00-06 of each of the 8 ``samples`` concepts train (``--objective desc``), views 07-09 are
held out (a CSV manifest with a split column). The descriptions are ``--descriptions FILE`` or a
small hand-written set of visual descriptions per concept. Accuracy is ``ex2 classify`` on the
held-out views with ``--method ex2`` (mean score over a class's descriptions) and, to see whether
zero-shot by name is kept, ``--method clip``. Without ``--vlm`` the model is a random-init open_clip
model of the tests' size: the numbers then show the machinery works, not a finding.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

DESCRIPTIONS = {
    "cat": ["a tabby cat with striped orange fur", "a cat with green eyes and long whiskers",
            "a small furry animal with pointed ears"],
    "espresso": ["a small cup of espresso with crema", "a white ceramic cup on a saucer", "dark coffee seen from above"],
    "rocket": ["a tall white rocket on a launch pad", "a rocket with boosters pointing at the sky",
               "a launch vehicle standing upright"],
    "tripod": ["a camera standing on a three-legged tripod", "a man in a dark coat behind a camera",
               "a black and white photo of a photographer"],
    "motorcycle": ["a red motorcycle with two wheels", "a motorbike seen from the side", "a chrome engine and exhaust"],
    "helmet": ["a white space helmet", "a helmet with a reflective visor", "an astronaut's suit and helmet"],
    "temple": ["a traditional Chinese temple roof", "a pagoda with curved eaves", "an old building among trees"],
    "dahlia": ["a pink flower with many petals", "a flower with a yellow centre", "a blossom close up"],
}
TRAIN_VIEWS = 7  # views 00..06 train, the rest are held out
TINY = {  # the tests' tiny open_clip model (tests/conftest.py)
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_manifest(folder: Path) -> Path:
    """``samples`` as a CSV manifest: the first views of each concept train, the others test."""
    from ex2.data import load_dataset

    dataset = load_dataset("samples")
    path = folder / "samples_split.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for image, label in dataset.items:
            split = "train" if int(Path(image).stem) < TRAIN_VIEWS else "test"
            writer.writerow([str(image), dataset.classnames[label], split])
    return path


def write_descriptions(folder: Path) -> Path:
    from ex2.core.io import write_jsonl

    records = [{"concept": c, "description": d, "category": "visual"} for c, texts in DESCRIPTIONS.items()
               for d in texts]
    return write_jsonl(folder / "descriptions.jsonl", records)


def tiny_open_clip(folder: Path, seed: int = 0) -> Path:
    """A random-init open_clip ``local-dir`` folder of the tests' size."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    return folder


def accuracy(vlm: str, manifest: Path, descriptions: Path, out: Path, method: str, device: str | None) -> float:
    """Top-1 on the held-out views."""
    from ex2.classify.stage import ClassifyConfig, run

    config = ClassifyConfig(vlm=vlm, dataset="csv", data_root=str(manifest), split="test", method=method,
                            descriptions=str(descriptions) if method == "ex2" else None, device=device,
                            output=str(out), cache=False)
    run(config)
    return json.loads((out / "metrics.json").read_text())["acc1"]


def measure(folder: Path, vlm: str | None = None, descriptions: Path | None = None, steps: int = 100,
            method: str = "full", learning_rate: float = 1e-3, batch_size: int = 16, device: str | None = None) -> dict:
    """Held-out accuracy (ex2: descriptions, clip: class names) before and after fine-tuning."""
    from ex2.finetune.stage import FinetuneConfig, run

    manifest = write_manifest(folder)
    descriptions = descriptions or write_descriptions(folder)
    vlm = vlm or str(tiny_open_clip(folder / "base"))
    config = FinetuneConfig(output=str(folder / "ft"), vlm=vlm, dataset="csv", data_root=str(manifest), split="train",
                            descriptions=str(descriptions), objective="desc", method=method, max_steps=steps,
                            batch_size=batch_size, learning_rate=learning_rate, save_steps=steps,
                            log_steps=max(1, steps // 10), device=device)
    run(config)
    tuned = str(folder / "ft" / "model")
    result = {"steps": steps, "method": method, "train_images": 8 * TRAIN_VIEWS, "held_out_images": 8 * (10 - TRAIN_VIEWS)}
    for kind in ("ex2", "clip"):
        result[f"{kind}_before"] = accuracy(vlm, manifest, descriptions, folder / f"{kind}-before", kind, device)
        result[f"{kind}_after"] = accuracy(tuned, manifest, descriptions, folder / f"{kind}-after", kind, device)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", help="base VLM (default: a tiny random-init open_clip model)")
    parser.add_argument("--descriptions", type=Path, help="descriptions of the 8 samples concepts (JSONL or JSON)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--device")
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.work_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        result = measure(folder, args.vlm, args.descriptions, args.steps, args.method, args.learning_rate,
                         device=args.device)
    print(f"held-out views of samples ({result['held_out_images']} images, 8 classes, chance 12.5 %), "
          f"after {result['steps']} steps of --objective desc ({result['method']}):")
    for kind, label in (("ex2", "descriptions (--method ex2)"), ("clip", "class names (--method clip)")):
        print(f"  {label:<30} top-1 {100 * result[f'{kind}_before']:5.1f} % -> {100 * result[f'{kind}_after']:5.1f} %")
    return result


if __name__ == "__main__":
    main()
