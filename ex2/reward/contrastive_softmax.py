"""``contrastive-softmax``: the softmax probability of the own concept over all concepts::

    r(t, c) = softmax_c'( s · <m_c', t> )[c]

with ``m_c`` the mean image embedding of concept ``c``; it needs at least two concepts.
"""

from __future__ import annotations

import torch

from ex2.reward.base import ClassMeanReward


class ContrastiveSoftmaxReward(ClassMeanReward):
    """Softmax probability of the own concept over all concepts."""

    __name__ = "contrastive_softmax_reward"
    compares = True

    @property
    def floor(self) -> float:
        return 0.0

    def score(self, texts: list[str], concept_ids: list[int]) -> torch.Tensor:
        probabilities = torch.softmax(self.similarities(texts), dim=1)
        return probabilities[torch.arange(len(texts)), torch.tensor(concept_ids)]
