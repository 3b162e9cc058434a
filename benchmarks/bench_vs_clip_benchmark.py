"""``ex2 classify`` against CLIP_benchmark 1.6.2: same checkpoint, same ImageFolder, fp32 on CPU.

    pip install --no-deps clip-benchmark==1.6.2     # for this script only; not a dependency of ex2
    python benchmarks/bench_vs_clip_benchmark.py                         # 800 images, 1 repeat
    python benchmarks/bench_vs_clip_benchmark.py --images 160 --repeats 2 --workdir /tmp/vs-cb

The script builds a random-init open_clip ViT-B-32 checkpoint (seed 0) and an ImageFolder of
``--images`` 256-pixel JPEG views of ex2's sample photos (``val/<class>/``, 8 classes), then runs
each tool in fresh processes as a user would, with its own defaults otherwise:

    clip_benchmark eval --dataset imagenet1k-unverified --dataset_root ROOT --no_amp
        --custom_classname_file CLASSES.json --custom_template_file TEMPLATES.json ...
    ex2 classify --dataset imagefolder --data-root ROOT --split val --precision fp32 --templates clip|clip_80 ...

for one template ("a photo of a {}.") and for open_clip's 80 ImageNet templates. Each repeat runs
two pairs per template set, in an order that alternates from repeat to repeat:

    first   CLIP_benchmark  |  ex2 on an empty cache (it embeds and caches the images and texts)
    warm    CLIP_benchmark  |  ex2 again on that cache

Every run's logits are checked against its pair's (top-1 and top-5 on every image, largest logit
difference), and the script prints each pair's wall-time ratio, each tool's images/s in its image
loop, and that as a share of the bare ``encode_image`` throughput (at the tool's batch size, on
tensors already preprocessed) measured in a fresh process just before the pair.

CLIP_benchmark runs with two stand-ins set up in its process: its ``accuracy()`` calls ``float()``
on a one-element array, which NumPy >= 2.4 refuses (an equivalent function replaces it), and its
captioning task, which classification never uses, needs pycocoevalcap, which ``--no-deps`` leaves
out (an empty module stands in for it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCH = "ViT-B-32"
DATASET = "imagenet1k-unverified"  # CLIP_benchmark's name for a local ImageFolder with a val/ split
TEMPLATE_SETS = {1: "clip", 80: "clip_80"}  # template count -> ex2's template set (open_clip's texts)
BATCH = {"ex2": 32, "clip_benchmark": 64}  # each tool's default batch size
INSTALL_HINT = "pip install --no-deps clip-benchmark==1.6.2"


# --- inputs --------------------------------------------------------------------------------------


def build_inputs(root: Path, n_images: int) -> dict:
    """Checkpoint, ImageFolder and the class-name and template files CLIP_benchmark reads (reused
    when ``root`` already holds them for the same number of images)."""
    root.mkdir(parents=True, exist_ok=True)
    checkpoint = root / f"{ARCH}-random.pt"
    if not checkpoint.is_file():
        import open_clip
        import torch

        torch.manual_seed(0)
        torch.save(open_clip.create_model(ARCH).state_dict(), checkpoint)
    images = root / f"images-{n_images}"
    if not images.is_dir():
        _write_views(images, n_images)
    classes = sorted(d.name for d in (images / "val").iterdir())
    (root / "classnames.json").write_text(json.dumps({DATASET: classes}))
    for count, name in TEMPLATE_SETS.items():
        from ex2.data import load_templates

        templates = [t.replace("{}", "{c}") for t in load_templates(name)]
        assert len(templates) == count, (name, len(templates))
        (root / f"templates-{count}.json").write_text(json.dumps({DATASET: templates}))
    return {"checkpoint": checkpoint, "images": images, "classes": root / "classnames.json", "root": root}


def _write_views(folder: Path, n_images: int) -> None:
    """``n_images`` seeded augmented views of the sample photos, spread over the 8 classes."""
    from ex2.core.io import materialise
    from ex2.data.samples import SAMPLE_CONCEPTS, augmented_view

    def build(tmp: Path) -> None:
        concepts = list(SAMPLE_CONCEPTS.items())
        for concept_id, (name, photo) in enumerate(concepts):
            (tmp / "val" / name).mkdir(parents=True)
            source = photo()
            for view in range(concept_id, n_images, len(concepts)):
                augmented_view(source, concept_id, view).save(tmp / "val" / name / f"{view:04d}.jpg", quality=90)

    materialise(folder, build)


# --- one run of a tool, in its own process ------------------------------------------------------


def _timed(fn, timings: dict, key: str):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - start

    return timed


def _record(path: Path, logits, paths: list[str], classes: list[str], timings: dict) -> None:
    data = {"logits": logits.float().tolist(), "paths": [os.path.realpath(p) for p in paths],
            "classes": list(classes), "seconds": timings}
    path.write_text(json.dumps(data))


def _accuracy(output, target, topk=(1,)):
    """Top-k accuracy as CLIP_benchmark's ``accuracy()`` computes it, without ``float()`` on an array."""
    top = output.topk(max(topk), 1).indices
    hit = top == target.view(-1, 1)
    return [hit[:, :k].any(1).float().sum().item() / len(target) for k in topk]


