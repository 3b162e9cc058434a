"""Generative (image-text-to-text) VLMs: LLaVA, LLaVA-NeXT, Idefics3/SmolVLM, Qwen2-VL, PaliGemma.

    from ex2.gvlm import load_gvlm
    vlm = load_gvlm("gen:llava-hf/llava-1.5-7b-hf")           # or gen:local-dir:PATH; offline
    prompt = vlm.prompt("What type of object is in this photo?")
    answers = vlm.generate(images, prompt)                      # greedy, batched
    scores = vlm.score_continuations(images, vlm.prompt(q, answer_prefix="This is a photo of a"),
                                     [" cat", " dog"])           # [N, C], prompt run once per image
    features = vlm.features(images, prompt, layer=-1, pool="last")

``ex2 classify --vlm gen:… --method open|closed|likelihood`` (:mod:`ex2.classify.generative`),
``ex2 probe --vlm gen:…`` and the ``gen-likelihood`` reward (:mod:`ex2.reward.gen_likelihood`) build on it.
"""

from __future__ import annotations

from ex2.gvlm.backend import GenerativeVLM, PrefixState, load_gvlm, reduce_logprobs

__all__ = ["GenerativeVLM", "PrefixState", "load_gvlm", "reduce_logprobs"]
