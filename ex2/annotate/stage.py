"""Grounding annotations for ``ex2 finetune --objective grain``: ``ex2 annotate``.

    ex2 annotate --dataset cub --data-root DIR --split train --descriptions runs/cub/categories.jsonl \\
        --categories visual --output runs/cub/grounding.jsonl
    ex2 annotate ... --captioner gen:llava-hf/llava-1.5-7b-hf    # captions written by a generative VLM
    ex2 finetune --objective grain --annotations runs/cub/grounding.jsonl ...

Each image's class descriptions (``ex2 generate`` or ``ex2 inspect`` output; ``--categories visual``
keeps what inspect judged visual) are text queries to an OWLv2 detector (:mod:`ex2.vlm.detector`).
Which boxes an image keeps is the ``--preset``'s (``PRESETS``):

``ex2``    ours: a description keeps its best box if that box scores at least ``--threshold``
           (0.1); the ``--max-regions`` (8) best descriptions of an image become its regions.
``grain``  GRAIN's ``box_supervision.py`` and ``dataloaders/conceptual.py``: the image resized to
           224 x 224 before OWLv2 sees it, every box of the detector whose best description scores
           above ``--threshold`` (0.3) kept with that description (a description may keep several
           boxes), the ``--max-regions`` (5) best-scoring boxes of an image its regions.

``--threshold`` and ``--max-regions`` override the preset's values. The caption is
``--caption-template`` filled with the class name, or what ``--captioner`` answers to
``--caption-prompt``. One JSONL record per image with at least one region (``--keep-empty``: every
image)::

    {"image": "/abs/path.jpg", "caption": "a photo of a cat.", "label": 0, "class": "cat",
     "regions": [{"text": "pointed ears", "box": [x0, y0, x1, y1], "score": 0.41}, ...]}

``box`` is in pixels of the image, as :func:`ex2.finetune.data.read_grounding` reads it. Finished
batches are appended to ``OUTPUT.partial``; a rerun with the same settings annotates only what is
missing. The output is written atomically at the end, with ``OUTPUT.config.yaml`` beside it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import PIL.Image
import torch

from ex2.core.config import data_root_option, dataset_option, option, save_config, split_option
from ex2.core.devices import PRECISIONS
from ex2.core.io import (
    append_jsonl,
    check_output_path,
    input_fingerprints,
    output_lock,
    partial_path,
    read_jsonl,
    remove_stale_temps,
    resume_partial,
    write_jsonl,
)
from ex2.data.images import quiet_worker
from ex2.vlm.detector import DEFAULT_DETECTOR

# the fields whose change makes an interrupted run's records stale
RUN_SETTINGS = ("dataset", "data_root", "split", "descriptions", "categories", "detector", "preset", "threshold",
                "max_regions", "captioner", "caption_prompt", "caption_template", "max_new_tokens")


@dataclass(frozen=True)
class BoxPreset:
    """Which of the detector's boxes an image keeps (see the module docstring)."""

    rule: str  # "best": each description's best box (score >= threshold); "every": every box (score > threshold)
    threshold: float
    max_regions: int
    square: int | None  # the side the image is resized to before the detector, or None (OWLv2 pads it)


PRESETS = {
    "ex2": BoxPreset(rule="best", threshold=0.1, max_regions=8, square=None),
    "grain": BoxPreset(rule="every", threshold=0.3, max_regions=5, square=224),
}


