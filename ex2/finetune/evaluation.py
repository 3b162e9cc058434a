"""Held-out numbers of a ``grain`` run (:func:`evaluate_regions`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ex2.finetune.model import FinetuneModel


def load_grain_run(run_dir: str | Path, device: str = "cpu") -> FinetuneModel:
    """A ``grain`` run's fine-tuned VLM and region decoder, in eval mode on ``device``."""
    from safetensors.torch import load_file

    from ex2.finetune.grain import load_decoder
    from ex2.finetune.towers import load_towers

    run_dir = Path(run_dir)
    shape = json.loads((run_dir / "provenance.json").read_text(encoding="utf-8")).get("region_decoder")
    if not shape:
        raise ValueError(f"{run_dir} is not a grain run: provenance.json has no region_decoder")
    clip, towers = load_towers(str(run_dir / "model"))
    decoder = load_decoder(shape)
    decoder.load_state_dict(load_file(str(run_dir / "region_decoder.safetensors")))
    return FinetuneModel(clip, towers, decoder).to(device).eval()


@torch.no_grad()
def image_features(model: FinetuneModel, pixels: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` normalised image features as GRAIN classifies with them: the decoder's global
    query (``--decoder grain``), else the VLM's pooled embedding; compare with ``model.texts``."""
    pooled, tokens = model.images(pixels, model.decoder_tokens)
    _, _, image = model.decoder(tokens)
    return pooled if image is None else F.normalize(image.float(), dim=-1)


@torch.no_grad()
def evaluate_regions(run_dir: str | Path, annotations: str | Path, device: str = "cpu",
                     captions: str | Path | None = None) -> dict[str, float]:
    """Held-out grounding numbers of a ``grain`` run: each annotated region is matched to a query
    (Hungarian, as in training); ``region_top1`` is how often the matched query's embedding scores
    the region's own description highest among all distinct descriptions of ``annotations`` (ex2's
    JSONL, or GRAIN's ``bboxes_*.json`` with its ``captions``), ``mean_iou`` the mean IoU of the
    matched boxes."""
    from torchvision.ops import box_convert

    from ex2.data.images import load_image
    from ex2.finetune.batches import square
    from ex2.finetune.data import read_annotations
    from ex2.finetune.grain import hungarian_match, matched_iou

    model = load_grain_run(run_dir, device)
    towers = model.towers
    records = [r for r in read_annotations(annotations, captions) if r.regions]
    distinct = list(dict.fromkeys(text for record in records for text, _ in record.regions))
    texts = model.texts({k: v.to(device) for k, v in towers.tokenize(distinct).items()}).float()
    size, hits, ious = towers.shape(model.clip)["image_size"], [], []
    for record in records:
        pixels = towers.preprocess(square(load_image(record.image, strict=True), size))[None].to(device)
        _, tokens = model.images(pixels, model.decoder_tokens)
        boxes, embeds, _ = model.decoder(tokens)
        gold = box_convert(torch.tensor([b for _, b in record.regions]), "xyxy", "cxcywh").to(boxes)
        query, region = hungarian_match(boxes[0], gold)
        best = (F.normalize(embeds[0, query].float(), dim=-1) @ texts.T).argmax(-1).cpu()
        hits += [distinct[i] == record.regions[r][0] for i, r in zip(best.tolist(), region.tolist(), strict=True)]
        ious += matched_iou(boxes[0], gold).tolist()
    return {"region_top1": sum(hits) / len(hits), "mean_iou": sum(ious) / len(ious), "regions": len(hits),
            "chance_top1": 1 / len(distinct)}
