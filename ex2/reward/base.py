"""The base of ex2's VLM rewards: :class:`ConceptReward`, a plain trl reward callable for
descriptions of concepts, and the helpers the rewards share.

EX2's reward for a description ``t`` of concept ``c`` is the mean, over ``N`` images of ``c``
(``num_images_for_reward``, 256 by default), of the VLM's logit-scaled cosine similarity::

    r(t, c) = 1/N · Σ_i  s · <img_i, t>  =  s · <mean_i img_i, t>

It is linear in the image embeddings, so the class-mean image embedding (not renormalised) is
computed once (:func:`class_mean_embeddings`) and each reward is one dot product
(:class:`ClassMeanReward`). Each reward kind is a module of this package, listed by name in
:mod:`ex2.reward.registry`, where :func:`~ex2.reward.registry.build_reward` builds one from a dataset::

    reward = build_reward("ex2", load_vlm("conse"), load_dataset("samples"))
    GRPOTrainer(model, reward_funcs=reward, train_dataset=prompts, ...)  # prompts carry `concept`
    EX2Reward(vlm, class_means, concepts)(completions=["a red crest"], concept=["cardinal"])

Each is a plain trl reward callable, ``reward(prompts=…, completions=…, concept=…, **columns)`` ->
one float per completion, so it can be passed to any ``GRPOTrainer``. The scored text of a
completion is ``text``: ``raw`` (default, EX2's: the decoded completion as it is, special tokens
dropped, every paragraph kept) or ``first-paragraph`` (what ``ex2 generate`` keeps as the
description). Empty or degenerate texts get the VLM's score of that text, as in EX2, unless
``empty_reward`` asks for ``"floor"`` (the reward's lowest possible value) or a number; a NaN score
gets the floor, so no reward is NaN.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from ex2.core.text import SCORED_TEXTS, scored_text
from ex2.data import sample_per_class
from ex2.vlm import embed_images

_WORD = re.compile(r"[^\W_]{2,}")  # a text needs one word of two letters or digits to be scored


def completion_text(completion: Any) -> str:
    """The generated text of one trl completion: a string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence):
        return " ".join(completion_text(message) for message in completion)
    raise TypeError(f"a completion must be a string or a list of chat messages, not {type(completion).__name__}")


EmptyReward = float | str | None  # None: the VLM's score (EX2's); "floor": the reward's floor; a number


def check_empty_reward(value: EmptyReward) -> EmptyReward:
    """``value`` as a reward's ``empty_reward``: None/"score", "floor" or a number (a string of one
    is converted); anything else is a ValueError."""
    if value is None or value == "score":
        return None
    if value == "floor" or isinstance(value, int | float):
        return value if value == "floor" else float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"empty reward must be 'score' (the VLM's score of the text, EX2's), 'floor' "
                         f"or a number, got {value!r}") from None


def check_scored_text(text: str) -> str:
    if text not in SCORED_TEXTS:
        raise ValueError(f"unknown scored text {text!r}; choose one of {', '.join(SCORED_TEXTS)}")
    return text


def is_degenerate(text: str) -> bool:
    """True for texts with no word in them (empty, whitespace, punctuation only)."""
    return _WORD.search(text) is None


def class_mean_embeddings(vlm, paths_per_class: dict[int, list], progress: bool = True) -> torch.Tensor:
    """``[C, D]`` mean image embedding per class (rows are not renormalised)."""
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


# --- the base classes ---------------------------------------------------------------------------