def child_clip_benchmark(record: Path, argv: list[str]) -> None:
    import types

    sys.modules["clip_benchmark.metrics.captioning"] = types.ModuleType("clip_benchmark.metrics.captioning")
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification as zc

    timings: dict = {}
    zc.accuracy = _accuracy
    zc.zero_shot_classifier = _timed(zc.zero_shot_classifier, timings, "texts")
    run_classification = zc.run_classification

    def recorded(model, classifier, dataloader, *args, **kwargs):
        start = time.perf_counter()
        logits, target = run_classification(model, classifier, dataloader, *args, **kwargs)
        timings["images"] = time.perf_counter() - start  # its image loop: decoding, forward, scoring
        _record(record, logits, [p for p, _ in dataloader.dataset.samples], dataloader.dataset.classes, timings)
        return logits, target

    zc.run_classification = recorded
    sys.argv = ["clip_benchmark", *argv]
    cli.main()


def child_ex2(record: Path, argv: list[str]) -> None:
    from ex2.classify import common
    from ex2.cli import main

    timings: dict = {}
    common.embed_images = _timed(common.embed_images, timings, "images")  # its image loop, or the cache
    common.embed_texts = _timed(common.embed_texts, timings, "texts")
    evaluate, logits = common.evaluate, []
    common.evaluate = _keep_first(evaluate, logits)
    if main(argv):
        sys.exit(1)
    out = Path(argv[argv.index("--output") + 1])
    with (out / "predictions.csv").open(newline="") as handle:  # rows in the order of the logits
        paths = [row["path"] for row in csv.DictReader(handle)]
    classes = list(json.loads((out / "class_texts.json").read_text()))
    _record(record, logits[0], paths, classes, timings)


def _keep_first(evaluate, logits: list):
    def recorded(*args, **kwargs):
        results = evaluate(*args, **kwargs)
        logits.append(results[0].logits)
        return results

    return recorded


def child_bare(record: Path, argv: list[str]) -> None:
    """``encode_image`` alone, on preprocessed tensors, at each tool's batch size (img/s)."""
    import open_clip
    import PIL.Image
    import torch

    checkpoint, folder, limit = argv[0], Path(argv[1]), int(argv[2])
    model, _, transform = open_clip.create_model_and_transforms(ARCH, pretrained=checkpoint)
    model.eval()
    paths = sorted(folder.rglob("*.jpg"))[:limit]
    pixels = torch.stack([transform(PIL.Image.open(p).convert("RGB")) for p in paths])
    speed = {}
    with torch.inference_mode():
        for tool, batch in BATCH.items():
            model.encode_image(pixels[:batch])  # warm-up
            start = time.perf_counter()
            for i in range(0, len(pixels), batch):
                model.encode_image(pixels[i : i + batch])
            speed[tool] = len(pixels) / (time.perf_counter() - start)
    record.write_text(json.dumps(speed))


CHILDREN = {"clip_benchmark": child_clip_benchmark, "ex2": child_ex2, "bare": child_bare}


# --- the pairs -----------------------------------------------------------------------------------


