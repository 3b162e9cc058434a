"""What ``ex2 finetune`` trains on: datasets of examples (an ex2 dataset's images with their
classes for ``desc``, grounded images for ``grain``, webdataset shards for either) and the turning
of a loader batch into the model's inputs (:class:`Batcher`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ex2.finetune.losses import position_ids, text_ids
from ex2.finetune.towers import Towers


class EpochData(torch.utils.data.Dataset):
    """Items in a fresh seeded order each epoch (``reorder``: not ``set_epoch``, which accelerate
    calls with its own count), so a resumed run sees the same batches it would have seen;
    accelerate shards the sequence across processes."""

    def __init__(self, items: list, load, seed: int) -> None:
        self.items, self.load, self.seed = items, load, seed
        self.order = list(range(len(items)))

    def reorder(self, epoch: int) -> None:
        self.order = np.random.default_rng((self.seed, epoch)).permutation(len(self.items)).tolist()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.load(self.items[self.order[index]])


def square(image, size: int):
    """The image resized to ``size``² (boxes in normalised coordinates stay true; no crop)."""
    return image.resize((size, size))


def class_texts(config, classnames: list[str]) -> list[list[str]]:
    """Descriptions per class id (the class's name in ``--name-template`` where it has none)."""
    from ex2.classify.descriptions import align_descriptions, load_descriptions

    descriptions = load_descriptions(config.descriptions, config.categories)
    texts, _ = align_descriptions(classnames, descriptions, allow_missing=True, source=config.descriptions)
    return [t or [config.name_template.format(name)] for t, name in zip(texts, classnames, strict=True)]


def desc_data(config, transform) -> tuple[EpochData, list[str], list[list[str]]]:
    """(the dataset's images, class names, descriptions per class)."""
    from ex2.data import load_dataset
    from ex2.data.images import load_image

    dataset = load_dataset(config.dataset, config.data_root, config.split)
    if not dataset.items:
        raise ValueError(f"dataset {config.dataset} split {config.split} has no images")

    def load(item):
        path, label = item
        return transform(load_image(path, strict=True)), label

    return EpochData(dataset.items, load, config.seed), dataset.classnames, class_texts(config, dataset.classnames)


def grain_item(image, caption: str, regions: list, transform, size: int):
    """A grain example: (pixels, caption, region texts, region boxes ``[G, 4]`` cxcywh)."""
    from torchvision.ops import box_convert

    boxes = torch.tensor([box for _, box in regions], dtype=torch.float32).reshape(-1, 4)
    pixels = transform(square(image, size))
    return pixels, caption, [text for text, _ in regions], box_convert(boxes, "xyxy", "cxcywh")


def grain_data(config, transform, size: int) -> EpochData:
    from ex2.data.images import load_image
    from ex2.finetune.data import read_annotations

    def load(record):
        return grain_item(load_image(record.image, strict=True), record.caption, record.regions, transform, size)

    return EpochData(read_annotations(config.annotations, config.captions), load, config.seed)


def webdataset():
    """The webdataset package (an optional extra), or an ImportError saying how to install it."""
    try:
        import webdataset
        import webdataset.shardlists
    except ImportError as err:
        raise ImportError("--shards reads webdataset shards: pip install 'ex2[webdataset]'") from err
    return webdataset


def check_shards(pattern: str) -> list[str]:
    """The shards ``pattern`` names (brace-expanded, as webdataset reads it); each local one must open as a
    tar archive, else a ValueError naming it. Remote or piped shards are read as they come."""
    import tarfile

    urls = webdataset().shardlists.expand_urls(pattern)
    for url in urls:
        path = Path(url.removeprefix("file:"))
        if "://" in url or url.startswith("pipe:"):
            continue
        if not path.is_file():
            raise FileNotFoundError(f"--shards {pattern}: shard {path} does not exist")
        try:
            with tarfile.open(path):
                pass
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"--shards {pattern}: {path} is not a readable tar shard ({err})") from None
    return urls


