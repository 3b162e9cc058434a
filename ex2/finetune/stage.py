"""Teach a VLM the descriptions: ``ex2 finetune``.

    ex2 finetune --vlm ViT-B-32:openai --dataset cub --data-root DIR --split train \\
        --descriptions runs/inspect/categories.jsonl --categories visual --objective desc --output runs/ft
    ex2 finetune --vlm ViT-B-32:openai --objective grain --annotations grounding.jsonl --output runs/grain
    ex2 finetune --vlm openai/clip-vit-base-patch32 ...     # transformers CLIP or SigLIP
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m ex2.cli finetune ...

Objectives
    ``desc``   each image against the batch's descriptions, its class's descriptions the positives
               (multi-positive InfoNCE, both directions), plus ``--name-weight`` times the same loss
               against the class names (``--name-template``), so zero-shot by name is kept.
    ``grain``  GRAIN (Halbe et al.): caption–image InfoNCE, plus a DETR-style region decoder on the
               ViT's patch tokens (:mod:`ex2.finetune.grain`) whose queries are matched to the annotated boxes
               (Hungarian, L1 + GIoU) and aligned with their region's description (cross-entropy).

open_clip models and transformers CLIP and SigLIP models are trained (:mod:`ex2.finetune.towers`);
a model with a learned logit bias (SigLIP) is trained with the sigmoid form of each contrastive
loss, as it was pre-trained. The contrastive terms span every process's batch (features gathered,
the local slice keeping its gradient; :meth:`FinetuneModel.contrast`). Images come from an ex2
dataset, an annotations file or webdataset shards (``--shards``, :func:`shard_data`).

The whole model (``--method full``) or LoRA adapters on the towers' MLP layers (``--method lora``,
peft; merged into the weights when saved) are trained through accelerate: one process on the CPU,
the same code under ``accelerate launch`` for DDP or DeepSpeed (``configs/accelerate/*.yaml``), with
gradient accumulation and bf16 autocast on GPUs. Every ``--save-steps`` steps accelerate's full
state goes to ``OUTPUT/checkpoints/step-N``; ``--resume`` continues from the latest one. ``OUTPUT``
gets ``log.jsonl`` (loss and accuracy per ``--log-steps``), ``loss.png``, ``config.yaml``,
``provenance.json`` and ``model/``: a folder of the base model's kind (open_clip or transformers)
that loads back as an ex2 VLM (``ex2 classify --vlm OUTPUT/model``). ``grain`` also saves
``region_decoder.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ex2.core.config import data_root_option, dataset_option, option, save_config, vlm_option
from ex2.core.devices import accelerate_state_released
from ex2.core.io import append_jsonl, check_output_path, repair_jsonl, write_json, write_jsonl
from ex2.finetune.towers import Towers, load_towers

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer.json"  # written last into a checkpoint: its presence marks it complete


@dataclass
class FinetuneConfig:
    """Fine-tune an open_clip or transformers CLIP/SigLIP VLM on descriptions (desc) or grounded regions (grain)."""

    output: str = option("", "run folder: checkpoints, log.jsonl, loss.png and the fine-tuned model/")
    objective: Literal["desc", "grain"] = option("desc", "desc: images vs their class's descriptions; grain: regions")
    vlm: str = vlm_option("ViT-B-32:openai")
    dataset: str = dataset_option()
    data_root: str | None = data_root_option()
    split: str = option("train", "dataset split to fine-tune on (desc)")
    descriptions: str | None = option(None, "desc: descriptions.jsonl or categories.jsonl (ours) or JSON {class: [texts]}")
    categories: list[str] = option([], "desc: keep only descriptions of these inspection categories (e.g. visual)")
    annotations: str | None = option(None, "grain: JSONL of {image, caption, regions: [{text, box: [x0,y0,x1,y1]}]}")
    shards: str | None = option(None, "webdataset shards instead of --annotations (grain) or the dataset's images "
                                      "(desc), e.g. 'data/{00000..00099}.tar': image + txt or json caption, json "
                                      "regions (grain), cls or json class (desc; the class names are --dataset's)")
    shuffle_buffer: int = option(1000, "--shards: samples shuffled in a buffer by each loader worker")
    name_weight: float = option(1.0, "desc: weight of the image–class-name term (0 turns it off)")
    name_template: str = option("a photo of a {}.", "desc: text made of a class name for the name term")
    texts_per_class: int = option(4, "desc: descriptions drawn per class in a batch")
    method: Literal["full", "lora"] = option("lora", "full: train every weight; lora: adapters on the MLP layers")
    lora_rank: int = option(8, "LoRA rank")
    lora_alpha: int = option(16, "LoRA alpha")
    lora_dropout: float = option(0.0, "LoRA dropout")
    lora_targets: list[str] = option([], "module names LoRA adapts (default: the towers' MLP linears, c_fc and "
                                         "c_proj in open_clip, fc1 and fc2 in transformers)")
    queries: int = option(8, "grain: region queries of the decoder")
    decoder_layers: int = option(2, "grain: transformer decoder layers")
    l1_weight: float = option(5.0, "grain: box L1 weight (matching cost and loss)")
    giou_weight: float = option(2.0, "grain: box GIoU weight (matching cost and loss)")
    region_weight: float = option(1.0, "grain: region–description cross-entropy weight")
    learning_rate: float = option(1e-5, "peak learning rate of the towers (AdamW)")
    head_learning_rate: float = option(1e-4, "grain: learning rate of the region decoder")
    weight_decay: float = option(0.1, "AdamW weight decay")
    warmup_steps: int = option(0, "linear warm-up steps, then the --lr-schedule")
    lr_schedule: Literal["cosine", "constant"] = option("cosine", "after warm-up: cosine decay to 0 at --max-steps, or constant")
    batch_size: int = option(32, "images per process per micro-batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step")
    max_steps: int = option(1000, "optimiser steps")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)")
    save_steps: int = option(500, "save accelerate's state every N steps")
    save_total_limit: int = option(2, "checkpoints kept (oldest removed)")
    log_steps: int = option(10, "log mean loss and accuracy every N steps")
    resume: bool = option(False, "continue from the latest checkpoint in OUTPUT/checkpoints")
    seed: int = option(0, "random seed (shuffling, description draws, initialisation)")
    device: str | None = option(None, "cpu to force the CPU; default: what accelerate chooses")
    precision: str = option("auto", "fp32, bf16, fp16 or auto (bf16 autocast on CUDA, fp32 on CPU)")
    num_workers: int = option(0, "data-loader worker processes")

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("--output DIR is required (the run folder)")
        if self.objective == "desc" and not self.descriptions:
            raise ValueError("--objective desc needs --descriptions FILE (descriptions.jsonl, categories.jsonl or JSON)")
        if self.objective == "grain" and not (self.annotations or self.shards):
            raise ValueError("--objective grain needs --annotations FILE.jsonl ({image, caption, regions}) or --shards")
        if self.shards and self.annotations:
            raise ValueError("give --annotations or --shards, not both")
        if self.categories and self.objective != "desc":
            raise ValueError("--categories filters descriptions; use it with --objective desc")
        self.categories = [c.strip() for item in self.categories for c in item.split(",") if c.strip()]
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "save_steps", "log_steps",
                     "texts_per_class", "queries", "lora_rank", "save_total_limit", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"--precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        for flag, value in (("--descriptions", self.descriptions), ("--annotations", self.annotations)):
            if value and not Path(value).is_file():
                raise FileNotFoundError(f"{flag} file {value} does not exist")
        if "{}" not in self.name_template:
            raise ValueError(f"--name-template needs a {{}} for the class name, got {self.name_template!r}")


# --- losses ------------------------------------------------------------------------------------


def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with several positives: for each image (row) ``-log`` of the softmax mass
    on its positive texts, and for each text (column) on its positive images; the two means averaged.
    With ``positives`` the identity it is CLIP's loss."""
    positives = positives.bool()
    masked = logits.masked_fill(~positives, float("-inf"))
    rows = positives.any(1)
    cols = positives.any(0)
    i2t = (logits.logsumexp(1) - masked.logsumexp(1))[rows].mean()
    t2i = (logits.logsumexp(0) - masked.logsumexp(0))[cols].mean()
    return (i2t + t2i) / 2


