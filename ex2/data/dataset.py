"""The image dataset every loader returns, and the helpers loaders share."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ex2.core.io import read_text
from ex2.core.text import clean_name  # noqa: F401  (the loaders' class-name clean-up)

Loader = Callable[[Path | None, str], "ImageDataset"]


class DatasetError(ValueError):
    """A dataset root, split or file that cannot be used; the message names what was expected."""


@dataclass
class ImageDataset:
    """Labelled image files of one split; loaders build it with :func:`build_dataset`."""

    name: str  # e.g. "samples", "pets"
    split: str  # e.g. "test"
    root: Path
    classnames: list[str]  # index = class id
    items: list[tuple[Path, int]]  # (image file, class id), sorted by (class id, path)

    def paths_of(self, class_id: int) -> list[Path]:
        """The image files of one class, in sorted order."""
        if not 0 <= class_id < len(self.classnames):
            raise IndexError(f"{self.name} has classes 0..{len(self.classnames) - 1}, not {class_id}")
        return [path for path, label in self.items if label == class_id]

    def __len__(self) -> int:
        return len(self.items)


def splits(*names: str) -> Callable[[Loader], Loader]:
    """Declare the splits a loader accepts; the first is its usual evaluation split."""

    def mark(loader: Loader) -> Loader:
        loader.splits = names  # type: ignore[attr-defined]
        return loader

    return mark


def find_root(name: str, root: Path | None, marker: str, folders: Iterable[str], layout: str) -> Path:
    """``root`` or one of its ``folders`` holding ``marker``; else an error naming the layout."""
    if root is None:
        raise DatasetError(f"{name}: no root given; pass the folder holding {layout}")
    root = Path(root).expanduser()
    for candidate in (root, *(root / folder for folder in folders)):
        if (candidate / marker).exists():
            return candidate
    raise DatasetError(f"{name}: {root} has no {marker}; expected {layout}")


def read_lines(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a text file."""
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    lines = (line.strip() for line in read_text(path, "one entry a line").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_mat(path: Path) -> dict:
    """A MATLAB file as squeezed numpy arrays (scipy.io)."""
    import scipy.io

    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    return scipy.io.loadmat(path, squeeze_me=True)


def check_utf8(text: str, what: str) -> str:
    """``text`` if it is valid Unicode; a name read from disk that was not UTF-8 (Python keeps its
    bytes as surrogates, which a tokenizer cannot encode) is a DatasetError naming ``what``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        raise DatasetError(f"{what} {raw!r} is not valid UTF-8; rename it (it becomes the class name "
                           "the models read)") from None
    return text


def build_dataset(
    name: str, split: str, root: Path, classnames: list[str], items: Iterable[tuple[Path, int]]
) -> ImageDataset:
    """Sort the items and check that every class name is text, every class has an image and every
    image exists."""
    for class_id, classname in enumerate(classnames):
        check_utf8(classname, f"{name} ({root}): class {class_id}'s name")
    items = sorted(items, key=lambda item: (item[1], str(item[0])))
    counts = [0] * len(classnames)
    for path, label in items:
        if not 0 <= label < len(classnames):
            raise DatasetError(f"{name}: {path} has class id {label}, outside 0..{len(classnames) - 1}")
        counts[label] += 1
    empty = [classnames[i] for i, count in enumerate(counts) if count == 0]
    if empty:
        shown = ", ".join(repr(c) for c in empty[:5]) + (" …" if len(empty) > 5 else "")
        raise DatasetError(f"{name} ({split}, {root}): {len(empty)} class(es) without images: {shown}")
    missing = [path for path, _ in items if not path.is_file()]
    if missing:
        raise DatasetError(f"{name} ({split}): {len(missing)} listed image(s) missing, e.g. {missing[0]}")
    return ImageDataset(name, split, Path(root), list(classnames), items)


def sample_per_class(dataset: ImageDataset, n: int | None, seed: int | None = None) -> dict[int, list[Path]]:
    """Up to ``n`` images per class id: the first ``n`` in sorted order (EX2's
    ``num_images_for_reward``) when ``seed`` is None, else a seeded random ``n``; ``n`` None = all."""
    if n is not None and n < 1:
        raise ValueError(f"images per class must be at least 1 (or None for all), got {n}")
    chosen = {}
    for class_id in range(len(dataset.classnames)):
        paths = dataset.paths_of(class_id)
        if n is not None and seed is not None:
            paths = sorted(random.Random(f"{seed}:{class_id}").sample(paths, min(n, len(paths))))
        chosen[class_id] = paths if n is None else paths[:n]
    return chosen
