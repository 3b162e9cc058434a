"""VLM rewards for descriptions of a concept, as plain trl reward callables.

EX2's reward for a description ``t`` of concept ``c`` is the mean, over ``N`` images of ``c``
(``num_images_for_reward``, 256 by default), of the VLM's logit-scaled cosine similarity::

    r(t, c) = 1/N · Σ_i  s · <img_i, t>  =  s · <mean_i img_i, t>

It is linear in the image embeddings, so the class-mean image embedding (not renormalised) is
computed once and each reward is one dot product. Variants, chosen by name (:data:`REWARDS`):

``ex2``                  the reward above
``contrastive``          own-concept reward minus the mean reward over the other concepts
``contrastive-softmax``  softmax probability of the own concept over all concepts
``planted``              ``s · <a, t>`` for a fixed attribute text ``a`` (a known answer, for validation),
                         plus ``planted_bonus`` when ``t`` names one of ``planted_keywords`` (whole words)

Every reward takes trl's call signature, so it can be passed to any ``GRPOTrainer``::

    reward = build_reward("ex2", load_vlm("conse"), load_dataset("samples"))
    GRPOTrainer(model, reward_funcs=reward, train_dataset=prompts, ...)  # prompts carry `concept`

Completions are cleaned as ``ex2 generate`` cleans them (first paragraph). Empty or degenerate
ones get the reward's floor (its lowest possible value), never NaN.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ex2.generate import clean_description

REWARDS = ("ex2", "contrastive", "contrastive-softmax", "planted")
DEFAULT_PLANTED_TEXT = "it lives in its natural habitat"
DEFAULT_PLANTED_BONUS = 20.0  # logit-scale units: a cosine of 0.2 under CLIP's scale of 100
_WORD = re.compile(r"[^\W_]{2,}")  # a text needs one word of two letters or digits to be scored


def keyword_pattern(keywords: Sequence[str]) -> re.Pattern | None:
    """A case-insensitive whole-word pattern matching any of ``keywords`` (None for no keywords)."""
    if not keywords:
        return None
    return re.compile(r"\b(" + "|".join(re.escape(k) for k in keywords) + r")\b", re.IGNORECASE)


def completion_text(completion: Any) -> str:
    """The generated text of one trl completion: a string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence):
        return " ".join(completion_text(message) for message in completion)
    raise TypeError(f"a completion must be a string or a list of chat messages, not {type(completion).__name__}")


def clean_text(text: str) -> str:
    """The description in a completion, cleaned as ``ex2 generate`` cleans it (first paragraph,
    special tokens dropped, whitespace collapsed), so training scores what generation keeps."""
    return clean_description(text)


def is_degenerate(text: str) -> bool:
    """True for texts with no word in them (empty, whitespace, punctuation only)."""
    return _WORD.search(text) is None


def class_mean_embeddings(vlm, paths_per_class: dict[int, list], progress: bool = True) -> torch.Tensor:
    """``[C, D]`` mean image embedding per class (rows are not renormalised)."""
    from ex2.vlm import embed_images

    class_ids = sorted(paths_per_class)
    paths = [path for class_id in class_ids for path in paths_per_class[class_id]]
    owner = {Path(path): class_id for class_id in class_ids for path in paths_per_class[class_id]}
    images = embed_images(vlm, paths, progress=progress)  # one pass (and one progress bar) for all classes
    embedded_class = torch.tensor([owner[path] for path in images.paths], dtype=torch.long)
    means = []
    for class_id in class_ids:
        rows = images.embeddings[embedded_class == class_id]
        if len(rows) == 0:
            raise ValueError(f"class {class_id}: none of its images could be read, so it has no reward")
        means.append(rows.float().mean(dim=0))
    return torch.stack(means)


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


