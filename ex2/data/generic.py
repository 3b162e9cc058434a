"""Datasets in generic formats: an ImageFolder tree, a CSV manifest, a saved Hugging Face dataset."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import PIL.Image

from ex2.core.io import cache_dir, materialise
from ex2.data.dataset import DatasetError, ImageDataset, build_dataset, check_utf8, clean_name, splits

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLIT_NAMES = ("train", "val", "validation", "trainval", "test")


def _need_root(name: str, root: Path | None, expected: str) -> Path:
    if root is None:
        raise DatasetError(f"{name}: no root given; expected {expected}")
    return Path(root).expanduser()


def _class_tree(root: Path, split: str) -> Path:
    """``root/split`` when it exists, else ``root`` itself unless it holds other split folders."""
    if (root / split).is_dir():
        return root / split
    others = [s for s in SPLIT_NAMES if (root / s).is_dir()]
    if others:
        raise DatasetError(f"imagefolder: {root} has split folder(s) {', '.join(others)} but no {split}/")
    return root


def _inside(path: Path, tree: Path) -> bool:
    return path == tree or tree in path.parents


def class_folders(tree: Path, name: str = "imagefolder") -> list[Path]:
    """The class subfolders of ``tree``, sorted; hidden ones and links back into the tree (a link to
    ``.`` would make a class of every image again) are left out, each link with a printed note."""
    tree_real = tree.resolve()
    folders = []
    for folder in sorted(d for d in tree.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if folder.is_symlink() and _inside(folder.resolve(), tree_real):
            print(f"{name}: skipping {folder} -> {folder.readlink()}: a link to a folder inside {tree} "
                  "is no class of its own")
            continue
        folders.append(folder)
    return folders


@splits()
def load_imagefolder(root: Path | None, split: str) -> ImageDataset:
    """Any ImageFolder tree: ROOT/[SPLIT/]CLASS/*.jpg, class = subfolder name."""
    root = _need_root("imagefolder", root, "a folder ROOT/CLASS/*.jpg or ROOT/SPLIT/CLASS/*.jpg")
    if not root.is_dir():
        raise DatasetError(f"imagefolder: {root} is not a folder; expected ROOT/CLASS/*.jpg")
    tree = _class_tree(root, split)
    folders = class_folders(tree)
    if not folders:
        raise DatasetError(f"imagefolder: {tree} has no class subfolders; expected {tree}/CLASS/*.jpg")
    for folder in folders:
        check_utf8(folder.name, f"imagefolder: class folder in {tree}:")
    items = [
        (path, label)
        for label, folder in enumerate(folders)
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    return build_dataset("imagefolder", split, tree, [clean_name(f.name) for f in folders], items)


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(
                f"csv: {path} lacks column(s) {', '.join(sorted(missing))}; expected a header path,label"
            )
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        if not (row["path"] or "").strip() or not (row["label"] or "").strip():
            raise DatasetError(f"csv: {path}:{number}: empty path or label")
    return rows


@splits()
def load_csv(root: Path | None, split: str) -> ImageDataset:
    """A CSV manifest, header path,label (paths relative to the CSV's folder; optional split column)."""
    path = _need_root("csv", root, "a CSV file with header path,label, or a folder holding SPLIT.csv")
    if path.is_dir():
        path = path / f"{split}.csv"
    if not path.is_file():
        raise DatasetError(f"csv: {path} does not exist; expected a CSV file with header path,label")
    rows = _read_manifest(path)
    labels = sorted({row["label"].strip() for row in rows})  # class ids shared by all splits
    if rows and "split" in rows[0]:
        rows = [row for row in rows if (row["split"] or "").strip() == split]
    class_of = {label: i for i, label in enumerate(labels)}
    items = [(path.parent / row["path"].strip(), class_of[row["label"].strip()]) for row in rows]
    return build_dataset("csv", split, path.parent, [clean_name(label) for label in labels], items)


def _hf_columns(ds, root: Path) -> tuple[str, str]:
    """The image column and the ClassLabel column of a Hugging Face dataset."""
    import datasets

    image = [name for name, f in ds.features.items() if isinstance(f, datasets.Image)]
    label = [name for name, f in ds.features.items() if isinstance(f, datasets.ClassLabel)]
    if not image or not label:
        raise DatasetError(
            f"hf_disk: {root} needs an Image column and a ClassLabel column; its features are "
            f"{', '.join(f'{k}: {type(v).__name__}' for k, v in ds.features.items())}"
        )
    return image[0], label[0]


def _image_suffix(data: bytes, name: str | None) -> str:
    if name and Path(name).suffix.lower() in IMAGE_SUFFIXES:
        return Path(name).suffix.lower()
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            return "." + (image.format or "img").lower().replace("jpeg", "jpg")
    except (OSError, SyntaxError, ValueError):
        return ".img"  # unreadable: load_image skips it later with a warning


def _write_hf_images(ds, image_col: str, label_col: str, out: Path) -> None:
    """Every image as a file ``out/LABEL/ROW.ext``, with its original encoded bytes."""
    import datasets
    from tqdm.auto import tqdm

    rows = ds.select_columns([image_col, label_col]).cast_column(image_col, datasets.Image(decode=False))
    for index, row in enumerate(tqdm(rows, desc=f"writing images to {out.parent}", unit="img")):
        label, image = row[label_col], row[image_col]
        if label is None or label < 0 or image is None:
            continue  # an unlabelled row or a missing image
        data = image["bytes"] if image.get("bytes") else Path(image["path"]).read_bytes()
        folder = out / f"{label:04d}"
        folder.mkdir(exist_ok=True)
        (folder / f"{index:07d}{_image_suffix(data, image.get('path'))}").write_bytes(data)


@splits()
def load_hf_disk(root: Path | None, split: str) -> ImageDataset:
    """A Hugging Face datasets folder saved with save_to_disk (Image + ClassLabel columns)."""
    import datasets

    root = _need_root("hf_disk", root, "a folder written by datasets' save_to_disk")
    if not (root / "dataset_dict.json").is_file() and not (root / "state.json").is_file():
        raise DatasetError(
            f"hf_disk: {root} has no dataset_dict.json or state.json; expected a save_to_disk folder"
        )
    ds = datasets.load_from_disk(str(root))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DatasetError(f"hf_disk: {root} has no split {split!r}; its splits are {', '.join(ds)}")
        ds = ds[split]
    image_col, label_col = _hf_columns(ds, root)
    folder = cache_dir() / "datasets" / f"hf-{ds._fingerprint}"
    materialise(folder, lambda tmp: _write_hf_images(ds, image_col, label_col, tmp))
    classnames = [clean_name(name) for name in ds.features[label_col].names]
    items = [(path, int(path.parent.name)) for path in folder.glob("*/*") if path.is_file()]
    return build_dataset("hf_disk", split, root, classnames, items)
