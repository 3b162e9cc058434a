"""Class-name files: the names a dataset's classes are asked about, in class-id order.

A file is a JSON list of strings (EX2's ``data_files/*_class_names.json`` load as they are) or a text
file with one name a line (blank lines and ``#`` lines skipped). Names are used exactly as written
(surrounding spaces stripped); EX2 itself turned underscores into spaces and, for Stanford Dogs and
FGVC-Aircraft, appended " dog" / " aircraft" before asking, so write a file the way the names
should be asked.

    from ex2.data import apply_classnames, load_dataset
    pets = apply_classnames(load_dataset("pets", "/data/oxford-iiit-pet"), "pets_class_names.json")
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ex2.core.io import read_text
from ex2.data.dataset import DatasetError, ImageDataset
from ex2.data.templates import ex2_file_hint

EXPECTED = "a JSON list of class names, or a text file with one class name a line, in class-id order"


def _parse(path: Path, text: str) -> list[str]:
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); expected {EXPECTED}") from err
        if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
            raise ValueError(f"{path}: expected {EXPECTED}")
        return [name.strip() for name in data]
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_classnames(path: str | Path, expected: int | None = None, where: str = "the dataset") -> list[str]:
    """The class names in ``path``, index = class id.

    ``expected`` is the number of classes of what the names are for (``where`` says what that is,
    for the error); a different count, an empty name or a name listed twice is a ValueError.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such class-name file (expected {EXPECTED}){ex2_file_hint(path)}")
    names = _parse(path, read_text(path, EXPECTED))
    if not names:
        raise ValueError(f"{path}: no class names found; expected {EXPECTED}")
    empty = [i for i, name in enumerate(names) if not name]
    if empty:
        raise ValueError(f"{path}: class id {empty[0]} has an empty name; expected {EXPECTED}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: class name(s) listed twice: {', '.join(map(repr, repeated))}")
    if expected is not None and len(names) != expected:
        raise ValueError(f"{path}: holds {len(names)} class names but {where} has {expected} classes; "
                         "give one name per class, in class-id order")
    return names


def apply_classnames(dataset: ImageDataset, path: str | Path) -> ImageDataset:
    """``dataset`` with its classes renamed from a class-name file (same count, class-id order)."""
    where = f"dataset {dataset.name} ({dataset.split}, {dataset.root})"
    try:
        names = load_classnames(path, len(dataset.classnames), where)
    except ValueError as err:
        raise DatasetError(str(err)) from err
    return dataclasses.replace(dataset, classnames=names)