@dataclass
class AnnotateConfig:
    """Ground each image's class descriptions with an OWLv2 detector: {image, caption, regions} JSONL."""

    output: str = option("", "annotations JSONL to write: the --annotations of ex2 finetune --objective grain")
    descriptions: str = option("", "descriptions.jsonl or categories.jsonl (ex2 generate / inspect) or JSON "
                                   "{class: [texts]}: the detector's text queries for each class's images")
    categories: list[str] = option([], "keep only descriptions of these inspection categories (e.g. visual)")
    dataset: str = dataset_option()
    data_root: str | None = data_root_option()
    split: str | None = split_option()
    images_per_class: int | None = option(None, "annotate only the first N images of each class (default: all)")
    detector: str = option(DEFAULT_DETECTOR, "OWLv2 detector: hub id (read from the local cache) or local folder")
    preset: Literal["ex2", "grain"] = option("ex2", "ex2: each description's best box scoring >= 0.1, 8 per image; "
                                                    "grain: GRAIN's box_supervision.py (image resized to 224x224, "
                                                    "every box whose best description scores > 0.3, 5 per image)")
    threshold: float | None = option(None, "OWLv2 score (sigmoid, 0..1) a box needs (default: the --preset's, 0.1 "
                                           "or 0.3)")
    max_regions: int | None = option(None, "regions kept per image, best scores first (default: the --preset's, 8 or 5)")
    keep_empty: bool = option(False, "also write images in which no description was found (caption only)")
    captioner: str | None = option(None, "generative VLM (gen:…) writing each caption; default: --caption-template")
    caption_prompt: str = option("Describe this image in one sentence.", "--captioner: the question asked")
    caption_template: str = option("a photo of a {}.", "caption made of the class name; also where a "
                                                       "generated caption comes back empty")
    max_new_tokens: int = option(40, "--captioner: longest caption, in tokens")
    batch_size: int = option(16, "images per detector (and captioner) batch")
    num_workers: int = option(2, "data-loader processes reading and resizing images")
    device: str | None = option(None, "torch device; default: CUDA when available")
    precision: str = option("auto", "fp32, fp16, bf16 or auto (bf16 on CUDA where supported, else fp16; fp32 on CPU)")

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("--output FILE.jsonl is required (the annotations to write)")
        if not self.descriptions:
            raise ValueError("--descriptions FILE is required (descriptions.jsonl, categories.jsonl or JSON)")
        self.categories = [c.strip() for item in self.categories for c in item.split(",") if c.strip()]
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        preset = PRESETS[self.preset]
        self.threshold = preset.threshold if self.threshold is None else self.threshold
        self.max_regions = preset.max_regions if self.max_regions is None else self.max_regions
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"--threshold is a score between 0 and 1, got {self.threshold}")
        for name in ("max_regions", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.images_per_class is not None and self.images_per_class < 1:
            raise ValueError(f"--images-per-class must be at least 1, got {self.images_per_class}")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be 0 or more, got {self.num_workers}")
        if "{}" not in self.caption_template:
            raise ValueError(f"--caption-template needs a {{}} for the class name, got {self.caption_template!r}")
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be auto, {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.captioner and not self.captioner.startswith("gen:"):
            raise ValueError(f"--captioner takes a generative VLM name gen:ORG/NAME or gen:local-dir:PATH, "
                             f"got {self.captioner!r}")


def config_path(output: Path) -> Path:
    return output.with_name(output.name + ".config.yaml")


def run_settings(config: AnnotateConfig) -> dict:
    values = dataclasses.asdict(config)
    values["descriptions"] = str(Path(config.descriptions).resolve())
    return {**{name: values[name] for name in RUN_SETTINGS}, **input_fingerprints(descriptions=config.descriptions)}


def class_queries(config: AnnotateConfig, classnames: list[str]) -> list[list[str]]:
    """The detector's queries per class id: the class's descriptions (none for a class without)."""
    from ex2.classify.descriptions import align_descriptions, load_descriptions

    descriptions = load_descriptions(config.descriptions, config.categories)
    texts, missing = align_descriptions(classnames, descriptions, allow_missing=True, source=config.descriptions)
    if len(missing) == len(classnames):
        raise ValueError(f"{config.descriptions}: no descriptions for any class of {config.dataset}"
                         + (f" in categories {', '.join(config.categories)}" if config.categories else ""))
    if missing:
        print(f"ex2 annotate: {len(missing)} of {len(classnames)} classes have no descriptions; their images "
              f"get no regions ({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''})")
    return texts


class _Images(torch.utils.data.Dataset):
    """(position, RGB image or None when unreadable, the detector's pixels or None); the detector
    sees the image resized to ``square`` x ``square`` where that is given (GRAIN's)."""

    def __init__(self, paths: list[Path], image_processor, square: int | None = None) -> None:
        self.paths, self.image_processor, self.square = paths, image_processor, square

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from ex2.data.images import load_image
        from ex2.vlm.detector import owl_pixels

        image = load_image(self.paths[index])
        if image is None:
            return index, None, None
        seen = image.resize((self.square, self.square), PIL.Image.BICUBIC) if self.square else image
        return index, image, owl_pixels(self.image_processor, [seen])[0]


def _collate(batch):
    return list(batch)


def make_record(path: Path, label: int, classname: str, caption: str, texts: list[str], found, limit: int) -> dict:
    """One output record: the ``limit`` best-scoring detections of the image's descriptions."""
    best = sorted(found, key=lambda d: -d.score)[:limit]
    regions = [{"text": texts[d.query], "box": list(d.box), "score": round(d.score, 4)} for d in best]
    return {"image": str(path), "caption": caption, "label": label, "class": classname, "regions": regions}


def _rescale(detection, side: int, size: tuple[int, int]):
    """A detection on the ``side``-square resized image, its box in pixels of the image itself."""
    sx, sy = size[0] / side, size[1] / side
    x0, y0, x1, y1 = detection.box
    return dataclasses.replace(detection, box=(round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2)))


def annotate_batch(batch, items, queries, classnames, detector, captioner, config: AnnotateConfig) -> list[dict]:
    """Records for one loader batch (an unreadable image gets a record marked ``unreadable``)."""
    readable = [(i, image, pixels) for i, image, pixels in batch if image is not None]
    records = [{"image": str(items[i][0]), "regions": [], "unreadable": True} for i, image, _ in batch if image is None]
    if not readable:
        return records
    positions, images, pixels = zip(*readable, strict=True)
    labels = [items[i][1] for i in positions]
    texts = [queries[label] for label in labels]
    preset = PRESETS[config.preset]
    seen = [image.resize((preset.square, preset.square)) for image in images] if preset.square else list(images)
    found = detector.detect(seen, texts, config.threshold, pixels=torch.stack(pixels), rule=preset.rule)
    if preset.square:  # boxes in pixels of the square the detector saw -> of the image
        found = [[_rescale(d, preset.square, image.size) for d in hits] for hits, image in zip(found, images, strict=True)]
    captions = [config.caption_template.format(classnames[label]) for label in labels]
    if captioner is not None:
        written = captioner.generate(list(images), captioner.prompt(config.caption_prompt),
                                     max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
        captions = [w.strip() or c for w, c in zip(written, captions, strict=True)]
    for position, label, caption, query, hits in zip(positions, labels, captions, texts, found, strict=True):
        records.append(make_record(items[position][0], label, classnames[label], caption, query, hits,
                                   config.max_regions))
    return records


def _items(config: AnnotateConfig):
    from ex2.data import load_dataset, sample_per_class

    dataset = load_dataset(config.dataset, config.data_root, config.split)
    if not dataset.items:
        raise ValueError(f"dataset {config.dataset} split {dataset.split} has no images")
    chosen = sample_per_class(dataset, config.images_per_class)
    items = [(Path(path).resolve(), label) for label, paths in chosen.items() for path in paths]
    return items, dataset.classnames


def annotate_missing(config: AnnotateConfig, items, todo: list[int], queries, classnames, partial: Path) -> None:
    """Load the models and append a record for every image of ``todo`` (positions in ``items``)."""
    from tqdm.auto import tqdm

    from ex2.vlm.detector import load_detector

    detector = load_detector(config.detector, config.device, config.precision)
    captioner = None
    if config.captioner:
        from ex2.gvlm import load_gvlm

        captioner = load_gvlm(config.captioner, config.device, config.precision)
    chosen = [items[i] for i in todo]
    images = _Images([path for path, _ in chosen], detector.processor.image_processor, PRESETS[config.preset].square)
    loader = torch.utils.data.DataLoader(images, batch_size=config.batch_size, num_workers=config.num_workers,
                                         collate_fn=_collate, worker_init_fn=quiet_worker)
    with tqdm(total=len(items), initial=len(items) - len(todo), unit="img", desc="annotate") as bar:
        for batch in loader:
            for record in annotate_batch(batch, chosen, queries, classnames, detector, captioner, config):
                append_jsonl(partial, record)
            bar.update(len(batch))


def _annotate(config: AnnotateConfig, output: Path) -> Path:
    items, classnames = _items(config)
    queries = class_queries(config, classnames)
    partial = partial_path(output)
    done = {r["image"] for r in resume_partial(partial, run_settings(config), "partial annotations",
                                               required=("image", "regions"))}
    todo = [i for i, (path, _) in enumerate(items) if str(path) not in done]
    if todo:
        annotate_missing(config, items, todo, queries, classnames, partial)
    by_image = {r["image"]: r for r in read_jsonl(partial)[1:]}
    records = [by_image[str(path)] for path, _ in items]
    kept = [r for r in records if not r.get("unreadable") and (r["regions"] or config.keep_empty)]
    write_jsonl(output, kept)
    save_config(config, output.parent, name=config_path(output).name)
    partial.unlink()
    regions = sum(len(r["regions"]) for r in kept)
    print(f"ex2 annotate: {len(kept)} of {len(records)} images written, {regions} regions "
          f"({regions / max(len(kept), 1):.1f} per image) -> {output}")
    return output


def annotate(config: AnnotateConfig) -> Path:
    """Annotate every image that lacks a record, then write the output file atomically."""
    output = check_output_path(config.output)
    with output_lock(output, "ex2 annotate"):
        for path in (output, partial_path(output), config_path(output)):
            remove_stale_temps(path)  # left by a run killed while writing them
        return _annotate(config, output)


def run(config: AnnotateConfig) -> Path:
    """``ex2 annotate``: the annotations JSONL file."""
    return annotate(config)
