"""``ex2``: EX2's reward, the mean logit-scaled similarity of a description to its concept's images::

    r(t, c) = 1/N · Σ_i  s · <img_i, t>  =  s · <mean_i img_i, t>

computed as one dot product with the class-mean image embedding; :func:`per_batch_reward` is EX2's
original per-batch computation, kept as the reference it equals.
"""

from __future__ import annotations

import torch

from ex2.reward.base import ClassMeanReward


class EX2Reward(ClassMeanReward):
    """EX2's reward: the mean similarity of the text to its own concept's images."""

    __name__ = "ex2_reward"

    @property
    def floor(self) -> float:
        return -self.scale

    def score(self, texts: list[str], concept_ids: list[int]) -> torch.Tensor:
        return self.similarities(texts)[torch.arange(len(texts)), torch.tensor(concept_ids)]


def per_batch_reward(
    image_embeddings: torch.Tensor,
    image_classes: torch.Tensor,
    text_embeddings: torch.Tensor,
    text_classes: torch.Tensor,
    logit_scale: float,
) -> torch.Tensor:
    """EX2's original algorithm, kept as the reference: the similarity matrix of all class images ×
    all responses, then per response the mean over its own class's images."""
    similarity = logit_scale * image_embeddings @ text_embeddings.T  # [images, responses]
    rewards = torch.empty(len(text_classes))
    for index, cls in enumerate(text_classes.tolist()):
        rewards[index] = similarity[image_classes == cls, index].mean()
    return rewards
