"""Where models run and in which dtype: one answer for every stage.

``precision`` is ``fp32``, ``fp16``, ``bf16`` or ``auto``. ``auto`` means bf16 on a CUDA GPU that
supports it, else fp16 on CUDA, and fp32 anywhere else (CPU, MPS).
"""

from __future__ import annotations

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU (``""`` counts as not given)."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(precision: str, device: str | torch.device | None = None) -> torch.dtype:
    """The torch dtype for ``precision`` on ``device`` (default: :func:`resolve_device`)."""
    if precision == "auto":
        if resolve_device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the spelling vllm and config files use."""
    return str(dtype).removeprefix("torch.")
