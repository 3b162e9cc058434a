"""The contrastive losses of ``ex2 finetune`` and what makes them span every process's batch.

``multi_positive_nce`` (CLIP's InfoNCE with several positives per row) and its sigmoid form
(SigLIP's) score a ``[images, texts]`` logit matrix against a boolean ``positives`` matrix.
Across processes, features are gathered with the local slice keeping its gradient
(:func:`gather_rows`, open_clip's ``gather_features``), equal texts may be merged into one column
(:func:`first_columns`), and a parameter every process uses whole gets its gradient divided
(:func:`share_gradient`), so that DDP's gradient mean is the gradient of the global-batch loss.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F


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


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every process's ``rows`` (their counts may differ) concatenated in rank order; this process's
    own rows keep their gradient, the others' come without (open_clip's ``gather_features``)."""
    import torch.distributed as dist

    rank, world = rank_and_world()
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



def position_ids(count: int) -> torch.Tensor:
    """Ids unique to each of ``count`` texts of this process, none equal to another process's: a
    text brought twice stays two columns (GRAIN's ``CLIPLoss`` and ``WordContrastiveLoss``)."""
    rank, _ = rank_and_world()
    return torch.arange(count, dtype=torch.long) + (rank << 40)
