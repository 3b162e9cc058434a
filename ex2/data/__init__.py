"""Image datasets, image loading and query templates.

from ex2.data import load_dataset, load_image, load_templates, sample_per_class
ds = load_dataset("samples")                          # embedded, offline, smoke-scale
ds = load_dataset("cub", "/data/CUB_200_2011")        # EX2's datasets from a local copy
ds = load_dataset("cub:/data/CUB_200_2011")           # the same, as NAME:ROOT
per_class = sample_per_class(ds, 8)                   # {class id: first 8 image files}
images = [load_image(p) for p in per_class[0]]        # RGB, None for unreadable files
questions = load_templates("describe25")              # ex2's 25 "Describe a photo of a {}."-style
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ex2.core.io import read_text
from ex2.core.names import split_dataset_name
from ex2.data.benchmarks import (
    EUROSAT_CLASSNAMES,
    imagenet_classnames,
    load_dtd,
    load_eurosat,
    load_food101,
    load_imagenet,
    load_imagenetv2,
    load_places365,
)
from ex2.data.classnames import apply_classnames, load_classnames
from ex2.data.dataset import DatasetError, ImageDataset, sample_per_class
from ex2.data.fine_grained import (
    flowers102_classnames,
    load_aircraft,
    load_aircraft_family,
    load_cars,
    load_cub,
    load_dogs,
    load_flowers102,
    load_pets,
)
from ex2.data.generic import load_csv, load_hf_disk, load_imagefolder
from ex2.data.images import ImageError, load_image, to_rgb
from ex2.data.samples import SAMPLE_CONCEPTS, load_samples
from ex2.data.templates import TEMPLATE_SETS, TemplateError, load_templates

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageDataset",
    "ImageError",
    "TEMPLATE_SETS",
    "TemplateError",
    "apply_classnames",
    "concept_names",
    "load_classnames",
    "load_dataset",
    "load_image",
    "load_templates",
    "sample_per_class",
    "to_rgb",
]

# name -> loader(root, split); each loader's docstring is its line in `ex2 ls`
DATASETS: dict[str, Callable[[Path | None, str], ImageDataset]] = {
    "samples": load_samples,
    "cub": load_cub,
    "pets": load_pets,
    "flowers102": load_flowers102,
    "cars": load_cars,
    "dogs": load_dogs,
    "aircraft": load_aircraft,
    "aircraft_family": load_aircraft_family,
    "imagenet": load_imagenet,
    "imagenetv2": load_imagenetv2,
    "food101": load_food101,
    "dtd": load_dtd,
    "eurosat": load_eurosat,
    "places365": load_places365,
    "imagefolder": load_imagefolder,
    "csv": load_csv,
    "hf_disk": load_hf_disk,
}

# datasets whose class names are known without a copy of the data
KNOWN_CLASSNAMES: dict[str, Callable[[], list[str]]] = {
    "samples": lambda: list(SAMPLE_CONCEPTS),
    "flowers102": flowers102_classnames,
    "imagenet": imagenet_classnames,
    "imagenetv2": imagenet_classnames,
    "eurosat": lambda: list(EUROSAT_CLASSNAMES.values()),
}


def load_dataset(name: str, root: str | Path | None = None, split: str | None = None,
                 classnames: str | Path | None = None) -> ImageDataset:
    """Load dataset ``name`` (or ``NAME:ROOT``) from ``root``; ``split`` None is its usual evaluation split.
    ``classnames`` (a class-name file, :func:`load_classnames`) renames its classes; a file whose count
    differs from the dataset's is a DatasetError naming both counts."""
    name, root = split_dataset_name(name, root)
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    loader = DATASETS[name]
    valid = getattr(loader, "splits", ())
    split = split or (valid[0] if valid else "test")
    if valid and split not in valid:
        raise DatasetError(f"{name} has no split {split!r}; valid splits: {', '.join(valid)}")
    dataset = loader(Path(root).expanduser() if root else None, split)
    return apply_classnames(dataset, classnames) if classnames else dataset


def _read_concepts(path: Path) -> list[str]:
    lines = (line.strip() for line in read_text(path, "one concept a line").splitlines())
    concepts = [line for line in lines if line and not line.startswith("#")]
    if not concepts:
        raise ValueError(f"{path}: no concepts found; expected one concept name a line")
    duplicates = sorted({c for c in concepts if concepts.count(c) > 1})
    if duplicates:
        raise ValueError(f"{path}: concept(s) listed twice: {', '.join(duplicates)}")
    return concepts


def concept_names(dataset_or_file: str, root: str | Path | None = None) -> list[str]:
    """Class names of a dataset (``NAME`` or ``NAME:ROOT``, or ``NAME`` with ``root``), or one
    concept a line from a text file."""
    if root is None and dataset_or_file in KNOWN_CLASSNAMES:
        return KNOWN_CLASSNAMES[dataset_or_file]()
    path = Path(dataset_or_file).expanduser()
    if root is None and path.is_file():
        return _read_concepts(path)
    name, root = split_dataset_name(dataset_or_file, root)
    if name in DATASETS:
        return load_dataset(name, root).classnames
    raise ValueError(
        f"{dataset_or_file!r} is neither a concept file (one name a line) nor a dataset; "
        f"datasets: {', '.join(DATASETS)} (as NAME, or NAME:ROOT for a local copy)"
    )
