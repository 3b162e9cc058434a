"""GRAIN's region objective (Halbe et al.; shaunak27/grain-clip ``train.py``, ``model/tfm.py``,
``model/box_utils.py``, ``model/losses.py``): learned region queries decode boxes from a ViT's
tokens, are matched to the annotated regions by the Hungarian algorithm on an L1 + GIoU box cost
(as in DETR), and each matched query is aligned with its region's description.

Two decoders (``--decoder``):

``grain``  GRAIN's (``model/tfm.py`` as ``train.py`` builds it): every image token (class token
           and patches) projected to 512 without bias and layer-normed; 5 region queries and 1
           global query, learned positions added at every layer to zero-initialised targets; 6
           pre-norm layers (self-attention, cross-attention, ReLU FFN of 2048, dropout 0.1) and a
           final LayerNorm; boxes from a 3-layer MLP of the region queries, region embeddings
           ``query @ obj_proj`` and the image embedding (the caption loss's) ``global @ img_proj``.
``ex2``    ours: 8 queries, 2 post-norm layers as wide as the ViT, over the patch tokens, no
           global query (the caption loss uses the VLM's pooled embedding).

Losses (:func:`region_losses`) follow ``box_utils.py``: the matcher's cost is ``5·L1 + 2·GIoU``
(``build_matcher``), the loss's box terms are DETR's — L1 summed over the 4 coordinates and
``1 - GIoU``, each summed over matched pairs and divided by the number of annotated boxes — with
their own weights (GRAIN: 1 and 1, divided by ``len(weight_dict) / 3`` in ``compute_box_loss``,
i.e. 1.5 each). Boxes are normalised ``(cx, cy, w, h)`` in ``[0, 1]`` inside the model and
``(x0, y0, x1, y1)`` in ``[0, 1]`` in annotations; :func:`torchvision.ops.box_convert` turns one
into the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou


@dataclass(frozen=True)
class DecoderPreset:
    """A region decoder's shape; ``width`` None: as wide as the ViT's tokens."""

    queries: int
    layers: int
    width: int | None
    global_query: bool  # an extra query whose embedding is the caption loss's image embedding
    tokens: str  # what it attends to: "all" (class token and patches) or "patches"


DECODERS = {
    "grain": DecoderPreset(queries=5, layers=6, width=512, global_query=True, tokens="all"),
    "ex2": DecoderPreset(queries=8, layers=2, width=None, global_query=False, tokens="patches"),
}

GRAIN_MATCH_WEIGHTS = (5.0, 2.0)  # box_utils.build_matcher: cost_bbox, cost_giou
GRAIN_LOSS_WEIGHTS = (1.5, 1.5)  # train.py weight_dict 1, 1 over compute_box_loss's len(weight_dict) / 3


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


def _box_head(width: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, 4),
    )


class RegionDecoder(torch.nn.Module):
    """Ours (``--decoder ex2``): ``queries`` learned embeddings attend to the image tokens through
    torch's post-norm decoder layers; each yields a box (sigmoid cxcywh) and an embedding in the
    VLM's joint space. No global query: ``forward`` returns None in its place."""

    def __init__(self, width: int, embed_dim: int, queries: int = 8, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.shape = {"kind": "ex2", "width": width, "embed_dim": embed_dim, "queries": queries, "layers": layers,
                      "heads": heads}
        if width % heads:
            raise ValueError(f"region decoder: token width {width} is not divisible by {heads} heads")
        self.queries = torch.nn.Embedding(queries, width)
        layer = torch.nn.TransformerDecoderLayer(width, heads, dim_feedforward=4 * width, batch_first=True)
        self.decoder = torch.nn.TransformerDecoder(layer, layers)
        self.box_head = _box_head(width)
        self.text_head = torch.nn.Linear(width, embed_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """``[B, N, width]`` image tokens -> (boxes ``[B, Q, 4]`` cxcywh, embeddings ``[B, Q, D]``, None)."""
        queries = self.queries.weight.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        hidden = self.decoder(queries, tokens)
        return self.box_head(hidden).sigmoid(), self.text_head(hidden), None


class _PreNormLayer(torch.nn.Module):
    """One of GRAIN's decoder layers (``tfm.TransformerDecoderLayer.forward_pre``, self-attention
    first): the query positions are added to the self-attention's queries and keys and to the
    cross-attention's queries, never to the values."""

    def __init__(self, width: int, heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = torch.nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_attn = torch.nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = torch.nn.Linear(width, feedforward), torch.nn.Linear(feedforward, width)
        self.norm1, self.norm2, self.norm3 = (torch.nn.LayerNorm(width) for _ in range(3))
        self.dropout = torch.nn.ModuleList(torch.nn.Dropout(dropout) for _ in range(4))

    def forward(self, target: torch.Tensor, memory: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        x = self.norm1(target)
        target = target + self.dropout[0](self.self_attn(x + position, x + position, x, need_weights=False)[0])
        x = self.norm2(target)
        target = target + self.dropout[1](self.cross_attn(x + position, memory, memory, need_weights=False)[0])
        x = self.linear2(self.dropout[3](F.relu(self.linear1(self.norm3(target)))))
        return target + self.dropout[2](x)


class GrainDecoder(torch.nn.Module):
    """GRAIN's decoder (``--decoder grain``; see the module docstring). The unused parts of
    ``ObjDecoder`` (its 22048-way class head, positional and temporal embeddings) are left out,
    as are the intermediate layers' outputs, which no weighted loss reads."""

    def __init__(self, token_width: int, embed_dim: int, queries: int = 5, layers: int = 6, width: int = 512,
                 heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.shape = {"kind": "grain", "token_width": token_width, "embed_dim": embed_dim, "queries": queries,
                      "layers": layers, "width": width, "heads": heads, "dropout": dropout}
        if width % heads:
            raise ValueError(f"region decoder: width {width} is not divisible by {heads} heads")
        self.proj = torch.nn.Linear(token_width, width, bias=False)
        self.memory_norm = torch.nn.LayerNorm(width)
        self.positions = torch.nn.Embedding(queries + 1, width)  # the region queries, then the global one
        self.layers = torch.nn.ModuleList(_PreNormLayer(width, heads, 4 * width, dropout) for _ in range(layers))
        for param in self.layers.parameters():  # tfm.Cross_Attention._reset_parameters
            if param.dim() > 1:
                torch.nn.init.xavier_uniform_(param)
        self.norm = torch.nn.LayerNorm(width)
        self.box_head = _box_head(width)
        self.region_proj = torch.nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)
        self.global_proj = torch.nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, N, token_width]`` -> (boxes ``[B, Q, 4]`` cxcywh, region embeddings ``[B, Q, D]``,
        image embeddings ``[B, D]``)."""
        memory = self.memory_norm(self.proj(tokens))
        position = self.positions.weight.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        hidden = torch.zeros_like(position)
        for layer in self.layers:
            hidden = layer(hidden, memory, position)
        hidden = self.norm(hidden)
        regions, image = hidden[:, :-1], hidden[:, -1]
        return self.box_head(regions).sigmoid(), regions @ self.region_proj, image @ self.global_proj


def build_decoder(preset: str, token_width: int, embed_dim: int, queries: int | None = None,
                  layers: int | None = None) -> torch.nn.Module:
    """The ``preset``'s decoder (``DECODERS``), ``queries`` and ``layers`` overriding its own."""
    shape = DECODERS[preset]
    queries, layers = queries or shape.queries, layers or shape.layers
    if preset == "grain":
        return GrainDecoder(token_width, embed_dim, queries, layers, width=shape.width)
    heads = next(h for h in (8, 4, 2, 1) if token_width % h == 0)
    return RegionDecoder(token_width, embed_dim, queries, layers, heads=heads)


def load_decoder(shape: dict) -> torch.nn.Module:
    """A decoder of the ``shape`` a run saved (its ``provenance.json`` ``region_decoder``)."""
    shape = dict(shape)
    kind = shape.pop("kind", "ex2")  # runs saved before there were two kinds hold ours
    return GrainDecoder(**shape) if kind == "grain" else RegionDecoder(**shape)


def region_losses(
    boxes: torch.Tensor,
    embeds: torch.Tensor,
    targets: list[torch.Tensor],
    target_text: list[torch.Tensor],
    text_features: torch.Tensor,
    scale: torch.Tensor,
    match_weights: tuple[float, float] = GRAIN_MATCH_WEIGHTS,
) -> dict[str, torch.Tensor]:
    """GRAIN's region terms for a batch, unweighted.

    ``targets[b]`` holds image ``b``'s region boxes (``[G_b, 4]`` cxcywh), ``target_text[b]`` the
    index of each region's description among ``text_features`` (``[T, D]``, normalised). Queries
    are matched with ``match_weights`` (L1, GIoU). Returns the box L1 (summed over coordinates) and
    ``1 - GIoU``, both summed over matched pairs and divided by the number of annotated boxes
    (``SetCriterion.loss_boxes``), the region → description cross-entropy over the matched queries
    (``WordContrastiveLoss``) and its top-1 accuracy.
    """
    boxes, embeds = boxes.float(), embeds.float()  # box geometry in fp32 even under bf16 autocast
    pairs = [hungarian_match(boxes[b].detach(), targets[b], *match_weights) for b in range(len(targets))]
    batch = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(pairs)]).to(boxes.device)
    query = torch.cat([q for q, _ in pairs]).to(boxes.device)
    matched = boxes[batch, query]
    gold = torch.cat([targets[b][g] for b, (_, g) in enumerate(pairs)]).to(matched)
    texts = torch.cat([target_text[b][g] for b, (_, g) in enumerate(pairs)]).to(boxes.device)
    if len(gold) == 0:
        zero = boxes.sum() * 0 + embeds.sum() * 0
        return {"box_l1": zero, "box_giou": zero, "region_text": zero, "region_acc": zero.detach()}
    annotated = sum(len(t) for t in targets)
    l1 = F.l1_loss(matched, gold, reduction="sum") / annotated
    giou = (1 - torch.diag(generalized_box_iou(box_convert(matched, "cxcywh", "xyxy"),
                                               box_convert(gold, "cxcywh", "xyxy")))).sum() / annotated
    logits = scale * F.normalize(embeds[batch, query], dim=-1) @ text_features.float().T
    return {
        "box_l1": l1,
        "box_giou": giou,
        "region_text": F.cross_entropy(logits, texts),
        "region_acc": (logits.argmax(-1) == texts).float().mean().detach(),
    }


def matched_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of each region with the query matched to it (``[min(Q, G)]``): an evaluation number."""
    from torchvision.ops import box_iou

    query, region = hungarian_match(pred, target)
    ious = box_iou(box_convert(pred[query], "cxcywh", "xyxy"), box_convert(target[region], "cxcywh", "xyxy"))
    return torch.diag(ious)
