"""``contrastive``: the own concept's reward minus the mean reward over the other concepts::

    r(t, c) = s · <m_c, t>  -  1/(C-1) · Σ_{c' ≠ c}  s · <m_c', t>

with ``m_c`` the mean image embedding of concept ``c``; it needs at least two concepts.
"""

from __future__ import annotations

import torch

from ex2.reward.base import ClassMeanReward


class ContrastiveReward(ClassMeanReward):
    """Own-concept reward minus the mean reward over the other concepts."""

    __name__ = "contrastive_reward"
    compares = True

    @property
    def floor(self) -> float:
        return -2 * self.scale

    def score(self, texts: list[str], concept_ids: list[int]) -> torch.Tensor:
        sims = self.similarities(texts)
        own = sims[torch.arange(len(texts)), torch.tensor(concept_ids)]
        return own - (sims.sum(dim=1) - own) / (sims.shape[1] - 1)
