"""EX2's six fine-grained datasets, read from a local copy in their official layouts.

Each loader takes the dataset's own folder or its parent (e.g. ``CUB_200_2011/`` or the folder
holding it). Class names come from the dataset's metadata, processed as EX2 does; Flowers102 has
none, so its names ship as ``flowers102_classnames.txt``. Nothing is ever downloaded.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ex2.data.dataset import (
    DatasetError,
    ImageDataset,
    build_dataset,
    clean_name,
    find_root,
    load_mat,
    read_lines,
    splits,
)

CUB_LAYOUT = (
    "the CUB-200-2011 layout: CUB_200_2011/{images.txt, classes.txt, image_class_labels.txt, "
    "train_test_split.txt, images/}"
)
PETS_LAYOUT = "the Oxford-IIIT Pets layout: images/*.jpg, annotations/{trainval,test}.txt"
FLOWERS_LAYOUT = "the Oxford Flowers102 layout: jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat"
CARS_LAYOUT = (
    "torchvision's Stanford Cars layout: stanford_cars/{devkit/cars_meta.mat, "
    "devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, cars_train/, cars_test/}"
)
DOGS_LAYOUT = (
    "the Stanford Dogs layout: Images/n02085620-Chihuahua/*.jpg, "
    "lists/{train,test}_list.mat (or {train,test}_list.txt)"
)
AIRCRAFT_LAYOUT = (
    "the FGVC-Aircraft layout: fgvc-aircraft-2013b/data/{images/, variants.txt, families.txt, "
    "images_{variant,family}_{train,val,trainval,test}.txt}"
)


def _id_table(path: Path) -> dict[str, str]:
    """``id value`` lines as a dict (CUB's metadata files)."""
    return dict(line.split(maxsplit=1) for line in read_lines(path))


@splits("test", "train")
def load_cub(root: Path | None, split: str) -> ImageDataset:
    """CUB-200-2011 birds, 200 classes (train/test from train_test_split.txt)."""
    base = find_root("cub", root, "images.txt", ["CUB_200_2011"], CUB_LAYOUT)
    paths, labels = _id_table(base / "images.txt"), _id_table(base / "image_class_labels.txt")
    is_train = _id_table(base / "train_test_split.txt")
    classes = sorted(_id_table(base / "classes.txt").items(), key=lambda kv: int(kv[0]))
    classnames = [clean_name(raw.split(".", 1)[-1]) for _, raw in classes]  # 001.Black_footed_Albatross
    wanted = "1" if split == "train" else "0"
    items = [(base / "images" / paths[i], int(labels[i]) - 1) for i in paths if is_train[i] == wanted]
    return build_dataset("cub", split, base, classnames, items)


@splits("test", "trainval")
def load_pets(root: Path | None, split: str) -> ImageDataset:
    """Oxford-IIIT Pets, 37 cat and dog breeds (trainval/test)."""
    base = find_root("pets", root, f"annotations/{split}.txt", ["oxford-iiit-pet"], PETS_LAYOUT)
    names: dict[int, str] = {}
    items = []
    for line in read_lines(base / "annotations" / f"{split}.txt"):
        image_id, label = line.split()[:2]  # american_bulldog_100 2 2 1
        names[int(label) - 1] = clean_name(image_id.rsplit("_", 1)[0])
        items.append((base / "images" / f"{image_id}.jpg", int(label) - 1))
    classnames = [names.get(i, f"class {i + 1}") for i in range(max(names, default=-1) + 1)]
    return build_dataset("pets", split, base, classnames, items)


def flowers102_classnames() -> list[str]:
    """The 102 flower names in label order (the dataset ships none)."""
    text = resources.files("ex2.data").joinpath("flowers102_classnames.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@splits("test", "train", "val")
def load_flowers102(root: Path | None, split: str) -> ImageDataset:
    """Oxford Flowers102, 102 flower species (train/val/test as setid.mat defines)."""
    base = find_root("flowers102", root, "imagelabels.mat", ["flowers-102", "flowers102"], FLOWERS_LAYOUT)
    labels = np.atleast_1d(load_mat(base / "imagelabels.mat")["labels"])
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    ids = np.atleast_1d(load_mat(base / "setid.mat")[key])
    items = [(base / "jpg" / f"image_{i:05d}.jpg", int(labels[i - 1]) - 1) for i in ids.tolist()]
    return build_dataset("flowers102", split, base, flowers102_classnames(), items)


@splits("test", "train")
def load_cars(root: Path | None, split: str) -> ImageDataset:
    """Stanford Cars, 196 make-model-year classes (train/test; torchvision's layout)."""
    base = find_root("cars", root, "devkit/cars_meta.mat", ["stanford_cars"], CARS_LAYOUT)
    if split == "train":
        annos_file, images = base / "devkit" / "cars_train_annos.mat", base / "cars_train"
    else:
        annos_file, images = base / "cars_test_annos_withlabels.mat", base / "cars_test"
        if not annos_file.is_file() and (base / "devkit" / annos_file.name).is_file():
            annos_file = base / "devkit" / annos_file.name
    if not annos_file.is_file():
        raise DatasetError(f"cars: {base} has no {annos_file.relative_to(base)}; expected {CARS_LAYOUT}")
    annotations = np.atleast_1d(load_mat(annos_file)["annotations"])
    items = [(images / str(a["fname"]), int(a["class"]) - 1) for a in annotations]
    names = np.atleast_1d(load_mat(base / "devkit" / "cars_meta.mat")["class_names"])
    classnames = [clean_name(str(name)) for name in names]
    return build_dataset("cars", split, base, classnames, items)


def _dog_name(folder: str) -> str:
    """``n02085620-Chihuahua`` -> ``Chihuahua dog``; EX2 appends " dog" where it is missing."""
    name = clean_name(folder.split("-", 1)[-1])
    return name if "dog" in name.lower() else f"{name} dog"


def _dog_list(base: Path, split: str) -> list[str]:
    """Relative image paths of a split, from ``{split}_list.mat`` or ``{split}_list.txt``."""
    for folder in (base / "lists", base):
        if (folder / f"{split}_list.mat").is_file():
            files = np.atleast_1d(load_mat(folder / f"{split}_list.mat")["file_list"])
            return [str(f) for f in files]
        if (folder / f"{split}_list.txt").is_file():
            return read_lines(folder / f"{split}_list.txt")
    raise DatasetError(f"dogs: {base} has no lists/{split}_list.mat; expected {DOGS_LAYOUT}")


@splits("test", "train")
def load_dogs(root: Path | None, split: str) -> ImageDataset:
    """Stanford Dogs, 120 breeds (train/test from the official lists)."""
    base = find_root("dogs", root, "Images", ["stanford_dogs", "StanfordDogs"], DOGS_LAYOUT)
    folders = sorted(d.name for d in (base / "Images").iterdir() if d.is_dir())
    class_of = {folder: i for i, folder in enumerate(folders)}
    items = []
    for rel in _dog_list(base, split):
        folder = rel.split("/", 1)[0]
        if folder not in class_of:
            raise DatasetError(f"dogs: list entry {rel} names no folder under {base / 'Images'}")
        items.append((base / "Images" / rel, class_of[folder]))
    return build_dataset("dogs", split, base, [_dog_name(f) for f in folders], items)


AIRCRAFT_LEVELS = {"variant": ("aircraft", "variants.txt"), "family": ("aircraft_family", "families.txt")}


def _aircraft(root: Path | None, split: str, level: str) -> tuple[Path, list[str], list[tuple[Path, int]]]:
    """The root, the classes of ``level`` (``variant`` or ``family``) and a split's items."""
    name, class_file = AIRCRAFT_LEVELS[level]
    base = find_root(name, root, f"data/{class_file}", ["fgvc-aircraft-2013b"], AIRCRAFT_LAYOUT)
    classes = read_lines(base / "data" / class_file)
    class_of = {c: i for i, c in enumerate(classes)}
    items = []
    for line in read_lines(base / "data" / f"images_{level}_{split}.txt"):
        image_id, label = line.split(maxsplit=1)  # 1025794 707-320
        if label not in class_of:
            raise DatasetError(f"{name}: {level} {label!r} of image {image_id} is not in {class_file}")
        items.append((base / "data" / "images" / f"{image_id}.jpg", class_of[label]))
    return base, classes, items


@splits("test", "train", "val", "trainval")
def load_aircraft(root: Path | None, split: str) -> ImageDataset:
    """FGVC-Aircraft, 100 variants (train/val/trainval/test)."""
    base, variants, items = _aircraft(root, split, "variant")
    classnames = [f"{clean_name(v)} aircraft" for v in variants]
    return build_dataset("aircraft", split, base, classnames, items)


@splits("test", "train", "val", "trainval")
def load_aircraft_family(root: Path | None, split: str) -> ImageDataset:
    """FGVC-Aircraft at family level, 70 families as in families.txt (train/val/trainval/test)."""
    base, families, items = _aircraft(root, split, "family")
    return build_dataset("aircraft_family", split, base, families, items)
