"""Vision-language models behind one interface, and disk caches of image and text embeddings.

    from ex2.vlm import load_vlm, embed_images, embed_texts
    vlm = load_vlm("conse")             # or "ViT-B-32:openai", "openai/clip-vit-base-patch32"
    images = embed_images(vlm, paths)   # cached on disk by (model, file, size, mtime)
    texts = embed_texts(vlm, ["a photo of a cat."])   # cached on disk by (model, exact text)
    logits = vlm.logit_scale * images.embeddings @ texts.T

Names follow :mod:`ex2.core.names`. Nothing is downloaded unless ``EX2_ALLOW_DOWNLOAD=1``.
"""

from __future__ import annotations

from ex2.core.devices import resolve_device, resolve_dtype
from ex2.core.names import VLMSpec, parse_vlm_name
from ex2.core.registry import LazyRegistry
from ex2.vlm.base import VLM
from ex2.vlm.cache import ImageEmbeddings, embed_images, embed_texts

# backend -> "module:loader"; a loader takes (VLMSpec, device, dtype) and is imported only when used
BACKENDS = LazyRegistry("VLM backend", {
    "open_clip": "ex2.vlm.open_clip_backend:load_open_clip",
    "transformers": "ex2.vlm.transformers_backend:load_transformers",
    "conse": "ex2.vlm.conse:load_conse",
    "generative": "ex2.gvlm.backend:load_generative",  # gen:… names: a GenerativeVLM, not a dual encoder
})


def load_vlm(name: str, device: str | None = None, precision: str = "auto") -> VLM:
    """Load a VLM by name (see :mod:`ex2.core.names`) on ``device`` (default: CUDA if available).

    ``precision`` is ``fp32``, ``fp16``, ``bf16`` or ``auto`` (see :mod:`ex2.core.devices`).
    """
    spec = parse_vlm_name(name)
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    return BACKENDS.load(spec.backend)(spec, torch_device, dtype)


__all__ = ["BACKENDS", "VLM", "ImageEmbeddings", "VLMSpec", "embed_images", "embed_texts", "load_vlm"]