class VLMReward:
    """A trl reward callable: ``reward(prompts=…, completions=…, concept=…) -> list[float]``.

    ``concept`` (a dataset column) holds concept names or class ids; ``concept_id`` is used if given.
    ``last`` keeps the latest batch (texts, concepts, rewards) for logging.
    """

    def __init__(
        self,
        vlm,
        class_means: torch.Tensor,
        concepts: list[str],
        kind: str = "ex2",
        planted_text: str = DEFAULT_PLANTED_TEXT,
        empty_reward: float | None = None,
        planted_keywords: Sequence[str] = (),
        planted_bonus: float = DEFAULT_PLANTED_BONUS,
    ) -> None:
        if kind not in REWARDS:
            raise ValueError(f"unknown reward {kind!r}; choose one of {', '.join(REWARDS)}")
        if class_means.shape[0] != len(concepts):
            raise ValueError(f"{class_means.shape[0]} class-mean rows for {len(concepts)} concepts")
        if kind.startswith("contrastive") and len(concepts) < 2:
            raise ValueError(f"the {kind} reward compares concepts, so it needs at least two; got {concepts}")
        self.vlm, self.kind, self.concepts = vlm, kind, list(concepts)
        self.class_means = class_means.float()
        self.scale = float(vlm.logit_scale)
        self.index = {name: i for i, name in enumerate(self.concepts)}
        self.planted_text = planted_text
        self.planted = vlm.encode_texts([planted_text])[0] if kind == "planted" else None
        self.planted_keywords = keyword_pattern(planted_keywords)
        self.planted_bonus = float(planted_bonus)
        self.empty_reward = self.floor() if empty_reward is None else float(empty_reward)
        self.__name__ = f"{kind.replace('-', '_')}_reward"  # trl names its metrics after this
        self.last: dict[str, list] = {"texts": [], "concepts": [], "rewards": []}

    def floor(self) -> float:
        """The lowest value this reward can take (cosines are at least -1)."""
        return {"contrastive": -2 * self.scale, "contrastive-softmax": 0.0}.get(self.kind, -self.scale)

    def concept_ids(self, concept: Sequence | None, concept_id: Sequence | None, count: int) -> list[int]:
        if concept_id is not None:
            ids = [int(i) for i in concept_id]
        elif concept is not None:
            ids = [c if isinstance(c, int) else self._lookup(c) for c in concept]
        elif self.kind == "planted":
            ids = [0] * count
        else:
            raise ValueError("the reward needs a `concept` (or `concept_id`) column in the prompt dataset")
        if len(ids) != count:
            raise ValueError(f"{len(ids)} concepts for {count} completions")
        return ids

    def _lookup(self, name: str) -> int:
        if name not in self.index:
            raise ValueError(f"concept {name!r} is not one of the reward's concepts: {', '.join(self.concepts)}")
        return self.index[name]

    def score(self, texts: list[str], concept_ids: list[int]) -> torch.Tensor:
        """Rewards of non-degenerate texts for the given concept ids."""
        embeddings = self.vlm.encode_texts(texts).float()
        if self.kind == "planted":
            return self.scale * embeddings @ self.planted.float() + self.keyword_bonus(texts)
        sims = self.scale * embeddings @ self.class_means.T  # [N, C]
        own = sims[torch.arange(len(texts)), torch.tensor(concept_ids)]
        if self.kind == "ex2":
            return own
        if self.kind == "contrastive":
            return own - (sims.sum(dim=1) - own) / (sims.shape[1] - 1)
        return torch.softmax(sims, dim=1)[torch.arange(len(texts)), torch.tensor(concept_ids)]

    def keyword_bonus(self, texts: list[str]) -> torch.Tensor:
        """``planted_bonus`` for each text naming a planted keyword, else 0 (dense similarity plus a
        lexical term: the similarity keeps GRPO's groups varied, the bonus rewards the words)."""
        if self.planted_keywords is None:
            return torch.zeros(len(texts))
        return torch.tensor([self.planted_bonus * bool(self.planted_keywords.search(t)) for t in texts])

    def rewards(self, texts: list[str], concept_ids: list[int]) -> list[float]:
        """One reward per text; degenerate texts get ``empty_reward``."""
        out = [self.empty_reward] * len(texts)
        keep = [i for i, text in enumerate(texts) if not is_degenerate(text)]
        if keep:
            scores = self.score([texts[i] for i in keep], [concept_ids[i] for i in keep])
            for i, value in zip(keep, scores.tolist(), strict=True):
                out[i] = value if value == value else self.empty_reward  # NaN -> floor
        return out

    def __call__(self, prompts=None, completions=None, concept=None, concept_id=None, **kwargs) -> list[float]:
        if completions is None:
            raise ValueError("the reward needs `completions`")
        texts = [clean_text(completion_text(c)) for c in completions]
        ids = self.concept_ids(concept, concept_id, len(texts))
        rewards = self.rewards(texts, ids)
        self.last = {"texts": texts, "concepts": [self.concepts[i] for i in ids], "rewards": rewards}
        return rewards


def build_reward(
    kind: str,
    vlm,
    dataset,
    images_per_class: int | None = 256,
    seed: int | None = None,
    planted_text: str = DEFAULT_PLANTED_TEXT,
    empty_reward: float | None = None,
    progress: bool = True,
    planted_keywords: Sequence[str] = (),
    planted_bonus: float = DEFAULT_PLANTED_BONUS,
) -> VLMReward:
    """A reward over ``dataset``'s concepts, with image embeddings computed (or read from cache) once."""
    from ex2.data import sample_per_class

    if kind not in REWARDS:
        raise ValueError(f"unknown reward {kind!r}; choose one of {', '.join(REWARDS)}")
    if kind == "planted":  # the planted reward looks at no image
        means = torch.zeros(len(dataset.classnames), 1)
    else:
        means = class_mean_embeddings(vlm, sample_per_class(dataset, images_per_class, seed), progress)
    return VLMReward(vlm, means, dataset.classnames, kind, planted_text, empty_reward, planted_keywords,
                     planted_bonus)
