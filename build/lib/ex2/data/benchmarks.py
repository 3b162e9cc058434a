"""The datasets DCLIP, CuPL and WaffleCLIP evaluate on beside EX2's six, read from a local copy.

Layouts follow torchvision's dataset classes (``ImageNet``, ``Food101``, ``DTD``, ``EuroSAT``,
``Places365``) and the official archives; nothing is ever downloaded. Class order is the one those
classes (and DCLIP's descriptor files, which match classes by position) use:

- ImageNet: the sorted WordNet ids (timm's ``imagenet_synsets.txt``), named by open_clip's
  ``IMAGENET_CLASSNAMES`` (CLIP's names); a copy holding only some synset folders keeps those
  classes in standard order. ImageNetV2 names its folders by that class index.
- Food-101, DTD: the dataset's sorted class folders, underscores as spaces.
- EuroSAT: torchvision's sorted folders, named as CLIP's prompts and DCLIP name them ("annual crop
  land", ...). It has no official split: in each class's sorted file list, every 5th image
  (the 1st, 6th, ...) is ``test``, the rest ``train``; ``all`` is every image.
- Places365: ``categories_places365.txt`` order, ``/b/bakery/shop`` named "bakery shop".
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
DTD_LAYOUT = "the DTD layout: dtd/{images/CLASS/*.jpg, labels/{train,val,test}1.txt}"
EUROSAT_LAYOUT = (
    "the EuroSAT RGB layout (as torchvision's EuroSAT): eurosat/2750/CLASS/*.jpg or EuroSAT_RGB/CLASS/*.jpg"
)
PLACES_LAYOUT = (
    "the Places365-Standard layout, torchvision's (categories_places365.txt, places365_val.txt, "
    "places365_train_standard.txt, val_large/ or val_256/, data_large_standard/ or data_256_standard/) "
    "or the easy format (places365_standard/{train,val}.txt, train/CLASS/, val/CLASS/)"
)
IMAGENETV2_FOLDERS = (
    "imagenetv2-matched-frequency-format-val",
    "imagenetv2-threshold0.7-format-val",
    "imagenetv2-top-images-format-val",
)

EUROSAT_FOLDERS = ("eurosat/2750", "2750", "EuroSAT_RGB", "eurosat/EuroSAT_RGB", "EuroSAT")
# EuroSAT's folders in torchvision's (sorted) class order -> the names CLIP's prompts use
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}
# Places365 split -> (torchvision's list file, image folders: full size or 256 px)
PLACES_TORCHVISION = {
    "val": ("places365_val.txt", ("val_large", "val_256")),
    "train": ("places365_train_standard.txt", ("data_large_standard", "data_256_standard")),
}


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
    folders = [d for d in tree.iterdir() if d.is_dir() and not d.name.startswith(".")]
    folders.sort(key=lambda d: index_of.get(d.name, -1))
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


@splits("test", "train", "val")
def load_dtd(root: Path | None, split: str) -> ImageDataset:
    """Describable Textures, 47 textures (train/val/test of the official partition 1)."""
    base = find_root("dtd", root, "labels", ["dtd", "dtd/dtd"], DTD_LAYOUT)
    folders = (
        sorted(d.name for d in (base / "images").iterdir() if d.is_dir())
        if (base / "images").is_dir()
        else []
    )
    class_of = {folder: i for i, folder in enumerate(folders)}
    items = []
    for line in read_lines(base / "labels" / f"{split}1.txt"):
        folder = line.split("/", 1)[0]  # banded/banded_0002.jpg
        if folder not in class_of:
            raise DatasetError(f"dtd: {split}1.txt entry {line} names no folder under {base / 'images'}")
        items.append((base / "images" / line, class_of[folder]))
    return build_dataset("dtd", split, base, [clean_name(f) for f in folders], items)


def _eurosat_base(root: Path | None) -> Path:
    if root is None:
        raise DatasetError(f"eurosat: no root given; pass the folder holding {EUROSAT_LAYOUT}")
    root = Path(root).expanduser()
    for candidate in (root, *(root / folder for folder in EUROSAT_FOLDERS)):
        if candidate.is_dir() and any((candidate / folder).is_dir() for folder in EUROSAT_CLASSNAMES):
            return candidate
    raise DatasetError(f"eurosat: {root} has no class folders such as AnnualCrop/; expected {EUROSAT_LAYOUT}")


@splits("test", "train", "all")
def load_eurosat(root: Path | None, split: str) -> ImageDataset:
    """EuroSAT RGB, 10 land-use classes (no official split: every 5th image of a class is test)."""
    base = _eurosat_base(root)
    unknown = sorted(d.name for d in base.iterdir() if d.is_dir() and d.name not in EUROSAT_CLASSNAMES)
    if unknown:
        raise DatasetError(f"eurosat: {base} has folder(s) {', '.join(unknown)} that are no EuroSAT class")
    items = []
    for label, folder in enumerate(EUROSAT_CLASSNAMES):
        files = sorted(_image_files(base / folder)) if (base / folder).is_dir() else []
        items += [
            (path, label)
            for i, path in enumerate(files)
            if split == "all" or (i % 5 == 0) == (split == "test")
        ]
    return build_dataset("eurosat", split, base, list(EUROSAT_CLASSNAMES.values()), items)


def _places_name(category: str) -> str:
    """``/a/apartment_building/outdoor`` or ``apartment_building-outdoor`` -> ``apartment building outdoor``."""
    parts = category.strip("/").split("/")
    if len(parts) > 1 and len(parts[0]) == 1:
        parts = parts[1:]  # the initial-letter folder
    return clean_name(" ".join(parts).replace("-", " "))


def _places_list(base: Path, split: str) -> tuple[Path, Path]:
    """The list file of a split and the folder its paths are under: the easy format's ``{split}.txt``
    and ``{split}/``, else torchvision's ``places365_*.txt`` and image folders."""
    if (base / f"{split}.txt").is_file():
        return base / f"{split}.txt", base / split
    list_file, folders = PLACES_TORCHVISION[split]
    images = next((base / f for f in folders if (base / f).is_dir()), None)
    if images is None:
        raise DatasetError(
            f"places365: {base} has neither {split}.txt nor {' or '.join(folders)}/; expected {PLACES_LAYOUT}"
        )
    return base / list_file, images


