"""Where models run and in which dtype: one answer for every stage.

``precision`` is ``fp32``, ``fp16``, ``bf16``, ``auto`` or ``fast``. ``auto`` means bf16 on a CUDA GPU
that supports it, else fp16 on CUDA, and fp32 anywhere else (CPU, MPS). ``fast`` is bf16 wherever the
hardware multiplies bf16 natively (those GPUs, and CPUs with AVX-512 BF16 or AMX, where it halves the
time of a small LLM's sampling and training step), else as ``auto``: quicker, but not bit-comparable
with an fp32 run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_CHOICES = ("auto", "fast", *PRECISIONS)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU (``""`` counts as not given)."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU with bf16 support, or a CPU
    with AVX-512 BF16 or AMX (other CPUs emulate it, slower than fp32)."""
    kind = resolve_device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":  # torch's own CPU feature checks (private; absent in older torch: no)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_dtype(precision: str, device: str | torch.device | None = None) -> torch.dtype:
    """The torch dtype for ``precision`` on ``device`` (default: :func:`resolve_device`)."""
    if precision == "fast":
        return torch.bfloat16 if native_bf16(device) else resolve_dtype("auto", device)
    if precision == "auto":
        if resolve_device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    return PRECISIONS[precision]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the spelling vllm and config files use."""
    return str(dtype).removeprefix("torch.")


@contextmanager
def accelerate_state_released() -> Iterator[None]:
    """Run a stage that builds an accelerate ``Accelerator`` (trl's trainer, ``ex2 finetune``), then
    forget accelerate's process-wide state, so that a later stage in the same process (the demo, a
    notebook) may choose another precision. The process group (``PartialState``) is kept."""
    try:
        yield
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
