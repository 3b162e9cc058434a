"""The VLM's text space in ``ex2 knowledge``: class-name embeddings, each class's nearest classes
(the one-vs-one pairs) and the analogues too similar to another class of the dataset."""

from __future__ import annotations

import torch


def name_embeddings(vlm, names: list[str]) -> torch.Tensor:
    """Unit VLM embeddings of "a photo of a {name}." (CoDer's class-name text)."""
    return vlm.encode_texts([f"a photo of a {n}." for n in names])


def nearest_pairs(embeddings: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """Ordered pairs (a, b) for b among a's ``k`` nearest other classes, both orders, sorted."""
    sims = embeddings @ embeddings.T
    sims.fill_diagonal_(-float("inf"))
    near = sims.topk(min(k, len(embeddings) - 1), dim=1).indices.tolist()
    return sorted({p for a, bs in enumerate(near) for b in bs for p in ((a, b), (b, a))})


def too_similar(vlm, items: list[str], class_embeddings: torch.Tensor, own: int, threshold: float) -> list[bool]:
    """Whether each analogue's text is more similar than ``threshold`` to a class other than ``own``."""
    if not items:
        return []
    others = torch.cat([class_embeddings[:own], class_embeddings[own + 1:]])
    if len(others) == 0:
        return [False] * len(items)
    return ((name_embeddings(vlm, items) @ others.T).max(1).values > threshold).tolist()