def _places_item(line: str, images: Path, class_of: dict[str, int], source: Path) -> tuple[Path, int]:
    """``PATH INDEX`` (torchvision's lists), or ``[SPLIT/]CLASS/FILE`` whose folder is the class."""
    path, _, index = line.partition(" ")  # Places365_val_00000001.jpg 165 | val/airfield/x.jpg
    path = path.strip("/").removeprefix(f"{images.name}/")
    if index.strip():
        label = int(index) if index.strip().isdigit() else -1
    else:
        label = class_of.get(_places_name(str(Path(path).parent)), -1)
    if not 0 <= label < len(class_of):
        raise DatasetError(f"places365: {source}: line {line!r} names no class of categories_places365.txt")
    return images / path, label


@splits("val", "train")
def load_places365(root: Path | None, split: str) -> ImageDataset:
    """Places365-Standard, 365 scene categories (val/train; torchvision's layout or the easy format)."""
    base = find_root(
        "places365", root, "categories_places365.txt", ["places365_standard", "places365"], PLACES_LAYOUT
    )
    rows = [line.split() for line in read_lines(base / "categories_places365.txt")]  # /a/airfield 0
    classnames = [_places_name(name) for name, _ in sorted(rows, key=lambda row: int(row[1]))]
    class_of = {name: i for i, name in enumerate(classnames)}
    list_file, images = _places_list(base, split)
    items = [_places_item(line, images, class_of, list_file) for line in read_lines(list_file)]
    return build_dataset("places365", split, base, classnames, items)
