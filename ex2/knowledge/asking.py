"""Asking the LLM CoDer's questions in ``ex2 knowledge``: batched, seeded per question, each answer
appended to the partial file as it finishes (a rerun asks only what is missing); analogues too
similar to another class are dropped and asked for again, naming what to avoid."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ex2.core.io import append_jsonl
from ex2.core.text import SPECIAL_TOKEN
from ex2.knowledge.answers import answer_text, parse_items
from ex2.knowledge.pairs import too_similar
from ex2.llm.models import format_prompt
from ex2.llm.samplers import Sampler, encode_prompts, record_seed

LLM_KINDS = ("attributes", "analogous", "ovo")
QUESTIONS = {
    "attributes": "Which visual features would let someone recognise a {c} in a photo? "
                  "Answer with a short list, one feature per line.",
    "analogous": "Name other kinds of objects or animals that look a lot like a {c} in a photo. "
                 "Answer with a short list of names, one per line.",
    "ovo": "In a photo, what makes a {c} look different from a {b}? Answer with a short list of "
           "features of the {c}, one per line.",
}
RETRY_QUESTION = ("Name other kinds of objects or animals that look a lot like a {c} in a photo, "
                  "but not {avoid}. Answer with a short list of names, one per line.")


@dataclass(frozen=True)
class Question:
    kind: str
    class_id: int
    concept: str
    other: str | None = None
    attempt: int = 0
    avoid: tuple[str, ...] = ()

    @property
    def key(self) -> list:
        return [self.kind, self.concept, self.other, self.attempt]

    @property
    def text(self) -> str:
        if self.kind == "analogous" and self.attempt:
            return RETRY_QUESTION.format(c=self.concept, avoid=", ".join(self.avoid))
        return QUESTIONS[self.kind].format(c=self.concept, b=self.other)


class Asker:
    """Asks questions through a sampler, opened by ``open_sampler`` only when a question is still to
    be asked; each answer is appended to the partial file as it finishes (``done`` holds those of
    an interrupted run, by question key) and parsed into at most ``max_items`` items."""

    def __init__(self, open_sampler: Callable[[], Sampler], partial: Path, done: dict[str, dict], prompt_format: str,
                 seed: int, batch_size: int, max_items: int) -> None:
        self.open_sampler, self.partial, self.done, self.prompt_format = open_sampler, partial, done, prompt_format
        self.seed, self.batch_size, self.max_items = seed, batch_size, max_items
        self.sampler: Sampler | None = None

    def ask(self, questions: list[Question]) -> dict[str, dict]:
        """The answer to each question, by its key (``json.dumps(question.key)``)."""
        todo = [q for q in questions if json.dumps(q.key) not in self.done]
        if todo and self.sampler is None:
            self.sampler = self.open_sampler()
        bar = tqdm(total=len(questions), initial=len(questions) - len(todo), unit="question", desc="knowledge")
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            tokenizer, fmt = self.sampler.tokenizer, self.prompt_format
            prompts = [format_prompt(tokenizer, q.text, fmt) for q in batch]
            seeds = [record_seed(self.seed, q.concept, q.text, q.attempt) for q in batch]
            raws = self.sampler.generate(encode_prompts(tokenizer, prompts, fmt), seeds)
            special = list(getattr(tokenizer, "all_special_tokens", []))
            for q, prompt, raw in zip(batch, prompts, raws, strict=True):
                row = {"key": q.key, "question": q.text, "raw": raw, "answer": answer_text(raw, prompt, special),
                       "complete": any(t in raw for t in self._eos_texts())}
                append_jsonl(self.partial, row)
                self.done[json.dumps(q.key)] = row
            bar.update(len(batch))
        bar.close()
        return {json.dumps(q.key): self.done[json.dumps(q.key)] for q in questions}

    def items(self, answers: dict[str, dict], question: Question) -> list[str]:
        """The items of the answer to ``question`` (an answer cut off by the token limit loses its last line)."""
        answer = answers[json.dumps(question.key)]
        complete = answer.get("complete", SPECIAL_TOKEN.search(answer["raw"]) is not None)
        return parse_items(answer["answer"], question.kind, question.concept, self.max_items, complete=complete)

    def _eos_texts(self) -> list[str]:
        """How the end-of-sequence tokens read in a completion (an answer without one was cut off)."""
        tokenizer = self.sampler.tokenizer
        ids = getattr(self.sampler, "eos_ids", None) or [tokenizer.eos_token_id]
        return [t for t in (tokenizer.decode([i]) for i in ids if i is not None) if t]


def ask_analogous(asker: Asker, vlm, concepts: list[str], class_embeddings: torch.Tensor, retries: int,
                  max_similarity: float) -> dict[int, list[str]]:
    """Analogues per class: dropped when their VLM text similarity to another class exceeds
    ``max_similarity``, and asked for again (up to ``retries`` times) naming those to avoid."""
    kept: dict[int, list[str]] = {c: [] for c in range(len(concepts))}
    avoid: dict[int, list[str]] = {c: [] for c in range(len(concepts))}
    round_ = [Question("analogous", c, name) for c, name in enumerate(concepts)]
    for attempt in range(retries + 1):
        answers = asker.ask(round_)
        again = []
        for q in round_:
            items = [i for i in asker.items(answers, q) if i not in kept[q.class_id]]
            flags = too_similar(vlm, items, class_embeddings, q.class_id, max_similarity)
            kept[q.class_id] += [i for i, bad in zip(items, flags, strict=True) if not bad]
            dropped = [i for i, bad in zip(items, flags, strict=True) if bad]
            avoid[q.class_id] += dropped
            if dropped:
                again.append(Question("analogous", q.class_id, q.concept, attempt=attempt + 1,
                                      avoid=tuple(avoid[q.class_id])))
        round_ = again
        if not round_:
            break
    return kept