def multi_positive_sigmoid(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss with several positives: every (image, text) pair is a binary
    question, positive where ``positives`` says so; summed over texts, averaged over images."""
    signs = positives.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum(1).mean()


def contrastive(logits: torch.Tensor, positives: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """The multi-positive loss of the model's kind: sigmoid (SigLIP) or InfoNCE (CLIP)."""
    return multi_positive_sigmoid(logits, positives) if sigmoid else multi_positive_nce(logits, positives)


def top1_positive(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Fraction of images whose best-scoring text is one of their positives."""
    return positives.bool().gather(1, logits.argmax(1, keepdim=True)).float().mean()


# --- contrast across processes ------------------------------------------------------------------


def text_ids(texts: list[str]) -> torch.Tensor:
    """A 56-bit id per text (a hash), equal for equal texts on every process."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=7).digest(), "big") for t in texts],
                        dtype=torch.long)


def _world() -> tuple[int, int]:
    """(this process's rank, the number of processes)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every process's ``rows`` (their counts may differ) concatenated in rank order; this process's
    own rows keep their gradient, the others' come without (open_clip's ``gather_features``)."""
    import torch.distributed as dist

    rank, world = _world()
    if world == 1:
        return rows
    count = torch.tensor([len(rows)], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    padded = rows.new_zeros((max(int(c) for c in counts), *rows.shape[1:]))
    padded[: len(rows)] = rows.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [part[: int(c)] for part, c in zip(parts, counts, strict=True)]
    parts[rank] = rows
    return torch.cat(parts)


def first_columns(owners: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Indices of the first of each (owner, text) pair, in order: a text two processes (or two
    images with one caption) brought is one column, as it would be in one process's batch."""
    _, inverse = torch.unique(torch.stack([owners, ids], dim=1), dim=0, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full((int(inverse.max()) + 1,), len(ids), device=ids.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin").sort().values


def share_gradient(value: torch.Tensor, world: int) -> torch.Tensor:
    """``value`` whose gradient is divided by ``world``: a parameter every process uses whole in the
    gathered loss (the scale) gets, after DDP's mean of ``world`` times that loss, its true gradient."""
    return value if world == 1 else value / world + (value - value / world).detach()


# --- the trained module --------------------------------------------------------------------------


class FinetuneModel(torch.nn.Module):
    """The VLM (with LoRA layers, if any) and GRAIN's region decoder, behind one ``forward`` so DDP
    and DeepSpeed see every trained parameter used in it. ``towers`` says how the VLM's backend
    encodes (:mod:`ex2.finetune.towers`); it holds no weights.

    The contrastive terms are computed over every process's batch (:meth:`contrast`): the loss is
    the one a single process would compute on the global batch, and the ``backward`` quantity is
    built so that DDP's gradient mean is that loss's gradient. GRAIN's region terms stay per process.
    """

    def __init__(self, clip: torch.nn.Module, towers: Towers, decoder: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.clip, self.decoder = clip, decoder
        self.towers = towers

    def scale(self) -> torch.Tensor:
        return self.towers.logit_scale(self.clip)

    def logits(self, images: torch.Tensor, texts: torch.Tensor, world: int = 1) -> torch.Tensor:
        """Similarities of normalised features: ``scale * cosine (+ bias)``."""
        bias = self.towers.logit_bias(self.clip)
        logits = share_gradient(self.scale(), world) * images @ texts.T
        return logits + share_gradient(bias, world) if bias is not None else logits

    def contrastive(self, logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        return contrastive(logits, positives, sigmoid=self.towers.logit_bias(self.clip) is not None)

    def contrast(self, images, texts, labels, owners, ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, what to backpropagate, top-1) of images against texts over all processes' batches.

        An image is positive with a text when its ``labels`` entry equals the text's ``owners``
        entry (class ids for desc, caption ids for grain); ``ids`` identify texts, so a text brought
        twice is one column. Each process backpropagates ``world`` times the loss through its own
        features; the scale's gradient is shared (:func:`share_gradient`)."""
        _, world = _world()
        all_images, all_texts, all_labels = gather_rows(images), gather_rows(texts), gather_rows(labels)
        all_owners, all_ids = gather_rows(owners), gather_rows(ids)
        keep = first_columns(all_owners, all_ids)
        positives = all_labels[:, None] == all_owners[keep][None, :]
        logits = self.logits(all_images, all_texts[keep], world)
        loss = self.contrastive(logits, positives)
        # texts dropped as another process's duplicates still belong to this process's graph (DDP)
        backward = world * loss + 0 * texts.sum()
        return loss, backward, top1_positive(logits, positives).detach()

    def images(self, pixels: torch.Tensor, tokens: bool = False):
        pooled, patch = self.towers.encode_image(self.clip, pixels, tokens)
        return F.normalize(pooled, dim=-1), patch

    def texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.towers.encode_text(self.clip, tokens), dim=-1)

    def forward(self, pixels: torch.Tensor, texts: dict, labels: torch.Tensor, owners: torch.Tensor,
                ids: torch.Tensor, **extra) -> dict:
        if extra.get("regions") is not None:
            return self._grain(pixels, texts, labels, owners, ids, **extra)
        images, _ = self.images(pixels)
        out = {}
        out["desc"], backward, out["desc_acc"] = self.contrast(images, self.texts(texts), labels, owners, ids)
        loss = out["desc"]
        names = extra.get("names")
        if names is not None and extra.get("name_weight", 0) > 0:
            weight = extra["name_weight"]
            out["name"], name_backward, out["name_acc"] = self.contrast(
                images, self.texts(names), labels, extra["name_owners"], extra["name_ids"])
            loss, backward = loss + weight * out["name"], backward + weight * name_backward
        out["loss"], out["backward"] = loss, backward
        return out

    def _grain(self, pixels, texts, labels, owners, ids, regions, region_texts, region_targets, weights, **_) -> dict:
        from ex2.finetune.grain import region_losses

        images, patch = self.images(pixels, tokens=True)
        boxes, embeds = self.decoder(patch)
        out = region_losses(boxes, embeds, regions, region_targets, self.texts(region_texts), self.scale(),
                            weights["l1"], weights["giou"])
        out["caption"], backward, out["caption_acc"] = self.contrast(images, self.texts(texts), labels, owners, ids)
        regional = weights["region"] * out["region_text"] + weights["l1"] * out["box_l1"] + weights["giou"] * out["box_giou"]
        out["loss"], out["backward"] = out["caption"] + regional, backward + regional
        return out


def add_lora(clip: torch.nn.Module, config: FinetuneConfig, targets: tuple[str, ...] = ()) -> torch.nn.Module:
    """LoRA adapters on ``config.lora_targets`` (else ``targets``, the backend's) in both towers
    (peft); everything else frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(config.lora_targets or targets)
    if not targets:
        raise ValueError("--method lora needs --lora-targets (module names to adapt)")
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets)
    try:
        clip = inject_adapter_in_model(lora, clip)
    except ValueError as err:
        raise ValueError(f"--lora-targets {targets}: {err}") from err
    for name, param in clip.named_parameters():
        param.requires_grad = "lora_" in name
    return clip


def merge_lora(clip: torch.nn.Module) -> torch.nn.Module:
    """Fold LoRA adapters into their base layers and put the plain layers back."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(clip.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(clip.get_submodule(parent_name) if parent_name else clip, child, module.get_base_layer())
    return clip


# --- data --------------------------------------------------------------------------------------


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


def _square(image, size: int):
    """The image resized to ``size``² (boxes in normalised coordinates stay true; no crop)."""
    return image.resize((size, size))


def class_texts(config: FinetuneConfig, classnames: list[str]) -> list[list[str]]:
    """Descriptions per class id (the class's name in ``--name-template`` where it has none)."""
    from ex2.classify.descriptions import align_descriptions, load_descriptions

    descriptions = load_descriptions(config.descriptions, config.categories)
    texts, _ = align_descriptions(classnames, descriptions, allow_missing=True, source=config.descriptions)
    return [t or [config.name_template.format(name)] for t, name in zip(texts, classnames, strict=True)]


def desc_data(config: FinetuneConfig, transform) -> tuple[EpochData, list[str], list[list[str]]]:
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
    pixels = transform(_square(image, size))
    return pixels, caption, [text for text, _ in regions], box_convert(boxes, "xyxy", "cxcywh")


def grain_data(config: FinetuneConfig, transform, size: int) -> EpochData:
    from ex2.data.images import load_image
    from ex2.finetune.data import read_grounding

    def load(record):
        return grain_item(load_image(record.image, strict=True), record.caption, record.regions, transform, size)

    return EpochData(read_grounding(config.annotations), load, config.seed)


def shard_data(config: FinetuneConfig, transform, size: int, classnames: list[str] | None, start: int):
    """An endless stream of examples from ``--shards``: each process and loader worker draws shards
    at random (with replacement, as open_clip does for large sets) seeded by ``--seed``, its rank and
    worker and the step it starts at (a resumed run reads on, it does not replay), and shuffles
    samples in a buffer of ``--shuffle-buffer``."""
    try:
        import webdataset as wds
    except ImportError as err:
        raise ImportError("--shards reads webdataset shards: pip install 'ex2[webdataset]'") from err
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


def _collate_grain(batch):
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


def grain_inputs(captions: list[str], region_texts: list[list[str]], boxes: list[torch.Tensor]) -> dict:
    distinct = list(dict.fromkeys(t for texts in region_texts for t in texts))
    index = {t: i for i, t in enumerate(distinct)}
    targets = [torch.tensor([index[t] for t in texts], dtype=torch.long) for texts in region_texts]
    ids = text_ids(captions)  # an image is positive with its caption, and with an equal one
    return {"texts": captions, "labels": ids, "owners": ids, "ids": ids, "region_texts": distinct,
            "regions": boxes, "region_targets": targets}


# --- checkpoints, log, saving ------------------------------------------------------------------


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in (output / CHECKPOINTS).glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator, output: Path, step: int, limit: int) -> None:
    folder = output / CHECKPOINTS / f"step-{step:07d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        write_json(folder / STATE_FILE, {"step": step})
        for old in checkpoints(output)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def plot_log(records: list[dict], path: Path) -> Path:
    from ex2.core.plotting import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["loss"] for r in records], label="loss", color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    acc = ax.twinx()
    for key, colour in (("desc_acc", "tab:orange"), ("name_acc", "tab:green"), ("caption_acc", "tab:orange"),
                        ("region_acc", "tab:red")):
        if records and key in records[0]:
            acc.plot(steps, [r[key] for r in records], label=key, color=colour, linestyle="--")
    acc.set_ylabel("top-1 accuracy")
    acc.set_ylim(0, 1)
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


# --- the loop ----------------------------------------------------------------------------------


def _accelerator(config: FinetuneConfig):
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    cpu = config.device == "cpu" or not torch.cuda.is_available()
    precision = config.precision
    if precision == "auto":
        precision = "fp32" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    plugin = GradientAccumulationPlugin(num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False)
    return Accelerator(cpu=cpu, mixed_precision=mixed, gradient_accumulation_plugin=plugin)


def _build(config: FinetuneConfig) -> FinetuneModel:
    """The model to train (LoRA layers and region decoder added), on the CPU in fp32."""
    clip, towers = load_towers(config.vlm)
    if config.method == "lora":
        clip = add_lora(clip, config, towers.lora_targets)
    decoder = None
    if config.objective == "grain":
        from ex2.finetune.grain import RegionDecoder

        shape = towers.shape(clip)
        decoder = RegionDecoder(shape["width"], shape["embed_dim"], config.queries, config.decoder_layers,
                                heads=_heads(shape["width"]))
    return FinetuneModel(clip, towers, decoder)


def _heads(width: int) -> int:
    return next(h for h in (8, 4, 2, 1) if width % h == 0)


def _optimizer(model: FinetuneModel, config: FinetuneConfig) -> torch.optim.Optimizer:
    tower = [p for p in model.clip.parameters() if p.requires_grad]
    groups = [{"params": tower, "lr": config.learning_rate}]
    if model.decoder is not None:
        groups.append({"params": list(model.decoder.parameters()), "lr": config.head_learning_rate})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _schedule(optimizer, config: FinetuneConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Batcher:
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
            parts = grain_inputs(captions, region_texts, boxes)
            inputs = {"region_texts": self.tokens(parts["region_texts"]),
                      "regions": [b.to(device) for b in parts["regions"]],
                      "region_targets": [t.to(device) for t in parts["region_targets"]],
                      "weights": {"l1": config.l1_weight, "giou": config.giou_weight, "region": config.region_weight}}
        inputs.update(pixels=pixels.to(device), texts=self.tokens(parts["texts"]),
                      **{key: parts[key].to(device) for key in ("labels", "owners", "ids")})
        return inputs


def _resume_step(accelerator, config: FinetuneConfig, output: Path, log: Path) -> int:
    found = checkpoints(output)
    if not config.resume or not found:
        if accelerator.is_main_process and log.exists():
            log.unlink()
        return 0
    latest = found[-1]
    accelerator.load_state(str(latest))
    step = json.loads((latest / STATE_FILE).read_text(encoding="utf-8"))["step"]
    if accelerator.is_main_process and log.exists():
        write_jsonl(log, [r for r in repair_jsonl(log, required=("step",)) if r["step"] <= step])
    accelerator.print(f"resuming from {latest} at step {step}")
    return step


def _mean(accelerator, sums: dict[str, float], count: int) -> dict[str, float]:
    """Each logged value's mean over the micro-batches since the last log and over the processes."""
    keys = sorted(sums)
    values = torch.tensor([sums[k] / max(count, 1) for k in keys], device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean") if accelerator.num_processes > 1 else values
    return {k: round(float(v), 6) for k, v in zip(keys, values.tolist(), strict=True)}


def _loader(config: FinetuneConfig, data, collate) -> torch.utils.data.DataLoader:
    if isinstance(data, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(data, batch_size=config.batch_size, num_workers=config.num_workers,
                                           collate_fn=collate)
    return torch.utils.data.DataLoader(data, batch_size=config.batch_size, shuffle=False,
                                       drop_last=len(data) >= config.batch_size, num_workers=config.num_workers,
                                       collate_fn=collate)


def _epochs(data: EpochData, loader, accelerator, micro: int):
    """(epoch, batch) from micro-batch ``micro`` on, epoch after epoch, each in its seeded order."""
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError(f"no batches: {len(data)} items for the batch size")
    epoch, offset = divmod(micro, per_epoch)
    while True:
        data.reorder(epoch)
        for batch in accelerator.skip_first_batches(loader, offset) if offset else loader:
            yield epoch, batch
        epoch, offset = epoch + 1, 0


def _stream(config: FinetuneConfig, towers: Towers, size: int, accelerator, step: int):
    """(the batcher, the stream of (epoch, batch) from optimiser step ``step`` on)."""
    classnames = texts = None
    collate = _collate_grain if config.objective == "grain" else None
    if config.shards:
        from ex2.data import concept_names

        if config.objective == "desc":
            classnames = concept_names(config.dataset, config.data_root)
            texts = class_texts(config, classnames)
        data = shard_data(config, towers.preprocess, size, classnames, step)
    elif config.objective == "desc":
        data, classnames, texts = desc_data(config, towers.preprocess)
    else:
        data = grain_data(config, towers.preprocess, size)
    loader = _loader(config, data, collate)
    batcher = _Batcher(config, towers, accelerator.device, classnames, texts)
    if config.shards:  # each process reads its own shards: accelerate must not split the stream
        return batcher, ((None, batch) for batch in loader)
    loader = accelerator.prepare(loader)
    return batcher, _epochs(data, loader, accelerator, step * config.gradient_accumulation_steps)


def train(config: FinetuneConfig) -> dict:
    """Run the training loop; returns the last logged record (and writes everything into OUTPUT)."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    output = Path(config.output)
    accelerator = _accelerator(config)
    set_seed(config.seed)
    model = _build(config)
    towers, size = model.towers, model.towers.shape(model.clip)["image_size"]
    optimizer = _optimizer(model, config)
    scheduler = _schedule(optimizer, config)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:  # DeepSpeed sizes its batches at prepare, before the data loader exists
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        save_config(config, output)
    accelerator.wait_for_everyone()
    log = output / "log.jsonl"
    step = _resume_step(accelerator, config, output, log)
    batcher, stream = _stream(config, towers, size, accelerator, step)
    micro = step * config.gradient_accumulation_steps
    sums: dict[str, float] = {}
    count, last = 0, {}
    progress = tqdm(total=config.max_steps, initial=step, desc="finetune", disable=not accelerator.is_local_main_process)
    for epoch, batch in stream if step < config.max_steps else ():
        with accelerator.accumulate(model):
            out = model(**batcher(batch, micro))
            accelerator.backward(out.pop("backward"))
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        micro += 1
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach().float())
        count += 1
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        step += 1
        progress.update(1)
        if step % config.log_steps == 0 or step == config.max_steps:
            last = {"step": step, **_mean(accelerator, sums, count), "lr": scheduler.get_last_lr()[0], "epoch": epoch}
            sums, count = {}, 0
            if accelerator.is_main_process:
                append_jsonl(log, last)
            progress.set_postfix(loss=last["loss"])
        if step % config.save_steps == 0 or step == config.max_steps:
            save_checkpoint(accelerator, output, step, config.save_total_limit)
        if step >= config.max_steps:
            break
    progress.close()
    _finish(accelerator, model, config, output, towers.identity, log, last)
    return last


def _finish(accelerator, model, config: FinetuneConfig, output: Path, identity: str, log: Path, last: dict) -> None:
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(model)  # collective: gathers DeepSpeed ZeRO-3 shards
    if not accelerator.is_main_process:
        return
    from safetensors.torch import save_file

    from ex2.core.io import read_jsonl

    unwrapped = _build(config)  # a full copy on the CPU in fp32, whatever the sharding or precision
    unwrapped.load_state_dict(state)
    clip = merge_lora(unwrapped.clip) if config.method == "lora" else unwrapped.clip
    folder = unwrapped.towers.save(clip, output / "model")
    if unwrapped.decoder is not None:
        state = {k: v.detach().float().contiguous().cpu() for k, v in unwrapped.decoder.state_dict().items()}
        save_file(state, output / "region_decoder.safetensors")
    records = read_jsonl(log) if log.exists() else []
    if records:
        plot_log(records, output / "loss.png")
    write_json(output / "provenance.json", {
        "base_vlm": config.vlm, "base_identity": identity, "objective": config.objective, "method": config.method,
        "steps": config.max_steps, "descriptions": str(Path(config.descriptions).resolve()) if config.descriptions else None,
        "categories": config.categories, "annotations": str(Path(config.annotations).resolve()) if config.annotations else None,
        "shards": config.shards, "dataset": config.dataset, "split": config.split, "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision, "last_log": last, "vlm": str(folder.resolve()),
        "region_decoder": unwrapped.decoder.shape if unwrapped.decoder is not None else None,
    })
    accelerator.print(f"fine-tuned model: {folder} (use --vlm {folder})")


@torch.no_grad()
def evaluate_regions(run_dir: str | Path, annotations: str | Path, device: str = "cpu") -> dict[str, float]:
    """Held-out grounding numbers of a ``grain`` run: each annotated region is matched to a query
    (Hungarian, as in training); ``region_top1`` is how often the matched query's embedding scores
    the region's own description highest among all distinct descriptions of ``annotations``,
    ``mean_iou`` the mean IoU of the matched boxes."""
    from safetensors.torch import load_file

    from ex2.data.images import load_image
    from ex2.finetune.data import read_grounding
    from ex2.finetune.grain import RegionDecoder, hungarian_match, matched_iou

    run_dir = Path(run_dir)
    shape = json.loads((run_dir / "provenance.json").read_text(encoding="utf-8")).get("region_decoder")
    if not shape:
        raise ValueError(f"{run_dir} is not a grain run: provenance.json has no region_decoder")
    clip, towers = load_towers(str(run_dir / "model"))
    decoder = RegionDecoder(**shape)
    decoder.load_state_dict(load_file(str(run_dir / "region_decoder.safetensors")))
    model = FinetuneModel(clip, towers, decoder).to(device).eval()
    records = read_grounding(annotations)
    distinct = list(dict.fromkeys(text for record in records for text, _ in record.regions))
    texts = model.texts({k: v.to(device) for k, v in towers.tokenize(distinct).items()}).float()
    size, hits, ious = towers.shape(clip)["image_size"], [], []
    for record in records:
        from torchvision.ops import box_convert

        pixels = towers.preprocess(_square(load_image(record.image, strict=True), size))[None].to(device)
        _, patch = model.images(pixels, tokens=True)
        boxes, embeds = decoder(patch)
        gold = box_convert(torch.tensor([b for _, b in record.regions]), "xyxy", "cxcywh").to(boxes)
        query, region = hungarian_match(boxes[0], gold)
        best = (F.normalize(embeds[0, query].float(), dim=-1) @ texts.T).argmax(-1).cpu()
        hits += [distinct[i] == record.regions[r][0] for i, r in zip(best.tolist(), region.tolist(), strict=True)]
        ious += matched_iou(boxes[0], gold).tolist()
    return {"region_top1": sum(hits) / len(hits), "mean_iou": sum(ious) / len(ious), "regions": len(hits),
            "chance_top1": 1 / len(distinct)}


def run(config: FinetuneConfig) -> Path:
    """Fine-tune, save the model and return the run folder."""
    check_output_path(config.output, "folder")
    if not config.resume and checkpoints(Path(config.output)):
        raise ValueError(
            f"{config.output} already holds checkpoints of a run: pass --resume to continue it, "
            "or choose another --output"
        )
    with accelerate_state_released():
        train(config)
    return Path(config.output)
