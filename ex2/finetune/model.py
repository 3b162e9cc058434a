"""The module ``ex2 finetune`` trains: the VLM (LoRA layers, if any) and GRAIN's region decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ex2.finetune.losses import (
    contrastive,
    first_columns,
    gather_rows,
    rank_and_world,
    share_gradient,
    top1_positive,
)
from ex2.finetune.towers import Towers, load_towers


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
        _, world = rank_and_world()
        all_images, all_texts, all_labels = gather_rows(images), gather_rows(texts), gather_rows(labels)
        all_owners, all_ids = gather_rows(owners), gather_rows(ids)
        keep = first_columns(all_owners, all_ids)
        positives = all_labels[:, None] == all_owners[keep][None, :]
        logits = self.logits(all_images, all_texts[keep], world)
        loss = self.contrastive(logits, positives)
        # texts dropped as another process's duplicates still belong to this process's graph (DDP)
        backward = world * loss + 0 * texts.sum()
        return loss, backward, top1_positive(logits, positives).detach()

    def images(self, pixels: torch.Tensor, tokens: str | None = None):
        """(normalised pooled image features, the ViT's ``tokens`` ("all" or "patches") or None)."""
        pooled, hidden = self.towers.encode_image(self.clip, pixels, tokens)
        return F.normalize(pooled, dim=-1), hidden

    @property
    def decoder_tokens(self) -> str:
        """The image tokens the region decoder attends to (its preset's)."""
        from ex2.finetune.grain import DECODERS

        return DECODERS[self.decoder.shape["kind"]].tokens

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
        """GRAIN's terms: the caption contrast (on the decoder's global query where it has one, else
        on the pooled embedding), the box L1 and GIoU and the region–description cross-entropy."""
        from ex2.finetune.grain import region_losses

        pooled, tokens = self.images(pixels, self.decoder_tokens)
        boxes, embeds, image = self.decoder(tokens)
        images = pooled if image is None else F.normalize(image.float(), dim=-1)
        out = region_losses(boxes, embeds, regions, region_targets, self.texts(region_texts), self.scale(),
                            weights["match"])
        out["caption"], backward, out["caption_acc"] = self.contrast(images, self.texts(texts), labels, owners, ids)
        regional = (weights["region"] * out["region_text"] + weights["l1"] * out["box_l1"]
                    + weights["giou"] * out["box_giou"])
        unused = 0 * pooled.sum() if image is not None else 0  # the pooled head stays in DDP's graph
        out["loss"], out["backward"] = out["caption"] + regional, backward + regional + unused
        return out


def add_lora(clip: torch.nn.Module, config, targets: tuple[str, ...] = ()) -> torch.nn.Module:
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



def build_model(config) -> FinetuneModel:
    """The model a ``FinetuneConfig`` trains (LoRA layers and region decoder added; the VLM's
    weights reinitialised under ``--init random``), on the CPU in fp32."""
    clip, towers = load_towers(config.vlm)
    if config.init == "random":
        clip = towers.random_init(clip)
    if config.method == "lora":
        clip = add_lora(clip, config, towers.lora_targets)
    decoder = None
    if config.objective == "grain":
        from ex2.finetune.grain import build_decoder

        shape = towers.shape(clip)
        decoder = build_decoder(config.decoder, shape["width"], shape["embed_dim"], config.queries,
                                config.decoder_layers)
    return FinetuneModel(clip, towers, decoder)