def run_child(kind: str, argv: list[str], work: Path, env: dict | None = None) -> tuple[float, dict]:
    """(wall seconds of the whole process, what it recorded)."""
    handle, name = tempfile.mkstemp(dir=work, suffix=".json")
    os.close(handle)
    record = Path(name)
    command = [sys.executable, __file__, "--child", kind, "--record", str(record), "--", *argv]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{kind} failed: {' '.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return wall, json.loads(record.read_text())


def clip_benchmark_argv(inputs: dict, count: int, out: Path) -> list[str]:
    return ["eval", "--dataset", DATASET, "--dataset_root", str(inputs["images"]), "--task", "zeroshot_classification",
            "--model", ARCH, "--pretrained", str(inputs["checkpoint"]), "--no_amp", "--quiet",
            "--custom_classname_file", str(inputs["classes"]),
            "--custom_template_file", str(inputs["root"] / f"templates-{count}.json"), "--output", str(out)]


def ex2_argv(inputs: dict, count: int, out: Path) -> list[str]:
    return ["classify", "--dataset", "imagefolder", "--data-root", str(inputs["images"]), "--split", "val",
            "--vlm", f"{ARCH}:{inputs['checkpoint']}", "--device", "cpu", "--precision", "fp32",
            "--templates", TEMPLATE_SETS[count], "--no-progress", "--output", str(out)]


def agreement(a: dict, b: dict) -> dict:
    """Top-1 and top-5 matches and the largest logit difference, rows matched by path and
    columns by class name."""
    import torch

    row = {p: i for i, p in enumerate(b["paths"])}
    col = [b["classes"].index(c) for c in a["classes"]]
    la = torch.tensor(a["logits"], dtype=torch.float64)
    lb = torch.tensor(b["logits"], dtype=torch.float64)[[row[p] for p in a["paths"]]][:, col]
    k = min(5, la.shape[1])
    top5 = (la.topk(k, 1).indices.sort(1).values == lb.topk(k, 1).indices.sort(1).values).all(1)
    return {"n": len(la), "top1": int((la.argmax(1) == lb.argmax(1)).sum()), "top5": int(top5.sum()),
            "max_diff": float((la - lb).abs().max())}


def one_repeat(inputs: dict, repeat: int, work: Path, bare_images: int) -> list[dict]:
    """Both pairs for each template set, each right after a bare-encoder measurement; the order
    within a pair alternates between repeats."""
    rows = []
    for count in TEMPLATE_SETS:
        cache = {"EX2_CACHE": str(work / f"cache-{repeat}-{count}")}  # empty for the first run
        for step in ("first", "warm"):
            bare = run_child("bare", [str(inputs["checkpoint"]), str(inputs["images"]), str(bare_images)], work)[1]
            runs = {}
            order = ["clip_benchmark", "ex2"] if (repeat + (step == "warm")) % 2 == 0 else ["ex2", "clip_benchmark"]
            for tool in order:
                out = work / f"{tool}-{repeat}-{count}-{step}"
                if tool == "ex2":
                    runs[tool] = run_child(tool, ex2_argv(inputs, count, out), work, cache)
                else:
                    runs[tool] = run_child(tool, clip_benchmark_argv(inputs, count, out.with_suffix(".json")), work)
            (cb_wall, cb), (ex_wall, ex) = runs["clip_benchmark"], runs["ex2"]
            rows.append({"templates": count, "step": step, "order": order, "bare": bare,
                         "wall": {"clip_benchmark": cb_wall, "ex2": ex_wall},
                         "seconds": {"clip_benchmark": cb["seconds"], "ex2": ex["seconds"]}, "agreement": agreement(ex, cb)})
            print(f"  repeat {repeat + 1}, {count} template(s), {step}: CLIP_benchmark {cb_wall:.1f} s, "
                  f"ex2 {ex_wall:.1f} s", flush=True)
    return rows


# --- report --------------------------------------------------------------------------------------


def report(rows: list[dict], n: int, repeats: int) -> None:
    def median(values) -> float:
        return statistics.median(list(values))

    print(f"\nex2 classify vs CLIP_benchmark 1.6.2: {ARCH} random init, fp32 on CPU ({os.cpu_count()} cores), "
          f"{n} images, {repeats} repeat(s); medians over repeats. loop: images/s in the tool's image loop "
          "(x: its share of the bare encode_image at the tool's batch size, measured just before the pair)")
    print(f"{'templates':>9} {'run':>5} {'CB wall':>9} {'ex2 wall':>9} {'ex2/CB':>7} {'CB/ex2':>7} "
          f"{'CB loop':>15} {'ex2 loop':>15} {'bare 32/64':>11} {'texts CB/ex2':>13}")
    for count in TEMPLATE_SETS:
        for step in ("first", "warm"):
            mine = [r for r in rows if r["templates"] == count and r["step"] == step]
            wall = {tool: median(r["wall"][tool] for r in mine) for tool in BATCH}
            ratio = median(r["wall"]["ex2"] / r["wall"]["clip_benchmark"] for r in mine)
            loop = {tool: median(n / r["seconds"][tool]["images"] for r in mine) for tool in BATCH}
            share = {tool: median(n / r["seconds"][tool]["images"] / r["bare"][tool] for r in mine) for tool in BATCH}
            bare = {tool: median(r["bare"][tool] for r in mine) for tool in BATCH}
            texts = {tool: median(r["seconds"][tool].get("texts", 0.0) for r in mine) for tool in BATCH}
            shown = {t: f"{loop[t]:.1f}/s ({share[t]:.2f}x)" if share[t] < 10 else f"{loop[t]:.0f}/s (cache)" for t in BATCH}
            print(f"{count:>9} {step:>5} {wall['clip_benchmark']:>8.1f}s {wall['ex2']:>8.1f}s {ratio:>6.2f}x "
                  f"{1 / ratio:>6.2f}x {shown['clip_benchmark']:>15} {shown['ex2']:>15} "
                  f"{bare['ex2']:>5.1f}/{bare['clip_benchmark']:<5.1f} {texts['clip_benchmark']:>5.1f}/{texts['ex2']:<5.1f}s")
    worst = max(r["agreement"]["max_diff"] for r in rows)
    same = all(r["agreement"]["top1"] == r["agreement"]["n"] == r["agreement"]["top5"] for r in rows)
    print(f"agreement: top-1 and top-5 {'identical' if same else 'DIFFERENT'} on all {n} images in every pair; "
          f"largest |logit difference| {worst:.1e}")
    warm80 = median(r["wall"]["clip_benchmark"] / r["wall"]["ex2"] for r in rows
                    if r["templates"] == 80 and r["step"] == "warm")
    first = {c: median(r["wall"]["ex2"] / r["wall"]["clip_benchmark"] for r in rows
                       if r["templates"] == c and r["step"] == "first") for c in TEMPLATE_SETS}
    print(f"goal: warm 80-template run >= 5x faster than CLIP_benchmark: {warm80:.1f}x")
    print("goal: first run faster than CLIP_benchmark at equal precision: "
          + ", ".join(f"{c} template(s) {first[c]:.2f}x its wall time" for c in TEMPLATE_SETS))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800, help="images in the ImageFolder (spread over 8 classes)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of alternated pairs")
    parser.add_argument("--workdir", help="keep the checkpoint and images here and reuse them (default: a temp folder)")
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        CHILDREN[args.child](Path(args.record), args.rest[1:] if args.rest[:1] == ["--"] else args.rest)
        return
    import importlib.util

    if importlib.util.find_spec("clip_benchmark") is None:
        sys.exit(f"this benchmark runs CLIP_benchmark, which is not installed: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="ex2-vs-cb-") as tmp:
        inputs = build_inputs(Path(args.workdir or tmp), args.images)
        work = Path(tmp) / "runs"
        work.mkdir()
        rows = []
        print("each run is a fresh process calling the tool's own main with these arguments (80 templates, first run):")
        print("  clip_benchmark " + " ".join(clip_benchmark_argv(inputs, 80, work / "cb.json")))
        print("  ex2 " + " ".join(ex2_argv(inputs, 80, work / "ex2")) + "   (EX2_CACHE: an empty folder)", flush=True)
        for repeat in range(args.repeats):
            rows += one_repeat(inputs, repeat, work, min(args.images, 192))
    report(rows, args.images, args.repeats)


if __name__ == "__main__":
    main()
