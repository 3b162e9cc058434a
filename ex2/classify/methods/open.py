"""``open`` (Zhang et al., NeurIPS 2024): a generative VLM is asked what is in the photo; the answer is
right when it names the true class (matching rule: :mod:`ex2.classify.generative`).

    ex2 classify --vlm gen:llava-hf/llava-1.5-7b-hf --method open --synonyms pets_synonyms.txt --output runs/open
"""

from __future__ import annotations

from ex2.classify import generative
from ex2.classify.methods.base import Method
from ex2.classify.options import AnswerOptions, QuestionOptions

METHOD = Method(
    name="open",
    summary="a generative VLM answers what is in the photo; right when it names the class",
    options=(QuestionOptions, AnswerOptions),
    run=generative.run,
    check=generative.check_config,
    needs_gvlm=True,
)
