"""The datasets DCLIP, CuPL and WaffleCLIP evaluate on beside EX2's six, read from a local copy.

Layouts follow torchvision's dataset classes (``torchvision.datasets.ImageNet``, ``Food101``,
``DTD``, ``EuroSAT``, ``Places365``) and the official archives; nothing is ever downloaded.
ImageNet's class order is the sorted WordNet ids (timm's ``imagenet_synsets.txt``) and its names
are open_clip's ``IMAGENET_CLASSNAMES``, CLIP's names; a copy holding only some synset folders
keeps those classes, in standard order.
"""

from __future__ import annotations

from pathlib import Path

from ex2.data.dataset import (
    DatasetError,
    ImageDataset,
    build_dataset,
    clean_name,
    find_root,
    read_lines,
    splits,
)
from ex2.data.generic import IMAGE_SUFFIXES

IMAGENET_LAYOUT = "the ILSVRC2012 layout (as torchvision's ImageNet): {train,val}/nXXXXXXXX/*.JPEG"
IMAGENETV2_LAYOUT = (
    "the ImageNetV2 layout: imagenetv2-matched-frequency-format-val/{0..999}/*.jpeg "
    "(one folder a class index)"
)
FOOD101_LAYOUT = (
    "the Food-101 layout: food-101/{meta/classes.txt, meta/{train,test}.txt, images/CLASS/ID.jpg}"
)
IMAGENETV2_FOLDERS = (
    "imagenetv2-matched-frequency-format-val",
    "imagenetv2-threshold0.7-format-val",
    "imagenetv2-top-images-format-val",
)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in standard class order (sorted; shipped by timm)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def imagenet_classnames() -> list[str]:
    """CLIP's 1000 ImageNet class names in standard class order (open_clip's copy)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _image_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _index_folders(name: str, split: str, tree: Path, index_of: dict[str, int], layout: str) -> ImageDataset:
    """Class folders named in ``index_of`` (folder -> standard class index) -> ImageNet classes."""
    folders = sorted((d for d in tree.iterdir() if d.is_dir()), key=lambda d: index_of.get(d.name, -1))
    unknown = [d.name for d in folders if d.name not in index_of]
    if unknown:
        raise DatasetError(
            f"{name}: {tree} has folder(s) {', '.join(unknown[:5])} that are no ImageNet class; expected {layout}"
        )
    if not folders:
        raise DatasetError(f"{name}: {tree} has no class folders; expected {layout}")
    names = imagenet_classnames()
    classnames = [names[index_of[d.name]] for d in folders]
    items = [(path, label) for label, folder in enumerate(folders) for path in _image_files(folder)]
    return build_dataset(name, split, tree, classnames, items)


@splits("val", "train")
def load_imagenet(root: Path | None, split: str) -> ImageDataset:
    """ImageNet-1k (ILSVRC2012), 1000 classes in synset folders (val/train; CLIP's class names)."""
    base = find_root(
        "imagenet", root, split, ["imagenet", "ILSVRC2012", "ILSVRC/Data/CLS-LOC"], IMAGENET_LAYOUT
    )
    index_of = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    return _index_folders("imagenet", split, base / split, index_of, IMAGENET_LAYOUT)


def _imagenetv2_base(root: Path | None) -> Path:
    if root is None:
        raise DatasetError(f"imagenetv2: no root given; pass the folder holding {IMAGENETV2_LAYOUT}")
    root = Path(root).expanduser()
    for candidate in (root, *(root / folder for folder in IMAGENETV2_FOLDERS)):
        if candidate.is_dir() and any(d.is_dir() and d.name.isdigit() for d in candidate.iterdir()):
            return candidate
    raise DatasetError(f"imagenetv2: {root} has no class-index folders 0..999; expected {IMAGENETV2_LAYOUT}")


@splits("test")
def load_imagenetv2(root: Path | None, split: str) -> ImageDataset:
    """ImageNetV2 (any of its three sets), ImageNet's 1000 classes in folders 0..999 (test)."""
    base = _imagenetv2_base(root)
    index_of = {str(i): i for i in range(1000)}
    return _index_folders("imagenetv2", split, base, index_of, IMAGENETV2_LAYOUT)


@splits("test", "train")
def load_food101(root: Path | None, split: str) -> ImageDataset:
    """Food-101, 101 dishes (train/test from meta/{train,test}.txt)."""
    base = find_root("food101", root, "meta/classes.txt", ["food-101"], FOOD101_LAYOUT)
    folders = read_lines(base / "meta" / "classes.txt")  # apple_pie, sorted as torchvision sorts them
    class_of = {folder: i for i, folder in enumerate(folders)}
    items = []
    for line in read_lines(base / "meta" / f"{split}.txt"):
        folder = line.split("/", 1)[0]  # apple_pie/1005649
        if folder not in class_of:
            raise DatasetError(f"food101: {split}.txt entry {line} names no class in meta/classes.txt")
        items.append((base / "images" / f"{line}.jpg", class_of[folder]))
    return build_dataset("food101", split, base, [clean_name(f) for f in folders], items)
