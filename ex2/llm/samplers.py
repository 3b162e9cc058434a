"""Samplers: turn tokenised prompts and one seed per prompt into raw completions.

Two backends share one interface, ``sampler.generate(prompt_ids, seeds) -> list[str]``:

``transformers``  batched ``generate`` with left padding; a LoRA adapter is loaded with peft
                  (optionally merged in memory). Each prompt draws its random numbers from its own
                  seed, so a completion does not depend on which batch it landed in.
``vllm``          the base model with ``enable_lora=True`` and the adapter as a ``LoRARequest``;
                  on a GPU ``pip install 'ex2[vllm]'``, on a CPU vLLM's CPU build (README, "vLLM").

Backends are registered as "module:Class" strings and imported only when chosen::

    sampler = load_sampler("transformers", "smollm2", adapter=None, settings=SamplingSettings())
    raw = sampler.generate(encode_prompts(sampler.tokenizer, prompts, "chat"), seeds=[1, 2])
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import LogitsProcessor

from ex2.core.devices import dtype_name, resolve_device, resolve_dtype
from ex2.core.registry import LazyRegistry

# sampler name -> "module:Class"
SAMPLERS = LazyRegistry("sampler", {
    "transformers": "ex2.llm.samplers:TransformersSampler",
    "vllm": "ex2.llm.samplers:VLLMSampler",
})
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vllm accepts


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed; the message names the extra to install."""


@dataclass(frozen=True)
class SamplingSettings:
    """EX2's defaults: at most 32 new tokens, plain sampling (top_p 1, no top-k, temperature 1)."""

    max_new_tokens: int = 32
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k


