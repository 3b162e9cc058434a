"""Grounding annotations for ``ex2 finetune --objective grain``, and a synthetic set to test it on.

An annotations file is JSONL, one image a line::

    {"image": "images/0001.png", "caption": "a red circle and a blue square",
     "regions": [{"text": "a red circle in the upper left", "box": [4, 3, 28, 27]}, ...]}

``image`` is relative to the file's folder (or absolute); ``box`` is ``[x0, y0, x1, y1]`` in pixels
of that image. GRAIN's own files are read as they are (:func:`read_grain_files`): ``bboxes_*.json``
as ``box_supervision.py`` writes it, ``{image: [{"description", "bbox", "score"}, ...]}``, with the
``captions_*.csv`` (``image,caption`` rows) its ``dataloaders/conceptual.py`` reads beside it. :func:`synthetic_grounding` draws shapes of known colour, kind and position with their
boxes and descriptions ("a red circle in the upper left"), so region decoding can be checked exactly.

The same records may come in webdataset shards (CC3M-style ``.tar`` files, one sample a key):
an image (``jpg``, ``jpeg``, ``png`` or ``webp``), its caption in ``txt`` or in ``json`` under
``caption``, the regions in ``json`` under ``regions`` (boxes in pixels, as above) and, for the
``desc`` objective, its class as ``cls`` (an index) or ``json`` ``class`` (a name);
:func:`shard_record` reads one.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from ex2.core.io import read_jsonl, write_jsonl

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 210, 30)}
KINDS = ("circle", "square", "triangle")
CELLS = {"upper left": (0, 0), "upper right": (1, 0), "lower left": (0, 1), "lower right": (1, 1)}


@dataclass
class GroundedImage:
    """One annotated image: its file, caption, and regions as (description, normalised xyxy box)."""

    image: Path
    caption: str
    regions: list[tuple[str, tuple[float, float, float, float]]]


def _check_box(box: object, size: tuple[int, int], where: str) -> tuple[float, float, float, float]:
    if not (isinstance(box, list | tuple) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
        raise ValueError(f"{where}: 'box' must be [x0, y0, x1, y1] in pixels, got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"{where}: box {box} is not inside the {width}x{height} image with x0 < x1 and y0 < y1")
    return x0 / width, y0 / height, x1 / width, y1 / height


def read_grounding(path: str | Path) -> list[GroundedImage]:
    """Read and check an annotations JSONL (see the module docstring); errors name file and line."""
    path = Path(path)
    records = read_jsonl(path, required=("image", "caption", "regions"))
    out = []
    for line, record in enumerate(records, 1):
        where = f"{path} line {line}"
        if not isinstance(record["image"], str) or not record["image"].strip():
            raise ValueError(f"{where}: 'image' must be the path of an image file, got {record['image']!r}")
        if not isinstance(record["caption"], str):
            raise ValueError(f"{where}: 'caption' must be a string, got {record['caption']!r}")
        image = Path(record["image"])
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {image} does not exist")
        if not isinstance(record["regions"], list) or not all(
            isinstance(r, dict) and isinstance(r.get("text"), str) and r["text"].strip() and "box" in r
            for r in record["regions"]
        ):
            raise ValueError(f"{where}: 'regions' must be a list of {{\"text\": str, \"box\": [x0, y0, x1, y1]}}")
        try:
            with PIL.Image.open(image) as opened:
                size = opened.size
        except (OSError, PIL.UnidentifiedImageError) as err:
            raise ValueError(f"{where}: image {image} cannot be read as an image ({err})") from None
        regions = [(r["text"].strip(), _check_box(r["box"], size, where)) for r in record["regions"]]
        out.append(GroundedImage(image, str(record["caption"]), regions))
    if not out:
        raise ValueError(f"{path}: no annotated images")
    return out


GRAIN_FRAME = 960  # box_supervision.py: boxes are pixels of OWLv2's 960 x 960 input (the image resized to it)
GRAIN_MAX_BOXES = 5  # configs/cc_config.py max_boxes: the best-scoring boxes conceptual.py keeps per image
GRAIN_IMAGES = (".jpg", ".jpeg", ".png")  # conceptual.py keeps the csv rows whose image ends so


def _grain_regions(entries: object, where: str, max_boxes: int) -> list[tuple[str, tuple[float, float, float, float]]]:
    """An image's ``max_boxes`` best boxes (by score) as (description, normalised xyxy): divided by
    the 960 frame and clipped to ``[0, 1]`` as ``conceptual.py`` and ``prepare_targets`` do; boxes
    left without area dropped, as ``prepare_targets`` drops them."""
    fields = ("description", "bbox", "score")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and all(k in e for k in fields) for e in entries):
        raise ValueError(f"{where}: expected a list of {{\"description\", \"bbox\": [x1, y1, x2, y2], \"score\"}}")
    for entry in entries:
        box, score = entry["bbox"], entry["score"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
            raise ValueError(f"{where}: 'bbox' must be [x1, y1, x2, y2] in pixels of the {GRAIN_FRAME} frame, got {box!r}")
        if not isinstance(score, int | float) or not isinstance(entry["description"], str):
            raise ValueError(f"{where}: 'score' must be a number and 'description' a string")
    best = sorted(entries, key=lambda e: -e["score"])[:max_boxes]
    regions = []
    for entry in best:
        x0, y0, x1, y1 = (min(max(float(v) / GRAIN_FRAME, 0.0), 1.0) for v in entry["bbox"])
        if x1 > x0 and y1 > y0:
            regions.append((entry["description"], (x0, y0, x1, y1)))
    return regions


def read_grain_files(bboxes: str | Path, captions: str | Path, max_boxes: int = GRAIN_MAX_BOXES) -> list[GroundedImage]:
    """GRAIN's annotations as its ``dataloaders/conceptual.py`` reads them: one image per
    ``captions`` csv row ``image,caption`` (rows whose image does not end in .jpg, .jpeg or .png are
    skipped there and here, a header among them; images relative to the csv's folder), its regions
    the ``max_boxes`` best of ``bboxes`` (:func:`_grain_regions`; an image it lacks has none)."""
    import csv

    bboxes, captions = Path(bboxes), Path(captions)
    try:
        boxes = json.loads(bboxes.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{bboxes}: not valid JSON ({err})") from err
    if not isinstance(boxes, dict):
        raise ValueError(f"{bboxes}: expected GRAIN's {{image: [{{description, bbox, score}}, ...]}}")
    out = []
    with captions.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.reader(handle), 1):
            if len(row) < 2 or not row[0].endswith(GRAIN_IMAGES):
                continue
            image = Path(row[0]) if Path(row[0]).is_absolute() else captions.parent / row[0]
            if not image.is_file():
                raise FileNotFoundError(f"{captions} line {line}: image {image} does not exist")
            regions = _grain_regions(boxes.get(row[0], []), f"{bboxes} image {row[0]!r}", max_boxes)
            out.append(GroundedImage(image, row[1], regions))
    if not out:
        raise ValueError(f"{captions}: no 'image,caption' rows with a .jpg, .jpeg or .png image")
    return out


def read_annotations(path: str | Path, captions: str | Path | None = None) -> list[GroundedImage]:
    """Grounded images from ex2's annotations JSONL, or from GRAIN's ``bboxes_*.json`` (a ``.json``
    file) with its ``captions`` csv."""
    if Path(path).suffix == ".json":
        if captions is None:
            raise ValueError(f"{path}: GRAIN's bboxes file needs its captions csv (--captions captions_*.csv)")
        return read_grain_files(path, captions)
    if captions is not None:
        raise ValueError(f"--captions goes with GRAIN's bboxes_*.json; {path} is an annotations JSONL")
    return read_grounding(path)


IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


@dataclass
class ShardRecord:
    """One webdataset sample: the image, its caption, regions (normalised xyxy) and class, if any."""

    image: PIL.Image.Image
    caption: str | None
    regions: list[tuple[str, tuple[float, float, float, float]]]
    label: int | str | None  # ``cls`` (class index) or the json's ``class`` (name)


def shard_record(sample: dict) -> ShardRecord:
    """Read a sample as webdataset yields it (``__key__``, ``__url__`` and raw bytes per extension);
    errors name the shard and the key."""
    from ex2.data.images import to_rgb

    where = f"shard {sample.get('__url__', '?')} sample {sample.get('__key__', '?')}"
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        found = sorted(k for k in sample if not k.startswith("__"))
        raise ValueError(f"{where}: no image ({', '.join(IMAGE_KEYS)}); it has {', '.join(found) or 'nothing'}")
    try:
        with PIL.Image.open(io.BytesIO(sample[key])) as opened:
            opened.load()
            image = to_rgb(opened)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{where}: cannot read its {key} image ({err})") from err
    meta = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError as err:
            raise ValueError(f"{where}: its json is not valid JSON ({err})") from err
        if not isinstance(meta, dict):
            raise ValueError(f"{where}: its json must be an object with caption/regions/class")
    caption = sample["txt"].decode("utf-8").strip() if "txt" in sample else meta.get("caption")
    regions = meta.get("regions", [])
    if not isinstance(regions, list) or not all(
        isinstance(r, dict) and isinstance(r.get("text"), str) and r["text"].strip() and "box" in r for r in regions
    ):
        raise ValueError(f"{where}: 'regions' must be a list of {{\"text\": str, \"box\": [x0, y0, x1, y1]}}")
    boxes = [(r["text"].strip(), _check_box(r["box"], image.size, where)) for r in regions]
    label = meta.get("class")
    if "cls" in sample:
        try:
            label = int(sample["cls"].decode().strip())
        except ValueError as err:
            raise ValueError(f"{where}: its cls must be a class index, got {sample['cls'][:20]!r}") from err
    return ShardRecord(image, str(caption) if caption is not None else None, boxes, label)


def _draw(draw: PIL.ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour: tuple) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def synthetic_image(rng: np.random.Generator, size: int = 64, max_shapes: int = 3) -> tuple[PIL.Image.Image, list[dict]]:
    """One image of 1..``max_shapes`` shapes in distinct quadrants, and their regions."""
    image = PIL.Image.new("RGB", (size, size), (128, 128, 128))
    draw = PIL.ImageDraw.Draw(image)
    cells = rng.choice(len(CELLS), size=int(rng.integers(1, max_shapes + 1)), replace=False)
    half = size // 2
    regions = []
    for cell in sorted(cells):
        where, (cx, cy) = list(CELLS.items())[cell]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        kind = KINDS[int(rng.integers(len(KINDS)))]
        side = int(rng.integers(half // 2, half - 1))
        x0 = cx * half + int(rng.integers(0, half - side))
        y0 = cy * half + int(rng.integers(0, half - side))
        box = (x0, y0, x0 + side, y0 + side)
        _draw(draw, kind, box, COLOURS[colour])
        regions.append({"text": f"a {colour} {kind} in the {where}", "box": list(box)})
    return image, regions


def synthetic_grounding(folder: str | Path, n: int = 64, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` synthetic images and ``annotations.jsonl`` into ``folder``; returns the file."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for index in range(n):
        image, regions = synthetic_image(rng, size)
        name = f"images/{index:05d}.png"
        image.save(folder / name)
        caption = " and ".join(r["text"].rsplit(" in the ", 1)[0] for r in regions)
        records.append({"image": name, "caption": caption, "regions": regions})
    return write_jsonl(folder / "annotations.jsonl", records)