class ConceptReward(abc.ABC):
    """A trl reward callable for descriptions of concepts:
    ``reward(prompts=…, completions=…, concept=…, concept_id=…, **columns) -> list[float]``.

    ``concept`` (a dataset column) holds concept names or class ids; ``concept_id`` is used if given.
    ``text`` is the scored text of a completion (``raw``, EX2's, or ``first-paragraph``); degenerate
    texts are scored like any other unless ``empty_reward`` is ``"floor"`` or a number, and NaN
    scores get the :attr:`floor`. ``last`` keeps the latest batch (scored texts, concepts, rewards)
    for logging. Subclasses define :meth:`score`, :attr:`floor` and :meth:`build` (what the
    registry calls), and name trl's metrics with ``__name__``.
    """

    __name__ = "concept_reward"
    needs_concept: ClassVar[bool] = True  # False: scores do not depend on the concept column

    def __init__(self, vlm, concepts: Sequence[str], empty_reward: EmptyReward = None, text: str = "raw") -> None:
        self.vlm, self.concepts = vlm, list(concepts)
        self.scale = float(vlm.logit_scale)
        self.index = {name: i for i, name in enumerate(self.concepts)}
        self.empty_reward = check_empty_reward(empty_reward)
        self.text = check_scored_text(text)
        self.last: dict[str, list] = {"texts": [], "concepts": [], "rewards": []}

    @property
    @abc.abstractmethod
    def floor(self) -> float:
        """The lowest value this reward can take (cosines are at least -1)."""

    @classmethod
    @abc.abstractmethod
    def build(cls, vlm, dataset, **options) -> ConceptReward:
        """The reward over ``dataset``'s concepts (``dataset.classnames``), from the options of
        :func:`~ex2.reward.registry.build_reward` it needs; it ignores the rest."""

    @abc.abstractmethod
    def score(self, texts: list[str], concept_ids: list[int | None]) -> torch.Tensor:
        """Rewards of non-degenerate texts for the given concept ids."""

    def concept_ids(self, concept: Sequence | None, concept_id: Sequence | None, count: int) -> list[int | None]:
        """Class ids from the ``concept_id`` column, else the ``concept`` column (names or ids)."""
        if not self.needs_concept and (not self.concepts or (concept is None and concept_id is None)):
            return [None] * count
        if concept_id is not None:
            ids = [int(i) for i in concept_id]
        elif concept is not None:
            ids = [c if isinstance(c, int) else self._lookup(c) for c in concept]
        else:
            raise ValueError("the reward needs a `concept` (or `concept_id`) column in the prompt dataset")
        if len(ids) != count:
            raise ValueError(f"{len(ids)} concepts for {count} completions")
        outside = [i for i in ids if not 0 <= i < len(self.concepts)]
        if outside:
            raise ValueError(f"concept id {outside[0]} is outside 0..{len(self.concepts) - 1}")
        return ids

    def _lookup(self, name: str) -> int:
        if name not in self.index:
            raise ValueError(f"concept {name!r} is not one of the reward's concepts: {', '.join(self.concepts)}")
        return self.index[name]

    def scored(self, completion: str, special_tokens: Sequence[str] = ()) -> str:
        """The text of one completion this reward scores (per :attr:`text`)."""
        return scored_text(completion, self.text, special_tokens)

    def rewards(self, texts: list[str], concept_ids: list[int | None]) -> list[float]:
        """One reward per scored text (:meth:`scored`); degenerate texts get ``empty_reward`` if one
        was asked for, NaN scores the floor."""
        fixed = None if self.empty_reward is None else (
            self.floor if self.empty_reward == "floor" else self.empty_reward)
        out = [self.floor if fixed is None else fixed] * len(texts)
        keep = [i for i, text in enumerate(texts) if fixed is None or not is_degenerate(text)]
        if keep:
            scores = self.score([texts[i] for i in keep], [concept_ids[i] for i in keep])
            for i, value in zip(keep, scores.tolist(), strict=True):
                out[i] = value if value == value else self.floor  # NaN -> floor
        return out

    def __call__(self, prompts=None, completions=None, concept=None, concept_id=None, **kwargs) -> list[float]:
        if completions is None:
            raise ValueError("the reward needs `completions`")
        texts = [self.scored(completion_text(c)) for c in completions]
        ids = self.concept_ids(concept, concept_id, len(texts))
        rewards = self.rewards(texts, ids)
        names = [None if i is None else self.concepts[i] for i in ids]
        self.last = {"texts": texts, "concepts": names, "rewards": rewards}
        return rewards


class ClassMeanReward(ConceptReward):
    """A reward read from ``s · <class mean image embedding, t>`` for every concept (``[N, C]``)."""

    compares: ClassVar[bool] = False  # True: the score compares concepts, so it needs two

    def __init__(self, vlm, class_means: torch.Tensor, concepts: Sequence[str],
                 empty_reward: EmptyReward = None, text: str = "raw") -> None:
        self.check_concepts(concepts)
        if class_means.shape[0] != len(concepts):
            raise ValueError(f"{class_means.shape[0]} class-mean rows for {len(concepts)} concepts")
        super().__init__(vlm, concepts, empty_reward, text)
        self.class_means = class_means.float()

    @classmethod
    def check_concepts(cls, concepts: Sequence[str]) -> None:
        if cls.compares and len(concepts) < 2:
            raise ValueError(f"{cls.__name__} compares concepts, so it needs at least two; got {list(concepts)}")

    def similarities(self, texts: list[str]) -> torch.Tensor:
        """``[N, C]`` logit-scaled similarity of each text to each concept's mean image."""
        return self.scale * self.vlm.encode_texts(texts).float() @ self.class_means.T

    @classmethod
    def build(cls, vlm, dataset, images_per_class: int | None = 256, seed: int | None = None,
              progress: bool = True, empty_reward: EmptyReward = None, text: str = "raw", **_) -> ClassMeanReward:
        """The reward over ``dataset``'s concepts, from the mean embedding of ``images_per_class``
        images of each (the first ones, or a random pick with ``seed``)."""
        cls.check_concepts(dataset.classnames)  # before embedding any image
        check_scored_text(text)
        check_empty_reward(empty_reward)
        means = class_mean_embeddings(vlm, sample_per_class(dataset, images_per_class, seed), progress)
        return cls(vlm, means, dataset.classnames, empty_reward, text)
