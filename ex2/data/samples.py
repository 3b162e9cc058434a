"""``samples``: the embedded, offline default dataset built from photos shipped with
scikit-image and scikit-learn.

This is a smoke-scale set for demos and tests, not a benchmark: eight concepts, one real photo
each, expanded into deterministic augmented views (crops, flips, small rotations, colour jitter
from a fixed seed). Concepts were chosen so that the photo's main object is an ImageNet-1k class
or close to one, since the embedded ``conse`` VLM sees images through EfficientNet-Lite0's
ImageNet probabilities (its top classes on each photo are noted below). The views are written
once as PNG files to ``cache_dir()/datasets/samples-v1/<class>/NN.png`` and reused afterwards.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageEnhance

from ex2.core.io import cache_dir, materialise
from ex2.data.dataset import DatasetError, ImageDataset, build_dataset, splits

VERSION = "samples-v1"  # bump when concepts, views or augmentation change
VIEWS_PER_CONCEPT = 10
SIZE = 256  # every view is SIZE x SIZE pixels
SEED = 1234


def _skimage(
    name: str, box: tuple[int, int, int, int] | None = None, index: int | None = None
) -> PIL.Image.Image:
    import skimage.data

    array = getattr(skimage.data, name)()
    image = PIL.Image.fromarray(array if index is None else array[index]).convert("RGB")
    return image.crop(box) if box else image


def _sklearn(filename: str) -> PIL.Image.Image:
    # read the file load_sample_image reads, without importing sklearn (seconds on a busy CPU)
    path = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets" / "images" / filename
    if not path.is_file():
        from sklearn.datasets import load_sample_image

        return PIL.Image.fromarray(load_sample_image(filename)).convert("RGB")
    with PIL.Image.open(path) as image:
        return image.convert("RGB")


# class name -> its source photo (EfficientNet-Lite0's top ImageNet classes on it)
SAMPLE_CONCEPTS: dict[str, Callable[[], PIL.Image.Image]] = {
    "cat": partial(_skimage, "chelsea"),  # Egyptian cat, tiger cat, tabby
    "espresso": partial(_skimage, "coffee"),  # espresso 0.94
    "rocket": partial(_skimage, "rocket"),  # missile, drilling platform, projectile, space shuttle
    "tripod": partial(_skimage, "camera"),  # tripod 0.95 (the cameraman's)
    "motorcycle": partial(_skimage, "stereo_motorcycle", index=0),  # moped, motor scooter
    "helmet": partial(_skimage, "astronaut", box=(300, 300, 512, 512)),  # football/crash helmet
    "temple": partial(_sklearn, "china.jpg"),  # palace, bell cote, monastery
    "dahlia": partial(_sklearn, "flower.jpg"),  # daisy (ImageNet-1k has no dahlia)
}


def _rotate(image: PIL.Image.Image, degrees: float) -> PIL.Image.Image:
    """Rotate, then crop to the largest centred box with no empty corners."""
    width, height = image.size
    rotated = image.rotate(degrees, resample=PIL.Image.BICUBIC)
    theta = np.deg2rad(abs(degrees))
    scale = 1 / (np.cos(theta) + np.sin(theta) * max(width / height, height / width))
    w, h = int(width * scale), int(height * scale)
    return rotated.crop(((width - w) // 2, (height - h) // 2, (width + w) // 2, (height + h) // 2))


def _random_crop(image: PIL.Image.Image, rng: np.random.Generator) -> PIL.Image.Image:
    """A crop of 55-100% of the area with aspect ratio 3/4..4/3, like RandomResizedCrop."""
    width, height = image.size
    area = width * height * rng.uniform(0.55, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w = min(width, int(round(np.sqrt(area * ratio))))
    h = min(height, int(round(np.sqrt(area / ratio))))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return image.crop((left, top, left + w, top + h))


def _centre_square(image: PIL.Image.Image) -> PIL.Image.Image:
    width, height = image.size
    side = min(width, height)
    return image.crop(((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2))


def augmented_view(photo: PIL.Image.Image, concept_id: int, view: int) -> PIL.Image.Image:
    """View 0 is the centred photo; others are a seeded rotation, crop, flip and colour jitter."""
    if view == 0:
        return _centre_square(photo).resize((SIZE, SIZE), PIL.Image.BICUBIC)
    rng = np.random.default_rng([SEED, concept_id, view])
    image = _random_crop(_rotate(photo, rng.uniform(-10, 10)), rng)
    if rng.random() < 0.5:
        image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
    for enhance in (PIL.ImageEnhance.Brightness, PIL.ImageEnhance.Contrast, PIL.ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.8, 1.2))
    return image.resize((SIZE, SIZE), PIL.Image.BICUBIC)


def _write_samples(out: Path) -> None:
    for concept_id, (name, photo) in enumerate(SAMPLE_CONCEPTS.items()):
        folder = out / name.replace(" ", "_")
        folder.mkdir()
        source = photo()
        for view in range(VIEWS_PER_CONCEPT):
            augmented_view(source, concept_id, view).save(folder / f"{view:02d}.png", compress_level=1)


@splits("test")
def load_samples(root: Path | None, split: str) -> ImageDataset:
    """Embedded offline default: 8 concepts from scikit-image/scikit-learn photos, 10 views each."""
    # a root, if given, is the folder to hold (or holding) the views instead of the cache
    folder = Path(root).expanduser() if root else cache_dir() / "datasets" / VERSION
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"samples: --data-root {folder} is a file; expected a folder to hold the views "
                           "(or no --data-root: they are kept in the ex2 cache)")
    materialise(folder, _write_samples)
    classnames = list(SAMPLE_CONCEPTS)
    items = []
    for label, name in enumerate(classnames):
        class_dir = folder / name.replace(" ", "_")
        if not class_dir.is_dir():
            raise DatasetError(f"samples: {folder} has no {class_dir.name}/; delete it to rebuild")
        items += [(path, label) for path in class_dir.glob("*.png")]
    return build_dataset("samples", split, folder, classnames, items)
