"""One backend for transformers' image-text-to-text models (LLaVA, LLaVA-NeXT, Idefics3/SmolVLM,
Qwen2-VL, PaliGemma): ``AutoModelForImageTextToText`` with its ``AutoProcessor`` and chat template.

Three operations:

* :meth:`GenerativeVLM.generate`: answers to a prompt for a batch of images (greedy);
* :meth:`GenerativeVLM.prefix` + :meth:`GenerativeVLM.continuation_logprobs`: log-probabilities of
  candidate texts continuing a prompt. The prompt (image included) runs once; its KV cache is
  copied across a batch of candidates, so scoring C candidates costs one prefix forward plus
  forwards over the candidates' own tokens, not C forwards over image + prompt + candidate;
* :meth:`GenerativeVLM.features`: hidden states of a chosen layer at the prompt's last token or
  averaged over its tokens.

Continuations are token ids appended to the prompt's ids: the ids the candidate gets where it
follows the prompt in one text (:meth:`GenerativeVLM.continuation_ids`), so the cached and the
full-sequence scores see the same tokens, and a Llama tokenizer gives " kite" after "… a" the one
token '▁kite' on transformers 4 and 5 alike (tokenised alone, transformers 4.x made it '▁', '▁kite').

Prompt formats (``prompt_format``): ``chat`` the processor's chat template (ours), ``vlmclassifier``
LLaVA-1.5's ``USER: <image>\\n{question}\\nASSISTANT:`` as Zhang et al.'s ``main_results/main.py``
writes it (the llava-1.5-hf chat template puts a space before ``ASSISTANT:``), ``auto`` the latter for
LLaVA-1.5 models (``model_type`` llava) and the chat template for the others.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import PIL.Image
import torch

from ex2.core.devices import resolve_device, resolve_dtype
from ex2.core.names import VLMSpec, parse_gvlm_name
from ex2.vlm.offline import DOWNLOAD_HINT, hub_offline

LLAVA15_PROMPT = "USER: {image}{question}\nASSISTANT:"  # LLaVA-1.5's format as VLMClassifier's main.py writes it
FALLBACK_PROMPT = LLAVA15_PROMPT  # for processors without a chat template
PROMPT_FORMATS = ("auto", "chat", "vlmclassifier")
POOLS = ("last", "mean")


class NotADualEncoderError(TypeError, ValueError):
    """A generative VLM used where a dual encoder's embeddings are needed (the CLI prints it)."""


@dataclass
class PrefixState:
    """A prompt after one forward pass: its KV cache and the logits of its next token."""

    cache: object  # a transformers Cache for batch size 1
    next_logits: torch.Tensor  # [V], float32
    length: int  # prompt tokens (image tokens included)
    prompt: str = ""  # the prompt text, which continuations are tokenised after


def join_continuation(prefix: str, text: str) -> str:
    """``text`` as it continues ``prefix``: after a space unless the prefix ends in whitespace."""
    return text if not prefix or prefix[-1].isspace() else " " + text


def chat_prompt(processor, question: str, image: bool = True, answer_prefix: str = "") -> str:
    """A user turn asking ``question`` (about one image) through the processor's chat template (LLaVA-1.5's
    format without one), ready for the answer, followed by ``answer_prefix``."""
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": question}]
    if getattr(processor, "chat_template", None):
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
    else:
        token = getattr(processor, "image_token", "<image>")
        text = FALLBACK_PROMPT.format(image=f"{token}\n" if image else "", question=question)
    return text + (join_continuation(text, answer_prefix) if answer_prefix else "")


def continuation_ids(tokenizer, prompt: str, text: str) -> list[int]:
    """The ids of ``text`` where it follows ``prompt``: the ids of ``prompt + text`` past those of
    ``prompt``; ``text`` tokenised alone where the tokenizer merges across the seam or no prompt is
    given. (Alone, " kite" is '▁', '▁kite' to a Llama tokenizer with transformers 4.x's normaliser.)"""
    alone = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if prompt:
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        joint = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
        if len(joint) > len(head) and list(joint[: len(head)]) == list(head):
            return list(joint[len(head):])
    if not alone:
        raise ValueError(f"continuation {text!r} has no tokens")
    return alone


def format_prompt(processor, question: str, image: bool = True, answer_prefix: str = "",
                  prompt_format: str = "chat") -> str:
    """``question`` in the prompt format ``chat`` (:func:`chat_prompt`) or ``vlmclassifier``
    (LLaVA-1.5's as VLMClassifier writes it), followed by ``answer_prefix``."""
    if prompt_format == "chat":
        return chat_prompt(processor, question, image, answer_prefix)
    if prompt_format != "vlmclassifier":
        raise ValueError(f"unknown prompt format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")
    token = getattr(processor, "image_token", "<image>")
    text = LLAVA15_PROMPT.format(image=f"{token}\n" if image else "", question=question)
    return text + (join_continuation(text, answer_prefix) if answer_prefix else "")


