"""The rewards by name: what ``ex2 train --reward`` offers, its help text and :func:`build_reward`.

Each entry names a :class:`~ex2.reward.base.ConceptReward` subclass as ``"module:Class"`` (imported
only when chosen, so a generative VLM's code loads only for ``gen-likelihood``) and says in one line
what it rewards. Adding a reward is one module and one line here:

1. ``ex2/reward/my_reward.py``: a ``ConceptReward`` subclass with ``score``, ``floor`` and a
   ``build(vlm, dataset, **options)`` classmethod (or a ``ClassMeanReward``, which has one);
2. ``"my-reward": ("ex2.reward.my_reward:MyReward", "what it rewards")`` in :data:`REWARDS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ex2.core.registry import LazyRegistry

# name -> ("module:Class", what it rewards)
REWARDS: dict[str, tuple[str, str]] = {
    "ex2": ("ex2.reward.ex2:EX2Reward", "mean similarity to the concept's images (EX2's)"),
    "contrastive": ("ex2.reward.contrastive:ContrastiveReward",
                    "own concept's reward minus the mean over the other concepts"),
    "contrastive-softmax": ("ex2.reward.contrastive_softmax:ContrastiveSoftmaxReward",
                            "softmax probability of the own concept over all concepts"),
    "planted": ("ex2.reward.planted:PlantedReward",
                "similarity to --planted-text plus a bonus for --planted-keywords; no image (a known answer)"),
    "gen-likelihood": ("ex2.reward.gen_likelihood:GenLikelihoodReward",
                       "a generative VLM's log-likelihood of the text with the concept's images minus without"),
}
REWARD_NAMES = tuple(REWARDS)
REWARD_CLASSES = LazyRegistry("reward", {name: reference for name, (reference, _) in REWARDS.items()})


def reward_help() -> str:
    """The help text of a ``--reward`` option, one entry per registered reward."""
    return "reward: " + " | ".join(f"{name} ({about})" for name, (_, about) in REWARDS.items())


def build_reward(
    kind: str,
    vlm,
    dataset,
    images_per_class: int | None = 256,
    seed: int | None = None,
    planted_text: str | None = None,
    empty_reward: float | str | None = None,
    progress: bool = True,
    planted_keywords: Sequence[str] = (),
    planted_bonus: float | None = None,
    text: str = "raw",
    **options: Any,
):
    """The reward named ``kind`` over ``dataset``'s concepts, with image embeddings computed (or read
    from cache) once; ``text`` is the scored text (``raw``, EX2's, or ``first-paragraph``) and
    ``empty_reward`` what degenerate texts get (None: the VLM's score, as EX2). Each reward takes
    the options it needs (``planted_*`` the planted reward, ``gen_question`` gen-likelihood) and
    ignores the rest; None leaves an option at the reward's default."""
    chosen = {"planted_text": planted_text, "planted_bonus": planted_bonus, **options}
    return REWARD_CLASSES.load(kind).build(
        vlm, dataset, images_per_class=images_per_class, seed=seed, empty_reward=empty_reward, progress=progress,
        planted_keywords=planted_keywords, text=text, **{k: v for k, v in chosen.items() if v is not None})
