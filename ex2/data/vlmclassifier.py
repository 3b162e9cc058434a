"""VLMClassifier's evaluation sets (Zhang et al., ``data/*.jsonl`` + ``data/*_classes.json``) as they are.

    ex2 classify --dataset vlmclassifier:data/flowers.jsonl --split test --vlm gen:llava-hf/llava-1.5-7b-hf \\
        --method closed --seed 1234

One JSON object a line, ``{"image": PATH, "label": CLASS NAME, "split": "train"|"test"|"valid", ...}``,
and beside it a JSON list of the class names in label order: ``<stem>_classes.json``, or the stem
cut at its last ``_`` until one exists (``imagenet_small.jsonl`` -> ``imagenet_classes.json``). A
label is its name's index in that list (``classes.index(label)`` as their scripts compute it;
a line's ``label_idx`` wins where it names the same class, so both ImageNet "missile"s keep their
images). Relative image paths are read against the file's folder, else its parent (their
``./data/…`` paths are relative to the repository root), else the working directory: the first
that holds the first image.

The images stay in file order (their scripts shuffle that order with their seed, and ex2's closed
choices follow it), and every listed class stays a class, with images in the split or not: it is a
choice and a candidate, as in their evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

from ex2.core.io import read_text
from ex2.data.dataset import DatasetError, ImageDataset, check_utf8


def classes_file(path: Path) -> Path:
    """The ``*_classes.json`` beside a ``.jsonl`` (see the module docstring)."""
    stem = path.stem
    while True:
        candidate = path.with_name(f"{stem}_classes.json")
        if candidate.is_file():
            return candidate
        if "_" not in stem:
            raise DatasetError(f"vlmclassifier: no class list for {path}; expected {path.stem}_classes.json "
                               "(a JSON list of class names in label order) beside it")
        stem = stem.rsplit("_", 1)[0]


def read_classes(path: Path) -> list[str]:
    try:
        classes = json.loads(read_text(path, "a JSON list of class names"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"vlmclassifier: {path} is not valid JSON ({err}); expected a list of class names") from err
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"vlmclassifier: {path}: expected a JSON list of class names in label order")
    return [check_utf8(c, f"vlmclassifier: {path}: class") for c in classes]


def read_records(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(read_text(path, "JSON lines").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"vlmclassifier: {path} line {number} is not JSON ({err})") from err
        missing = {"image", "label", "split"} - set(record) if isinstance(record, dict) else {"image", "label", "split"}
        if missing:
            raise DatasetError(f"vlmclassifier: {path} line {number} lacks {', '.join(sorted(missing))}; "
                               'expected {"image": PATH, "label": CLASS NAME, "split": SPLIT}')
        records.append(record)
    return records


def label_of(record: dict, index: dict[str, int], classes: list[str], where: str) -> int:
    label = record["label"]
    given = record.get("label_idx")
    if isinstance(given, int) and 0 <= given < len(classes) and classes[given] == label:
        return given
    if label not in index:
        raise DatasetError(f"vlmclassifier: {where}: label {label!r} is not in the class list")
    return index[label]


def image_base(path: Path, first_image: str) -> Path:
    if Path(first_image).is_absolute():
        return Path("/")
    bases = [path.parent, path.parent.parent, Path.cwd()]
    for base in bases:
        if (base / first_image).is_file():
            return base
    raise DatasetError(f"vlmclassifier: {path}: image {first_image} not found under {', '.join(map(str, bases))}")


def load_vlmclassifier(root: Path | None, split: str) -> ImageDataset:
    """VLMClassifier's data/NAME.jsonl (+ NAME_classes.json): vlmclassifier:PATH.jsonl, --split test|valid|train."""
    if root is None or not Path(root).is_file():
        raise DatasetError(f"vlmclassifier: {root} is not a file; expected vlmclassifier:PATH/TO/NAME.jsonl")
    path = Path(root).expanduser()
    classes = read_classes(classes_file(path))
    records = read_records(path)
    chosen = [(n, r) for n, r in enumerate(records, 1) if r["split"] == split]
    if not chosen:
        found = sorted({str(r["split"]) for r in records})
        raise DatasetError(f"vlmclassifier: {path} has no images of split {split!r}; its splits: {', '.join(found)}")
    index: dict[str, int] = {}
    for class_id, name in enumerate(classes):
        index.setdefault(name, class_id)
    base = image_base(path, str(chosen[0][1]["image"]))
    items = [(base / str(r["image"]), label_of(r, index, classes, f"{path} line {n}")) for n, r in chosen]
    missing = [p for p, _ in items if not p.is_file()]
    if missing:
        raise DatasetError(f"vlmclassifier ({split}): {len(missing)} listed image(s) missing, e.g. {missing[0]}")
    return ImageDataset("vlmclassifier", split, path, classes, items)
