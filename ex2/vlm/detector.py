"""Open-vocabulary detection with transformers' OWLv2: the best box of each text query in an image.

    from ex2.vlm.detector import load_detector
    detector = load_detector("google/owlv2-base-patch16-ensemble")   # or a local folder; offline
    found = detector.detect(images, [["a red beak", "webbed feet"], ...], threshold=0.1)
    # found[i]: one Detection (query index, score, box in pixels) per query of image i scoring >= 0.1

The image tower runs once per batch, each distinct query text is embedded once (and kept in an
LRU), and every query of an image is scored against every patch with OWLv2's own heads
(``image_embedder``, ``class_predictor``, ``box_predictor``), so what is computed is what
``Owlv2ForObjectDetection.forward`` computes, without re-encoding the texts for every image.
OWLv2 pads an image to a square (bottom and right) before resizing it; its boxes are fractions of
that square's side, turned here into pixels of the image itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch

from ex2.core.devices import resolve_device, resolve_dtype
from ex2.vlm.base import lru_rows
from ex2.vlm.offline import DOWNLOAD_HINT, downloads_allowed, hub_offline
from ex2.vlm.transformers_backend import _identity, _pooled

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"


@dataclass(frozen=True)
class Detection:
    """The best box of one query in one image."""

    query: int  # index into the image's queries
    score: float  # sigmoid of the best patch's logit for the query
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the image


def pixel_boxes(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[N, 4]`` cxcywh fractions of the padded square's side -> xyxy pixels clipped to the image."""
    from torchvision.ops import box_convert

    side = max(width, height)
    xyxy = box_convert(boxes.float(), "cxcywh", "xyxy") * side
    limits = torch.tensor([width, height, width, height], dtype=xyxy.dtype)
    return torch.minimum(xyxy.clamp(min=0), limits.to(xyxy.device))


