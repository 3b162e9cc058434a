"""``planted``: a known answer, for checking that training learns what it is rewarded for::

    r(t) = s · <a, t>  +  planted_bonus · [t names one of planted_keywords]

for a fixed attribute text ``a`` (``planted_text``); keywords match as whole words, case ignored.
It looks at no image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ex2.reward.base import ConceptReward, EmptyReward

DEFAULT_PLANTED_TEXT = "it lives in its natural habitat"
DEFAULT_PLANTED_BONUS = 20.0  # logit-scale units: a cosine of 0.2 under CLIP's scale of 100


def keyword_pattern(keywords: Sequence[str]) -> re.Pattern | None:
    """A case-insensitive whole-word pattern matching any of ``keywords`` (None for no keywords)."""
    if not keywords:
        return None
    return re.compile(r"\b(" + "|".join(re.escape(k) for k in keywords) + r")\b", re.IGNORECASE)


class PlantedReward(ConceptReward):
    """``s · <a, t>`` for a fixed attribute text ``a``, plus ``planted_bonus`` for each text naming
    one of ``planted_keywords`` (dense similarity plus a lexical term: the similarity keeps GRPO's
    groups varied, the bonus rewards the words). It looks at no image; ``concepts`` (optional) only
    name the concept column's values in ``last``."""

    __name__ = "planted_reward"
    needs_concept = False

    def __init__(self, vlm, concepts: Sequence[str] = (), planted_text: str = DEFAULT_PLANTED_TEXT,
                 planted_keywords: Sequence[str] = (), planted_bonus: float = DEFAULT_PLANTED_BONUS,
                 empty_reward: EmptyReward = None, text: str = "raw") -> None:
        super().__init__(vlm, concepts, empty_reward, text)
        self.planted_text = planted_text
        self.planted = vlm.encode_texts([planted_text])[0].float()
        self.planted_keywords = keyword_pattern(planted_keywords)
        self.planted_bonus = float(planted_bonus)

    @property
    def floor(self) -> float:
        return -self.scale

    def score(self, texts: list[str], concept_ids: list[int | None]) -> torch.Tensor:
        return self.scale * self.vlm.encode_texts(texts).float() @ self.planted + self.keyword_bonus(texts)

    def keyword_bonus(self, texts: list[str]) -> torch.Tensor:
        """``planted_bonus`` for each text naming a planted keyword, else 0."""
        if self.planted_keywords is None:
            return torch.zeros(len(texts))
        return torch.tensor([self.planted_bonus * bool(self.planted_keywords.search(t)) for t in texts])

    @classmethod
    def build(cls, vlm, dataset, planted_text: str = DEFAULT_PLANTED_TEXT, planted_keywords: Sequence[str] = (),
              planted_bonus: float = DEFAULT_PLANTED_BONUS, empty_reward: EmptyReward = None, text: str = "raw",
              **_) -> PlantedReward:
        """The reward with ``dataset``'s class names as its concepts; it embeds no image."""
        return cls(vlm, dataset.classnames, planted_text, planted_keywords, planted_bonus, empty_reward, text)
