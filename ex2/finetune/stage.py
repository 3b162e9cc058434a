"""Teach a VLM the descriptions: ``ex2 finetune``.

    ex2 finetune --vlm ViT-B-32:openai --dataset cub --data-root DIR --split train \\
        --descriptions runs/inspect/categories.jsonl --categories visual --objective desc --output runs/ft
    ex2 finetune --vlm ViT-B-32:openai --objective grain --annotations grounding.jsonl --output runs/grain
    ex2 finetune --vlm ViT-B-16:openai --init random --objective grain \\
        --annotations cc3m/bboxes_cc3m_pooled.json --captions cc3m/captions_pooled.csv --output runs/grain
    ex2 finetune --vlm openai/clip-vit-base-patch32 ...     # transformers CLIP or SigLIP
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m ex2.cli finetune ...

Objectives
    ``desc``   each image against the batch's descriptions, its class's descriptions the positives
               (multi-positive InfoNCE, both directions), plus ``--name-weight`` times the same loss
               against the class names (``--name-template``), so zero-shot by name is kept.
    ``grain``  GRAIN (Halbe et al.): caption–image InfoNCE, plus a DETR-style region decoder on the
               ViT's tokens (:mod:`ex2.finetune.grain`) whose queries are matched to the annotated
               boxes (Hungarian, ``5·L1 + 2·GIoU``), regressed onto them (``1.5·L1 + 1.5·GIoU``,
               DETR-normalised) and aligned with their region's description (cross-entropy). By
               default as GRAIN's code has it: its decoder (6 pre-norm layers x 512, 5 region
               queries and a global query whose embedding is the caption loss's image side), its
               loss weights, equal captions or descriptions kept as separate columns. Ours by
               name: ``--decoder ex2``, ``--duplicates merged``, ``--box-l1-weight 1.25
               --box-giou-weight 2`` (ex2's earlier weights, tied to the matcher's).
               Annotations: ex2's JSONL (``ex2 annotate``) or GRAIN's ``bboxes_*.json`` with its
               ``captions_*.csv`` (:func:`ex2.finetune.data.read_annotations`).

open_clip models and transformers CLIP and SigLIP models are trained (:mod:`ex2.finetune.towers`);
a model with a learned logit bias (SigLIP) is trained with the sigmoid form of each contrastive
loss, as it was pre-trained. The contrastive terms span every process's batch (features gathered,
the local slice keeping its gradient; :meth:`FinetuneModel.contrast`). Images come from an ex2
dataset, an annotations file or webdataset shards (``--shards``, :func:`shard_data`). The VLM
starts from its pretrained weights or, ``--init random`` (GRAIN trains CLIP from scratch), from
its library's random initialisation of the same architecture.

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

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ex2.core.config import data_root_option, dataset_option, option, save_config, vlm_option
from ex2.core.devices import accelerate_state_released
from ex2.core.io import append_jsonl, check_output_path, output_lock, write_json
from ex2.data.images import quiet_worker
from ex2.finetune.batches import (
    Batcher,
    EpochData,
    check_shards,
    class_texts,
    collate_grain,
    desc_data,
    grain_data,
    shard_data,
)
from ex2.finetune.checkpoints import checkpoints, plot_log, resume_step, save_checkpoint
from ex2.finetune.evaluation import evaluate_regions
from ex2.finetune.grain import GRAIN_LOSS_WEIGHTS, GRAIN_MATCH_WEIGHTS
from ex2.finetune.model import FinetuneModel, build_model, merge_lora
from ex2.finetune.towers import Towers

__all__ = ["FinetuneConfig", "evaluate_regions", "run", "train"]


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
    annotations: str | None = option(None, "grain: JSONL of {image, caption, regions: [{text, box: [x0,y0,x1,y1]}]} "
                                           "(ours), or GRAIN's bboxes_*.json with --captions")
    captions: str | None = option(None, "grain: GRAIN's captions_*.csv (image,caption rows) for a bboxes_*.json "
                                        "--annotations")
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
    init: Literal["pretrained", "random"] = option("pretrained", "the VLM's weights at the start: --vlm's, or its "
                                                                 "architecture's random initialisation (GRAIN: from scratch)")
    decoder: Literal["grain", "ex2"] = option("grain", "grain: GRAIN's region decoder (6 pre-norm layers x 512, 5 "
                                                       "region queries + 1 global query for the caption loss, over all "
                                                       "tokens); ex2: ours (2 post-norm layers x ViT width, 8 queries, "
                                                       "patch tokens, caption loss on the pooled embedding)")
    queries: int | None = option(None, "grain: region queries (default: the --decoder's, 5 or 8)")
    decoder_layers: int | None = option(None, "grain: decoder layers (default: the --decoder's, 6 or 2)")
    match_l1_weight: float = option(GRAIN_MATCH_WEIGHTS[0], "grain: weight of the box L1 in the matching cost (GRAIN's 5)")
    match_giou_weight: float = option(GRAIN_MATCH_WEIGHTS[1], "grain: weight of the GIoU in the matching cost (GRAIN's 2)")
    box_l1_weight: float = option(GRAIN_LOSS_WEIGHTS[0], "grain: loss weight of the box L1 (summed over coordinates, "
                                                         "per annotated box); GRAIN's 1.5, ex2's earlier 1.25")
    box_giou_weight: float = option(GRAIN_LOSS_WEIGHTS[1], "grain: loss weight of 1 - GIoU (per annotated box); "
                                                           "GRAIN's 1.5, ex2's earlier 2")
    region_weight: float = option(1.0, "grain: region–description cross-entropy weight (GRAIN's word_loss_weight 1)")
    duplicates: Literal["apart", "merged"] = option("apart", "grain: equal captions or descriptions in a batch: apart "
                                                             "(GRAIN's: one column each) or merged (ours: one column, "
                                                             "positive for all that brought it)")
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
                     "texts_per_class", "queries", "decoder_layers", "lora_rank", "save_total_limit", "shuffle_buffer"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"--precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        for flag, value in (("--descriptions", self.descriptions), ("--annotations", self.annotations),
                            ("--captions", self.captions)):
            if value and not Path(value).is_file():
                raise FileNotFoundError(f"{flag} file {value} does not exist")
        grain_boxes = bool(self.annotations) and Path(self.annotations).suffix == ".json"
        if grain_boxes != bool(self.captions):
            raise ValueError("GRAIN's bboxes_*.json --annotations and its --captions captions_*.csv go together; "
                             "an annotations JSONL (ours) holds its captions")
        if "{}" not in self.name_template:
            raise ValueError(f"--name-template needs a {{}} for the class name, got {self.name_template!r}")
        self._check_rates()

    def _check_rates(self) -> None:
        """Learning rates above 0, weights and norms at 0 or above, all finite (NaN refused too)."""
        for name in ("learning_rate", "head_learning_rate"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm", "match_l1_weight", "match_giou_weight", "box_l1_weight",
                     "box_giou_weight", "region_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")


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


def _mean(accelerator, sums: dict[str, float], count: int) -> dict[str, float]:
    """Each logged value's mean over the micro-batches since the last log and over the processes."""
    keys = sorted(sums)
    values = torch.tensor([sums[k] / max(count, 1) for k in keys], device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean") if accelerator.num_processes > 1 else values
    return {k: round(float(v), 6) for k, v in zip(keys, values.tolist(), strict=True)}


def _loader(config: FinetuneConfig, data, collate) -> torch.utils.data.DataLoader:
    if isinstance(data, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(data, batch_size=config.batch_size, num_workers=config.num_workers,
                                           collate_fn=collate, worker_init_fn=quiet_worker)
    return torch.utils.data.DataLoader(data, batch_size=config.batch_size, shuffle=False,
                                       drop_last=len(data) >= config.batch_size, num_workers=config.num_workers,
                                       collate_fn=collate, worker_init_fn=quiet_worker)


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


def _examples(config: FinetuneConfig, towers: Towers, size: int) -> tuple:
    """(examples, class names, descriptions per class) of an ex2 dataset or annotations file, read
    and checked before the run folder exists; (None, class names, descriptions) for ``--shards``,
    whose stream starts at the resumed step (:func:`_stream`)."""
    if config.shards:
        check_shards(config.shards)
        if config.objective == "grain":
            return None, None, None
        from ex2.data import concept_names

        classnames = concept_names(config.dataset, config.data_root)
        return None, classnames, class_texts(config, classnames)
    if config.objective == "desc":
        return desc_data(config, towers.preprocess)
    return grain_data(config, towers.preprocess, size), None, None


def _stream(config: FinetuneConfig, towers: Towers, size: int, accelerator, step: int, examples: tuple):
    """(the batcher, the stream of (epoch, batch) from optimiser step ``step`` on)."""
    data, classnames, texts = examples
    collate = collate_grain if config.objective == "grain" else None
    if config.shards:
        data = shard_data(config, towers.preprocess, size, classnames, step)
    loader = _loader(config, data, collate)
    batcher = Batcher(config, towers, accelerator.device, classnames, texts)
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
    model = build_model(config)
    towers, size = model.towers, model.towers.shape(model.clip)["image_size"]
    examples = _examples(config, towers, size)
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
    step = resume_step(accelerator, config, output, log)
    batcher, stream = _stream(config, towers, size, accelerator, step, examples)
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

    unwrapped = build_model(config)  # a full copy on the CPU in fp32, whatever the sharding or precision
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
        "captions": str(Path(config.captions).resolve()) if config.captions else None, "init": config.init,
        "shards": config.shards, "dataset": config.dataset, "split": config.split, "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision, "last_log": last, "vlm": str(folder.resolve()),
        "region_decoder": unwrapped.decoder.shape if unwrapped.decoder is not None else None,
    })
    accelerator.print(f"fine-tuned model: {folder} (use --vlm {folder})")


def run(config: FinetuneConfig) -> Path:
    """Fine-tune, save the model and return the run folder."""
    check_output_path(config.output, "folder")
    if not config.resume and checkpoints(Path(config.output)):
        raise ValueError(
            f"{config.output} already holds checkpoints of a run: pass --resume to continue it, "
            "or choose another --output"
        )
    main_process = int(os.environ.get("RANK", "0")) == 0  # every process of a launch runs this
    with output_lock(config.output, "ex2 finetune") if main_process else contextlib.nullcontext():
        with accelerate_state_released():
            train(config)
    return Path(config.output)