def owl_pixels(image_processor, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
    """OWLv2's ``[B, 3, S, S]`` input (padded to a square, resized, normalised), CPU float32; a
    plain function of the image processor, so data-loader workers can run it."""
    return image_processor(images=list(images), return_tensors="pt")["pixel_values"]


class OwlDetector:
    """An ``Owlv2ForObjectDetection`` and its processor, in inference mode on one device."""

    text_cache_size = 16384

    def __init__(self, model, processor, identity: str) -> None:
        self.model, self.processor, self.identity = model.eval(), processor, identity
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._texts: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __repr__(self) -> str:
        return f"OwlDetector({self.identity!r}, device={self.device}, dtype={self.dtype})"

    def pixels(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """The detector's ``[B, 3, S, S]`` input for ``images``: :func:`owl_pixels`."""
        return owl_pixels(self.processor.image_processor, images)

    @torch.inference_mode()
    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, D]`` query embeddings (OWLv2's projected text features) on the model's device."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._texts))
        if missing:
            tokens = self.processor.tokenizer(missing, padding=True, truncation=True, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            features = _pooled(self.model.owlv2.get_text_features(**tokens))
            self._texts.update(zip(missing, features, strict=True))
        rows = lru_rows(self._texts, list(texts), self.text_cache_size)
        return torch.stack(rows) if rows else torch.empty(0, self.model.config.projection_dim, device=self.device)

    @torch.inference_mode()
    def patch_logits(self, pixels: torch.Tensor, queries: Sequence[Sequence[str]]):
        """OWLv2's heads on every patch: (``[B, N, Q]`` logits, padding queries masked out as
        ``class_predictor`` masks them; ``[B, N, 4]`` cxcywh boxes; ``[B, Q]`` mask of real queries)."""
        feature_map, _ = self.model.image_embedder(pixel_values=pixels.to(self.device, self.dtype))
        batch, height, width, channels = feature_map.shape
        features = feature_map.reshape(batch, height * width, channels)
        boxes = self.model.box_predictor(features, feature_map).float()  # [B, N, 4]
        count = max((len(q) for q in queries), default=0)
        embeds = torch.zeros(batch, count, self.model.config.projection_dim, device=self.device, dtype=self.dtype)
        mask = torch.zeros(batch, count, dtype=torch.bool, device=self.device)
        for row, texts in enumerate(queries):
            if texts:
                embeds[row, : len(texts)] = self.encode_queries(texts).to(self.dtype)
                mask[row, : len(texts)] = True
        if count == 0:
            return torch.zeros(batch, height * width, 0, device=self.device), boxes, mask
        logits, _ = self.model.class_predictor(features, embeds, mask)  # [B, N, Q]
        return logits.float(), boxes, mask

    def best_boxes(self, pixels: torch.Tensor, queries: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """For each image of ``pixels`` and each of its queries, the best patch's score and box:
        ``[B, Q]`` scores (0 where an image has fewer than Q queries) and ``[B, Q, 4]`` cxcywh boxes."""
        logits, boxes, mask = self.patch_logits(pixels, queries)
        if logits.shape[-1] == 0:
            return torch.zeros(len(boxes), 0), torch.zeros(len(boxes), 0, 4)
        scores, best = logits.sigmoid().max(dim=1)  # over patches
        chosen = boxes.gather(1, best[..., None].expand(-1, -1, 4))
        return scores.masked_fill(~mask, 0).cpu(), chosen.cpu()

    def every_box(self, pixels: torch.Tensor, queries: Sequence[Sequence[str]], threshold: float):
        """GRAIN's rule (``box_supervision.py`` through transformers' ``post_process_object_detection``):
        each patch's box labelled with its best query, kept where that query's score exceeds
        ``threshold``. Per image, (query indices, scores, ``[K, 4]`` cxcywh boxes), on the CPU."""
        logits, boxes, _ = self.patch_logits(pixels, queries)
        if logits.shape[-1] == 0:
            empty = torch.zeros(0)
            return [(empty.long(), empty, torch.zeros(0, 4)) for _ in range(len(boxes))]
        scores, labels = logits.sigmoid().max(dim=-1)  # over queries
        keep = scores > threshold
        return [(labels[row][keep[row]].cpu(), scores[row][keep[row]].cpu(), boxes[row][keep[row]].cpu())
                for row in range(len(boxes))]

    def detect(
        self,
        images: Sequence[PIL.Image.Image],
        queries: Sequence[Sequence[str]],
        threshold: float = 0.1,
        pixels: torch.Tensor | None = None,
        rule: str = "best",
    ) -> list[list[Detection]]:
        """Per image, ``rule="best"``: the best box of each of its queries that scores at least
        ``threshold``; ``"every"``: every box whose best query scores above it (:meth:`every_box`).
        Boxes of no area once clipped to the image are dropped. ``pixels``: :meth:`pixels` of
        ``images`` when already computed (by a data-loader worker)."""
        if len(queries) != len(images):
            raise ValueError(f"{len(queries)} query lists for {len(images)} images")
        if pixels is None:
            pixels = self.pixels(images)
        if rule == "every":
            found = self.every_box(pixels, queries, threshold)
        else:
            scores, boxes = self.best_boxes(pixels, queries)
            found = []
            for row, texts in enumerate(queries):
                kept = scores[row, : len(texts)] >= threshold
                found.append((torch.arange(len(texts))[kept], scores[row, : len(texts)][kept], boxes[row, : len(texts)][kept]))
        return [_detections(*hits, image) for hits, image in zip(found, images, strict=True)]


def _detections(query: torch.Tensor, score: torch.Tensor, boxes: torch.Tensor, image: PIL.Image.Image) -> list[Detection]:
    corners = pixel_boxes(boxes, *image.size)
    kept = []
    for index, value, box in zip(query.tolist(), score.tolist(), corners.tolist(), strict=True):
        box = tuple(round(v, 2) for v in box)
        if box[0] < box[2] and box[1] < box[3]:
            kept.append(Detection(index, value, box))
    return kept


def load_detector(name: str = DEFAULT_DETECTOR, device: str | None = None, precision: str = "auto") -> OwlDetector:
    """Load an OWLv2 detector by hub id (from the local cache unless ``EX2_ALLOW_DOWNLOAD=1``) or
    local folder, on ``device`` in ``precision`` (:mod:`ex2.core.devices`)."""
    from transformers import AutoConfig, AutoProcessor, Owlv2ForObjectDetection

    source = name.removeprefix("local-dir:")
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    try:
        with hub_offline():
            kind = AutoConfig.from_pretrained(source).model_type
            if kind != "owlv2":
                raise ValueError(f"detector {source}: a {kind} model; expected OWLv2 (model_type owlv2), e.g. "
                                 f"{DEFAULT_DETECTOR}")
            model = Owlv2ForObjectDetection.from_pretrained(source, dtype=dtype)
            processor = AutoProcessor.from_pretrained(source)
    except OSError as err:
        if Path(source).is_dir() or downloads_allowed():
            raise
        raise FileNotFoundError(
            f"detector {source!r} is neither a local folder nor in the Hugging Face cache ({err}); {DOWNLOAD_HINT}"
        ) from err
    return OwlDetector(model.to(torch_device), processor, _identity(source))
