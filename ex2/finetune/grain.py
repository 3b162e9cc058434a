"""GRAIN's region objective (Halbe et al.): a few learned region queries decode boxes from a ViT's
patch tokens, are matched to the annotated regions by the Hungarian algorithm on an L1 + GIoU box
cost (as in DETR), and each matched query is aligned with its region's description.

Boxes are normalised ``(cx, cy, w, h)`` in ``[0, 1]`` inside the model and ``(x0, y0, x1, y1)`` in
``[0, 1]`` in annotations; :func:`torchvision.ops.box_convert` turns one into the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou


def match_cost(pred: torch.Tensor, target: torch.Tensor, l1_weight: float = 5.0, giou_weight: float = 2.0) -> torch.Tensor:
    """``[Q, G]`` cost of giving query ``q`` (``pred`` cxcywh) the region ``g`` (``target`` cxcywh)."""
    l1 = torch.cdist(pred.float(), target.float(), p=1)
    giou = generalized_box_iou(box_convert(pred.float(), "cxcywh", "xyxy"), box_convert(target.float(), "cxcywh", "xyxy"))
    return l1_weight * l1 - giou_weight * giou


@torch.no_grad()
def hungarian_match(
    pred: torch.Tensor, target: torch.Tensor, l1_weight: float = 5.0, giou_weight: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(query indices, region indices) of the cheapest one-to-one assignment; ``min(Q, G)`` pairs."""
    if len(target) == 0 or len(pred) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    cost = match_cost(pred, target, l1_weight, giou_weight).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


class RegionDecoder(torch.nn.Module):
    """DETR-style decoder: ``queries`` learned embeddings attend to the image tokens; each yields a
    box (sigmoid cxcywh) and an embedding in the VLM's joint space (for region–text alignment)."""

    def __init__(self, width: int, embed_dim: int, queries: int = 8, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.shape = {"width": width, "embed_dim": embed_dim, "queries": queries, "layers": layers, "heads": heads}
        if width % heads:
            raise ValueError(f"region decoder: token width {width} is not divisible by {heads} heads")
        self.queries = torch.nn.Embedding(queries, width)
        layer = torch.nn.TransformerDecoderLayer(width, heads, dim_feedforward=4 * width, batch_first=True)
        self.decoder = torch.nn.TransformerDecoder(layer, layers)
        self.box_head = torch.nn.Sequential(
            torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
            torch.nn.Linear(width, 4),
        )
        self.text_head = torch.nn.Linear(width, embed_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, N, width]`` image tokens -> (boxes ``[B, Q, 4]`` cxcywh, embeddings ``[B, Q, D]``)."""
        queries = self.queries.weight.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        hidden = self.decoder(queries, tokens)
        return self.box_head(hidden).sigmoid(), self.text_head(hidden)


def region_losses(
    boxes: torch.Tensor,
    embeds: torch.Tensor,
    targets: list[torch.Tensor],
    target_text: list[torch.Tensor],
    text_features: torch.Tensor,
    scale: torch.Tensor,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> dict[str, torch.Tensor]:
    """GRAIN's region terms for a batch.

    ``targets[b]`` holds image ``b``'s region boxes (``[G_b, 4]`` cxcywh), ``target_text[b]`` the
    index of each region's description among ``text_features`` (``[T, D]``, normalised: the batch's
    distinct descriptions). Returns the L1 and GIoU box losses over matched pairs, the region →
    description cross-entropy and its top-1 accuracy.
    """
    boxes, embeds = boxes.float(), embeds.float()  # box geometry in fp32 even under bf16 autocast
    pairs = [hungarian_match(boxes[b].detach(), targets[b], l1_weight, giou_weight) for b in range(len(targets))]
    batch = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(pairs)])
    query = torch.cat([q for q, _ in pairs]).to(boxes.device)
    batch = batch.to(boxes.device)
    matched = boxes[batch, query]
    gold = torch.cat([targets[b][g] for b, (_, g) in enumerate(pairs)]).to(matched)
    texts = torch.cat([target_text[b][g] for b, (_, g) in enumerate(pairs)]).to(boxes.device)
    if len(gold) == 0:
        zero = boxes.sum() * 0 + embeds.sum() * 0
        return {"box_l1": zero, "box_giou": zero, "region_text": zero, "region_acc": zero.detach()}
    l1 = F.l1_loss(matched, gold)
    giou = 1 - torch.diag(generalized_box_iou(box_convert(matched, "cxcywh", "xyxy"), box_convert(gold, "cxcywh", "xyxy")))
    logits = scale * F.normalize(embeds[batch, query].float(), dim=-1) @ text_features.float().T
    return {
        "box_l1": l1,
        "box_giou": giou.mean(),
        "region_text": F.cross_entropy(logits, texts),
        "region_acc": (logits.argmax(-1) == texts).float().mean().detach(),
    }


def matched_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of each region with the query matched to it (``[min(Q, G)]``): an evaluation number."""
    from torchvision.ops import box_iou

    query, region = hungarian_match(pred, target)
    ious = box_iou(box_convert(pred[query], "cxcywh", "xyxy"), box_convert(target[region], "cxcywh", "xyxy"))
    return torch.diag(ious)