def shard_data(config, transform, size: int, classnames: list[str] | None, start: int):
    """An endless stream of examples from ``--shards``: each process and loader worker draws shards
    at random (with replacement, as open_clip does for large sets) seeded by ``--seed``, its rank and
    worker and the step it starts at (a resumed run reads on, it does not replay), and shuffles
    samples in a buffer of ``--shuffle-buffer``."""
    wds = webdataset()
    from ex2.finetune.data import shard_record

    index = {name: i for i, name in enumerate(classnames or [])}

    def load(sample):
        record = shard_record(sample)
        where = f"shard {sample.get('__url__')} sample {sample.get('__key__')}"
        if config.objective == "grain":
            if not record.caption:
                raise ValueError(f"{where}: no caption (txt, or json caption) for --objective grain")
            return grain_item(record.image, record.caption, record.regions, transform, size)
        label = index.get(record.label, record.label) if isinstance(record.label, str) else record.label
        if not isinstance(label, int) or not 0 <= label < len(index):
            raise ValueError(f"{where}: class {record.label!r} is not one of the {len(index)} classes of "
                             f"{config.dataset} (cls: an index, or json class: a name)")
        return transform(record.image), label

    seed = config.seed * 1_000_003 + start
    return wds.DataPipeline(wds.ResampledShards(config.shards, seed=seed, deterministic=True),
                            wds.tarfile_to_samples(), wds.shuffle(config.shuffle_buffer, seed=seed), wds.map(load))


def collate_grain(batch):
    pixels, captions, texts, boxes = zip(*batch, strict=True)
    return torch.stack(pixels), list(captions), list(texts), list(boxes)


def desc_inputs(labels: torch.Tensor, class_texts: list[list[str]], classnames: list[str], config, rng) -> dict:
    """Texts of a desc batch: up to ``texts_per_class`` descriptions of each class present, their
    classes (``owners``) and ids; the class names of the batch's classes for the name term."""
    present = sorted(set(labels.tolist()))
    texts, owner = [], []
    for label in present:
        pool = class_texts[label]
        chosen = rng.choice(len(pool), size=min(config.texts_per_class, len(pool)), replace=False)
        texts += [pool[i] for i in sorted(chosen)]
        owner += [label] * len(chosen)
    names = [config.name_template.format(classnames[label]) for label in present]
    return {"texts": texts, "labels": labels, "owners": torch.tensor(owner), "ids": text_ids(texts),
            "names": names, "name_owners": torch.tensor(present), "name_ids": text_ids(names)}


def grain_inputs(captions: list[str], region_texts: list[list[str]], boxes: list[torch.Tensor],
                 duplicates: str = "apart") -> dict:
    """Texts of a grain batch. ``duplicates="apart"`` (GRAIN's): every caption and every region's
    description is its own column, an image positive only with its own caption, a region only
    with its own description, even where two are equal; ``"merged"`` (ours): equal texts are one
    column, positive for every image or region that brought it."""
    if duplicates == "apart":
        texts = [t for group in region_texts for t in group]
        starts = np.cumsum([0] + [len(group) for group in region_texts])
        targets = [torch.arange(int(start), int(start) + len(group)) for start, group in zip(starts, region_texts, strict=False)]
        ids = position_ids(len(captions))
    else:
        texts = list(dict.fromkeys(t for group in region_texts for t in group))
        index = {t: i for i, t in enumerate(texts)}
        targets = [torch.tensor([index[t] for t in group], dtype=torch.long) for group in region_texts]
        ids = text_ids(captions)  # an image is positive with its caption, and with an equal one
    return {"texts": captions, "labels": ids, "owners": ids, "ids": ids, "region_texts": texts,
            "regions": boxes, "region_targets": targets}


class Batcher:
    """Turns a loader batch into the model's inputs (texts tokenised, on the device)."""

    def __init__(self, config, towers: Towers, device, classnames=None, class_texts=None) -> None:
        self.config, self.towers, self.device = config, towers, device
        self.classnames, self.class_texts = classnames, class_texts

    def tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in self.towers.tokenize(texts).items()}

    def __call__(self, batch, micro: int) -> dict:
        config, device = self.config, self.device
        if config.objective == "desc":
            pixels, labels = batch
            rng = np.random.default_rng((config.seed, micro))
            parts = desc_inputs(labels.cpu(), self.class_texts, self.classnames, config, rng)
            inputs = {"names": self.tokens(parts["names"]), "name_owners": parts["name_owners"].to(device),
                      "name_ids": parts["name_ids"].to(device), "name_weight": config.name_weight}
        else:
            pixels, captions, region_texts, boxes = batch
            parts = grain_inputs(captions, region_texts, boxes, config.duplicates)
            inputs = {"region_texts": self.tokens(parts["region_texts"]),
                      "regions": [b.to(device) for b in parts["regions"]],
                      "region_targets": [t.to(device) for t in parts["region_targets"]],
                      "weights": {"l1": config.box_l1_weight, "giou": config.box_giou_weight,
                                  "region": config.region_weight,
                                  "match": (config.match_l1_weight, config.match_giou_weight)}}
        inputs.update(pixels=pixels.to(device), texts=self.tokens(parts["texts"]),
                      **{key: parts[key].to(device) for key in ("labels", "owners", "ids")})
        return inputs