def resolve_prompt_format(prompt_format: str, model_type: str | None) -> str:
    """``auto``: VLMClassifier's LLaVA-1.5 format for a ``llava`` model, else the chat template."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")
    if prompt_format == "auto":
        return "vlmclassifier" if model_type == "llava" else "chat"
    return prompt_format


class GenerativeVLM:
    """An image-text-to-text model and its processor, in inference mode."""

    logit_scale = 1.0  # its scores are log-probabilities, used unscaled

    def __init__(self, model, processor, identity: str) -> None:
        self.model, self.processor, self.identity = model.eval(), processor, identity
        self.tokenizer = getattr(processor, "tokenizer", processor)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # generation and last-token features read the right edge
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.model_type = getattr(model.config, "model_type", None)
        self._ids: dict[tuple[str, str], list[int]] = {}

    def __repr__(self) -> str:
        return f"GenerativeVLM({self.identity!r}, device={self.device}, dtype={self.dtype})"

    # --- prompts -----------------------------------------------------------------------------

    def prompt(self, question: str, image: bool = True, answer_prefix: str = "", prompt_format: str = "chat") -> str:
        """The model's turn asking ``question`` (about one image), ready for the answer, followed by
        ``answer_prefix``; in its chat template or another ``prompt_format`` (see the module docstring)."""
        fmt = resolve_prompt_format(prompt_format, self.model_type)
        return format_prompt(self.processor, question, image, answer_prefix, fmt)

    def inputs(self, images: Sequence[PIL.Image.Image] | None, prompts: Sequence[str]) -> dict:
        """Processor outputs on the model's device (pixel values in the model's dtype)."""
        kwargs = {"text": list(prompts), "return_tensors": "pt", "padding": True}
        if images:
            kwargs["images"] = list(images)
        batch = self.processor(**kwargs)
        return {
            k: v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device)
            for k, v in batch.items()
            if isinstance(v, torch.Tensor)
        }

    # --- generation --------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        images: Sequence[PIL.Image.Image],
        prompts: str | Sequence[str],
        max_new_tokens: int = 64,
        batch_size: int = 8,
    ) -> list[str]:
        """Greedy answers, one per image; ``prompts`` is one prompt for all or one per image."""
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
        answers = []
        for start in range(0, len(images), batch_size):
            batch = self.inputs(images[start : start + batch_size], prompts[start : start + batch_size])
            output = self.model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
            )
            new = output[:, batch["input_ids"].shape[1] :]
            answers += [a.strip() for a in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return answers

    # --- continuation log-probabilities ------------------------------------------------------

    def token_ids(self, text: str) -> list[int]:
        """The ids of ``text`` tokenised alone (no special tokens)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"continuation {text!r} has no tokens")
        return list(ids)

    def continuation_ids(self, prompt: str, text: str) -> list[int]:
        """The ids of ``text`` where it follows ``prompt`` (:func:`continuation_ids`), cached."""
        key = (prompt, text)
        if key not in self._ids:
            self._ids[key] = continuation_ids(self.tokenizer, prompt, text)
        return self._ids[key]

    @torch.inference_mode()
    def prefix(self, image: PIL.Image.Image | None, prompt: str) -> PrefixState:
        """Run the prompt (with its image, if any) once and keep its KV cache."""
        batch = self.inputs([image] if image is not None else None, [prompt])
        output = self.model(**batch, use_cache=True)
        cache = getattr(output, "cache", None) or output.past_key_values
        return PrefixState(cache, output.logits[0, -1].float(), int(batch["input_ids"].shape[1]), prompt)

    @torch.inference_mode()
    def continuation_logprobs(
        self, state: PrefixState, continuations: Sequence[str], batch_size: int = 32
    ) -> list[torch.Tensor]:
        """Per-token log-probabilities of each continuation after the cached prompt (CPU float32)."""
        ids = [self.continuation_ids(state.prompt, text) for text in continuations]
        first = torch.log_softmax(state.next_logits, dim=-1).cpu()
        out = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            rest = self._continue(state, chunk)
            out += [torch.cat([first[c[:1]], r]) for c, r in zip(chunk, rest, strict=True)]
        return out

    def _continue(self, state: PrefixState, chunk: list[list[int]]) -> list[torch.Tensor]:
        """Log-probabilities of tokens 2.. of each candidate, with the prefix cache repeated."""
        longest = max(len(c) for c in chunk)
        if longest == 1:
            return [torch.empty(0) for _ in chunk]
        width = longest - 1  # the last token of a candidate is only predicted, never fed
        pad = self.tokenizer.pad_token_id
        fed = torch.tensor([c[:-1] + [pad] * (width - len(c) + 1) for c in chunk], device=self.device)
        mask = torch.tensor([[1] * (len(c) - 1) + [0] * (width - len(c) + 1) for c in chunk], device=self.device)
        mask = torch.cat([torch.ones(len(chunk), state.length, dtype=mask.dtype, device=self.device), mask], dim=1)
        cache = copy.deepcopy(state.cache)
        cache.batch_repeat_interleave(len(chunk))
        output = self.model(input_ids=fed, attention_mask=mask, use_cache=True, **{self._cache_kwarg: cache})
        logprobs = torch.log_softmax(output.logits.float(), dim=-1)
        return [
            logprobs[i, torch.arange(len(c) - 1), torch.tensor(c[1:], dtype=torch.long, device=self.device)].cpu()
            for i, c in enumerate(chunk)
        ]

    @torch.inference_mode()
    def full_logprobs(self, image: PIL.Image.Image | None, prompt: str, continuation: str) -> torch.Tensor:
        """The same log-probabilities from one forward over prompt + continuation (the reference)."""
        batch = self.inputs([image] if image is not None else None, [prompt])
        ids = torch.tensor([self.continuation_ids(prompt, continuation)], device=self.device)
        length = batch["input_ids"].shape[1]
        batch["input_ids"] = torch.cat([batch["input_ids"], ids], dim=1)
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        logits = self.model(**batch).logits[0, length - 1 : -1].float()
        return torch.log_softmax(logits, dim=-1).gather(1, ids[0, :, None])[:, 0].cpu()

    def score_continuations(
        self,
        images: Sequence[PIL.Image.Image | None],
        prompt: str,
        continuations: Sequence[str],
        length_norm: str = "mean",
        batch_size: int = 32,
    ) -> torch.Tensor:
        """``[N, C]`` summed or mean token log-probabilities of each continuation after each image's
        prompt (one prefix forward per image)."""
        rows = [reduce_logprobs(per_token, length_norm)
                for per_token in self.token_logprobs(images, prompt, continuations, batch_size)]
        return torch.stack(rows) if rows else torch.empty(0, len(continuations))

    def token_logprobs(
        self, images: Sequence[PIL.Image.Image | None], prompt: str, continuations: Sequence[str], batch_size: int = 32
    ) -> list[list[torch.Tensor]]:
        """Per image, each continuation's per-token log-probabilities after the prompt."""
        return [self.continuation_logprobs(self.prefix(image, prompt), continuations, batch_size) for image in images]

    # --- features ----------------------------------------------------------------------------

    @torch.inference_mode()
    def features(
        self,
        images: Sequence[PIL.Image.Image],
        prompt: str,
        layer: int = -1,
        pool: str = "last",
        batch_size: int = 8,
    ) -> torch.Tensor:
        """``[N, D]`` hidden states of ``layer`` (index into the embeddings + every block's output)
        at the prompt's last token (``last``) or averaged over its tokens (``mean``); CPU float32."""
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        rows = []
        for start in range(0, len(images), batch_size):
            batch = self.inputs(images[start : start + batch_size], [prompt] * len(images[start : start + batch_size]))
            hidden = self.model(**batch, output_hidden_states=True).hidden_states
            if not -len(hidden) <= layer < len(hidden):
                raise ValueError(f"layer {layer} is outside the model's {len(hidden)} hidden states")
            states, mask = hidden[layer].float(), batch["attention_mask"][..., None].float()
            rows.append(states[:, -1] if pool == "last" else (states * mask).sum(1) / mask.sum(1))
        return torch.cat(rows).cpu() if rows else torch.empty(0, 0)

    # --- what a dual encoder has and this model has not --------------------------------------

    def encode_texts(self, *args, **kwargs):  # noqa: D102
        raise NotADualEncoderError(f"{self.identity} is a generative VLM: it has no text embeddings; classify with "
                        "--method open, closed or likelihood, or train with --reward gen-likelihood")

    encode_images = preprocess = embedding_dim = encode_texts


