"""``gen-likelihood``: how much a concept's images raise a generative VLM's belief in a
description.

For a description ``t`` of concept ``c`` with images ``I_1..I_N``, and ``q_c`` the question
``--gen-question`` about ``c`` (default "Describe what a {concept} looks like.")::

    r(t, c) = 1/N · Σ_i  mean_tok log p(t | I_i, q_c)  -  mean_tok log p(t | q_c)

the length-normalised log-likelihood of ``t`` as the answer, with each image, minus without any
image (the same question, no image in the turn): texts the image makes likelier score high,
texts that are likely whatever the image (fluent but generic) score near zero. Each (concept,
image) prompt runs once; its KV cache is kept (an LRU of ``prefix_cache_size`` states) and
reused for every description scored against it. Rewards below :attr:`floor` (``-log V``, the
gain of a text the image makes less likely than a uniform guess per token) are clipped to it;
empty texts get it too.

    reward = GenLikelihoodReward.build(load_gvlm("gen:local-dir:PATH"), load_dataset("samples"), 2)
    reward(completions=["a tabby with whiskers"], concept=["cat"])   # trl's reward signature
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import PIL.Image
import torch

from ex2.data import load_image, sample_per_class
from ex2.gvlm.backend import GenerativeVLM, PrefixState, join_continuation, reduce_logprobs
from ex2.reward.base import ConceptReward, EmptyReward

DEFAULT_GEN_QUESTION = "Describe what a {concept} looks like."


class GenLikelihoodReward(ConceptReward):
    """Length-normalised log-likelihood of a description given the concept's images minus given none."""

    __name__ = "gen_likelihood_reward"

    def __init__(
        self,
        vlm: GenerativeVLM,
        images: Sequence[Sequence[PIL.Image.Image]],
        concepts: Sequence[str],
        question: str = DEFAULT_GEN_QUESTION,
        empty_reward: EmptyReward = None,
        prefix_cache_size: int = 64,
        batch_size: int = 32,
        text: str = "raw",
    ) -> None:
        if not isinstance(vlm, GenerativeVLM):
            raise ValueError("the gen-likelihood reward needs a generative VLM: --vlm gen:ORG/NAME or gen:local-dir:PATH")
        if len(images) != len(concepts):
            raise ValueError(f"{len(images)} image lists for {len(concepts)} concepts")
        empty = [c for c, imgs in zip(concepts, images, strict=True) if not imgs]
        if empty:
            raise ValueError(f"concept(s) without readable images, so without a reward: {', '.join(empty[:10])}")
        self.vocab_size = len(vlm.tokenizer)
        super().__init__(vlm, concepts, empty_reward, text)
        self.images = [list(i) for i in images]
        self.question, self.batch_size, self.prefix_cache_size = question, batch_size, prefix_cache_size
        self._prefixes: OrderedDict[tuple[int, int | None], PrefixState] = OrderedDict()

    @property
    def floor(self) -> float:
        return -math.log(self.vocab_size)

    def prompt(self, concept_id: int, image: bool) -> str:
        return self.vlm.prompt(self.question.format(concept=self.concepts[concept_id]), image=image)

    def prefix(self, concept_id: int, image_index: int | None) -> PrefixState:
        """The cached prompt state of a concept with one of its images (or none)."""
        key = (concept_id, image_index)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key]
        image = None if image_index is None else self.images[concept_id][image_index]
        state = self.vlm.prefix(image, self.prompt(concept_id, image is not None))
        self._prefixes[key] = state
        while len(self._prefixes) > self.prefix_cache_size:
            self._prefixes.popitem(last=False)
        return state

    def loglik(self, concept_id: int, image_index: int | None, texts: list[str]) -> torch.Tensor:
        """Mean token log-probability of each text as the answer about one image (or none)."""
        prompt = self.prompt(concept_id, image_index is not None)
        continuations = [join_continuation(prompt, t) for t in texts]
        per_token = self.vlm.continuation_logprobs(self.prefix(concept_id, image_index), continuations, self.batch_size)
        return reduce_logprobs(per_token, "mean")

    def concept_scores(self, concept_id: int, texts: list[str]) -> torch.Tensor:
        """Rewards of texts describing one concept."""
        with_images = torch.stack([self.loglik(concept_id, i, texts) for i in range(len(self.images[concept_id]))])
        return with_images.mean(0) - self.loglik(concept_id, None, texts)

    def score(self, texts: list[str], concept_ids: list[int]) -> torch.Tensor:
        out = torch.empty(len(texts))
        for concept_id in dict.fromkeys(concept_ids):
            rows = [i for i, c in enumerate(concept_ids) if c == concept_id]
            out[rows] = self.concept_scores(concept_id, [texts[i] for i in rows])
        return out.clamp_min(self.floor)

    @classmethod
    def build(cls, vlm, dataset, images_per_class: int | None = 256, seed: int | None = None,
              empty_reward: EmptyReward = None, gen_question: str = DEFAULT_GEN_QUESTION, text: str = "raw",
              **_) -> GenLikelihoodReward:
        """The reward over ``dataset``'s concepts with ``images_per_class`` images each (every image
        costs one prompt forward per concept, so a few are enough: EX2's 256 suit dual encoders)."""
        if not isinstance(vlm, GenerativeVLM):
            raise ValueError("the gen-likelihood reward needs a generative VLM: --vlm gen:ORG/NAME or gen:local-dir:PATH")
        chosen = sample_per_class(dataset, images_per_class, seed)
        images = [[im for im in (load_image(p) for p in chosen[c]) if im is not None]
                  for c in range(len(dataset.classnames))]
        return cls(vlm, images, dataset.classnames, gen_question, empty_reward, text=text)