def record_seed(seed: int, *key: object) -> int:
    """The seed of one sampled record, from the run seed and what the record is (for a description:
    concept, template, sample), not from the batch it lands in."""
    digest = hashlib.sha256("\0".join(map(str, (seed, *key))).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


class Sampler(Protocol):
    tokenizer: Any

    def generate(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[str]:
        """One raw completion per prompt (special tokens kept, cut after the first EOS)."""


def load_sampler(name: str, llm: str, adapter: str | Path | None, settings: SamplingSettings,
                 **options: Any) -> Sampler:
    """Build the sampler registered as ``name``; ``options`` go to its constructor."""
    return SAMPLERS.load(name)(llm, adapter, settings, **options)


def sampler_for(config: Any, adapter: str | Path | None) -> Sampler:
    """The sampler a stage's config asks for: its ``sampler``, ``llm``, sampling fields (``max_new_tokens``,
    ``temperature``, ``top_p``, ``top_k``), ``device``, ``dtype``, ``merge_adapter`` and ``batch_size``;
    vLLM also takes its ``seed`` (it seeds its own engine)."""
    sampling = SamplingSettings(config.max_new_tokens, config.temperature, config.top_p, config.top_k)
    options = {"device": config.device, "dtype": config.dtype, "merge_adapter": config.merge_adapter,
               "batch_size": config.batch_size}
    if config.sampler == "vllm":
        options["seed"] = config.seed
    return load_sampler(config.sampler, config.llm, adapter, sampling, **options)


def encode_prompts(tokenizer, prompts: list[str], prompt_format: str) -> list[list[int]]:
    """Token ids per prompt; special tokens (BOS) are added for the base format only, since a
    chat template already writes its own."""
    encoded = tokenizer(prompts, add_special_tokens=prompt_format == "base")
    return [list(ids) for ids in encoded["input_ids"]]


def even_batch_size(count: int, most: int = 64) -> int:
    """The batch size that splits ``count`` prompts into the fewest batches of at most ``most``, all
    of nearly equal size: on a CPU each batch costs a whole decode loop whatever its rows, so a small
    last batch is nearly as dear as a full one (200 prompts: 4 batches of 50, not 6 of 32 and 8)."""
    if count < 1 or most < 1:
        raise ValueError(f"even_batch_size needs a count and a largest batch of at least 1, got {count}, {most}")
    return -(-count // -(-count // most))


def resolve_adapter(path: str | Path) -> Path:
    """A PEFT adapter folder: ``path`` itself, or inside an ``ex2 train`` run folder its final
    ``adapter/`` (else its latest ``checkpoint-N``)."""
    path = Path(path).expanduser()
    if (path / "adapter_config.json").is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"adapter folder {path} does not exist; expected a PEFT adapter folder")
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter"
    numbered = [p for p in path.glob("checkpoint-*")
                if p.name.split("-", 1)[1].isdigit() and (p / "adapter_config.json").is_file()]
    if numbered:
        return max(numbered, key=lambda p: int(p.name.split("-", 1)[1]))
    raise FileNotFoundError(
        f"{path} holds no adapter_config.json (nor adapter/ or checkpoint-N folders with one); "
        "expected a PEFT adapter folder or an `ex2 train` run folder"
    )


def adapter_rank(adapter: Path) -> int:
    """The LoRA rank ``r`` from an adapter's ``adapter_config.json``."""
    config_file = Path(adapter) / "adapter_config.json"
    try:
        return int(json.loads(config_file.read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{config_file}: expected a PEFT LoRA config with an integer 'r' ({err})") from err


def cut_at_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Generated ids up to and including the first EOS (the padding after it dropped)."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[: i + 1]
    return ids


def eos_token_ids(tokenizer, model_generation_config=None) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    extra = getattr(model_generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    return sorted(ids)


# --- transformers ---------------------------------------------------------------------------


class SeededSampling(LogitsProcessor):
    """A logits processor that samples each row with its own seeded uniform draws.

    It applies temperature, top-k and top-p, picks a token by inverse-CDF sampling with the row's
    uniform number for this step, and leaves only that token's score finite, so ``generate`` in
    greedy mode emits it. Row ``i`` uses uniforms drawn from ``seeds[i]`` only.
    """

    def __init__(self, seeds: list[int], settings: SamplingSettings, prompt_width: int):
        self.settings = settings
        self.prompt_width = prompt_width
        self.uniforms = torch.stack([
            torch.rand(settings.max_new_tokens, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)
            for seed in seeds
        ])

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        from transformers import TopKLogitsWarper, TopPLogitsWarper

        scores = scores.float() / self.settings.temperature
        if self.settings.top_k > 0:
            scores = TopKLogitsWarper(self.settings.top_k)(None, scores)
        if self.settings.top_p < 1.0:
            scores = TopPLogitsWarper(self.settings.top_p)(None, scores)
        return scores

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        probs = torch.softmax(self.warp(scores), dim=-1)
        cdf = probs.double().cumsum(dim=-1) if probs.device.type != "mps" else probs.cumsum(dim=-1)
        u = self.uniforms[:, step].to(cdf.device, cdf.dtype).unsqueeze(1) * cdf[:, -1:]
        picked = torch.searchsorted(cdf, u, right=True).clamp_(max=scores.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picked, 0.0)


class TransformersSampler:
    """Batched sampling with transformers ``generate``; an adapter is applied with peft."""

    def __init__(self, llm: str, adapter: str | Path | None, settings: SamplingSettings,
                 device: str | None = None, dtype: str = "auto", merge_adapter: bool = False,
                 batch_size: int = 32):
        from ex2.llm.models import load_llm

        self.settings, self.batch_size = settings, batch_size
        model, tokenizer = load_llm(llm, device=device, dtype=dtype)
        eos_ids = eos_token_ids(tokenizer, model.generation_config)
        if adapter is not None:
            model = self._with_adapter(model, Path(adapter), merge_adapter)
        self._use(model, tokenizer, eos_ids)

    @classmethod
    def from_model(cls, model, tokenizer, settings: SamplingSettings, batch_size: int = 32) -> TransformersSampler:
        """A sampler over a model already in memory (a peft model just trained, say)."""
        sampler = cls.__new__(cls)
        sampler.settings, sampler.batch_size = settings, batch_size
        sampler._use(model, tokenizer, eos_token_ids(tokenizer, model.generation_config))
        return sampler

    def _use(self, model, tokenizer, eos_ids: list[int]) -> None:
        from transformers import GenerationConfig

        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        # a clean generation config: the model's own sampling defaults must not leak in
        model.generation_config = GenerationConfig(
            eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        )
        self.model = model.eval()

    @staticmethod
    def _with_adapter(model, adapter: Path, merge: bool):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        return model.merge_and_unload() if merge else model

    def _pad(self, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in prompt_ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_ids])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids])
        device = next(self.model.parameters()).device
        return input_ids.to(device), mask.to(device)

    @torch.inference_mode()
    def _generate_batch(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[str]:
        from transformers import LogitsProcessorList

        input_ids, mask = self._pad(prompt_ids)
        processors = []
        if self.settings.temperature > 0:
            processors.append(SeededSampling(seeds, self.settings, input_ids.shape[1]))
        output = self.model.generate(
            input_ids=input_ids, attention_mask=mask, do_sample=False,
            max_new_tokens=self.settings.max_new_tokens, logits_processor=LogitsProcessorList(processors),
        )
        new = output[:, input_ids.shape[1]:].tolist()
        eos = set(self.eos_ids)
        return [self.tokenizer.decode(cut_at_eos(ids, eos), skip_special_tokens=False) for ids in new]

    def generate(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            end = start + self.batch_size
            out += self._generate_batch(prompt_ids[start:end], seeds[start:end])
        return out


# --- vllm -----------------------------------------------------------------------------------


VLLM_INSTALL = ("pip install 'ex2[vllm]' on a CUDA machine; on a CPU, vLLM's CPU build in its own venv "
                "(make vllm-venv, README: vLLM)")


def import_vllm(what: str = "the vllm sampler", instead: str = "--sampler transformers"):
    """The vllm module, or an error naming how to install it (and what to use instead)."""
    try:
        import vllm
    except ImportError as err:
        raise MissingExtraError(f"{what} needs vLLM: {VLLM_INSTALL} (or use {instead})") from err
    return vllm


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vllm accepts that fits an adapter of rank ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds the largest rank vllm serves ({VLLM_LORA_RANKS[-1]})")


VLLM_CPU_KV_CACHE_BYTES = 1 << 30  # KV cache on a CPU: 1 GiB holds ~46k tokens of SmolLM2, ~8k of a 7B


def vllm_device_kwargs(dtype: str = "auto", device: str | None = None) -> dict[str, Any]:
    """``vllm.LLM``'s arguments for the device: ``dtype`` resolved on it as everywhere
    (:func:`ex2.core.devices.resolve_dtype`: on a CPU fp32, or bf16 with ``fast`` where native); on a CPU
    an eager engine (no torch.compile: a start costs seconds, not minutes) and a fixed KV cache instead
    of 92% of the machine's memory (``VLLM_CPU_KVCACHE_SPACE``, in GiB, overrides it)."""
    target = resolve_device(device)
    kwargs: dict[str, Any] = {"dtype": dtype_name(resolve_dtype(dtype, target))}
    if target.type == "cpu":
        kwargs["enforce_eager"] = True
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kwargs["kv_cache_memory_bytes"] = VLLM_CPU_KV_CACHE_BYTES
    return kwargs


def vllm_engine_kwargs(model_path: str, adapter: Path | None, seed: int = 0, dtype: str = "auto",
                       device: str | None = None) -> dict[str, Any]:
    """Arguments for ``vllm.LLM``: the base model, with LoRA enabled when an adapter is given."""
    kwargs: dict[str, Any] = {"model": model_path, "seed": seed, "max_model_len": 2048,
                              **vllm_device_kwargs(dtype, device)}
    if adapter is not None:
        kwargs.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(adapter_rank(adapter)), max_loras=1)
    return kwargs


def vllm_sampling_kwargs(settings: SamplingSettings, seed: int, eos_ids: list[int]) -> dict[str, Any]:
    """Arguments for one ``vllm.SamplingParams``: our settings, one seed per prompt."""
    return {
        "n": 1,
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": settings.top_k if settings.top_k > 0 else -1,  # -1: no top-k, in every vllm release
        "seed": seed,
        "stop_token_ids": list(eos_ids),
        "skip_special_tokens": False,
    }


def vllm_lora_args(adapter: Path | None) -> tuple[str, int, str] | None:
    """``(name, id, path)`` for ``vllm.lora.request.LoRARequest``; None without an adapter."""
    if adapter is None:
        return None
    return (Path(adapter).name or "adapter", 1, str(Path(adapter).resolve()))


def vllm_prompts(prompt_ids: list[list[int]]) -> list[dict[str, list[int]]]:
    """Token prompts, so vllm sees exactly the ids the transformers sampler sees."""
    return [{"prompt_token_ids": list(ids)} for ids in prompt_ids]


class VLLMSampler:
    """The base model served by vllm; the adapter applied per request, never merged to disk."""

    def __init__(self, llm: str, adapter: str | Path | None, settings: SamplingSettings,
                 device: str | None = None, dtype: str = "auto", merge_adapter: bool = False,
                 batch_size: int = 32, seed: int = 0):
        vllm = import_vllm()
        from vllm.lora.request import LoRARequest

        from ex2.llm.models import load_tokenizer, resolve_llm

        self.settings = settings
        self.tokenizer = load_tokenizer(llm)
        self.eos_ids = eos_token_ids(self.tokenizer)
        adapter = Path(adapter) if adapter is not None else None
        self.engine = vllm.LLM(**vllm_engine_kwargs(resolve_llm(llm), adapter, seed, dtype, device))
        lora = vllm_lora_args(adapter)
        self.lora_request = LoRARequest(*lora) if lora else None
        self.sampling_params = vllm.SamplingParams

    def generate(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[str]:
        params = [self.sampling_params(**vllm_sampling_kwargs(self.settings, s, self.eos_ids)) for s in seeds]
        outputs = self.engine.generate(vllm_prompts(prompt_ids), params, lora_request=self.lora_request,
                                       use_tqdm=False)
        return [out.outputs[0].text for out in outputs]