def reduce_logprobs(per_token: Sequence[torch.Tensor], length_norm: str = "mean") -> torch.Tensor:
    """One score per continuation: the mean (length-normalised) or the sum of its token log-probs."""
    if length_norm not in ("mean", "sum"):
        raise ValueError(f"length_norm must be mean or sum, not {length_norm!r}")
    return torch.stack([t.mean() if length_norm == "mean" else t.sum() for t in per_token])


def load_gvlm(name: str, device: str | None = None, precision: str = "auto") -> GenerativeVLM:
    """Load a generative VLM named ``gen:ORG/NAME`` or ``gen:local-dir:PATH``, offline unless
    ``EX2_ALLOW_DOWNLOAD=1``."""
    spec = parse_gvlm_name(name)
    torch_device = resolve_device(device)
    return load_generative(spec, torch_device, resolve_dtype(precision, torch_device))


def load_generative(spec: VLMSpec, device: torch.device, dtype: torch.dtype) -> GenerativeVLM:
    """The loader behind :func:`load_gvlm` (and ``ex2.vlm.load_vlm`` for ``gen:`` names)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        with hub_offline():
            processor = AutoProcessor.from_pretrained(spec.model)
            model = AutoModelForImageTextToText.from_pretrained(spec.model, dtype=dtype)
    except OSError as err:
        raise FileNotFoundError(
            f"generative VLM {spec.model}: not a model folder and not in the local Hugging Face cache "
            f"({err}); {DOWNLOAD_HINT}"
        ) from err
    return GenerativeVLM(model.to(device), processor, f"gen:{spec.model}")
