"""transformers dual encoders (CLIP, SigLIP, ALIGN) by hub id or local folder.

Hub ids are read from the Hugging Face cache only, unless ``EX2_ALLOW_DOWNLOAD=1``.
"""

from __future__ import annotations

from pathlib import Path

import PIL.Image
import torch

from ex2.core.names import VLMSpec
from ex2.vlm.base import VLM
from ex2.vlm.offline import DOWNLOAD_HINT, downloads_allowed, fingerprint, hub_offline

WEIGHT_GLOBS = ("*.safetensors", "*.bin")


def _pooled(output) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and a model output in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _scale_and_bias(model) -> tuple[float, float]:
    if hasattr(model, "temperature"):  # ALIGN divides by a temperature
        return 1.0 / model.temperature.item(), 0.0
    bias = getattr(model, "logit_bias", None)
    return model.logit_scale.exp().item(), bias.item() if bias is not None else 0.0


class TransformersVLM(VLM):
    """A transformers model with ``get_image_features`` / ``get_text_features``."""

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        identity: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(identity, device, dtype, *_scale_and_bias(model))
        self.model, self.tokenizer, self.image_processor = model.eval(), tokenizer, image_processor
        self.siglip = model.config.model_type.startswith("siglip")

    def preprocess(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The text tower's inputs for ``texts`` (on the CPU)."""
        tokens = self.tokenizer(
            texts,
            padding="max_length" if self.siglip else True,
            truncation=True,
            return_tensors="pt",
        )
        # SigLIP was trained on max-length padded text without an attention mask
        return {"input_ids": tokens["input_ids"]} if self.siglip else dict(tokens)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return _pooled(self.model.get_text_features(**tokens))


def _identity(source: str) -> str:
    folder = Path(source)
    if not folder.is_dir():
        return f"transformers:{source}"
    weights = [p for glob in WEIGHT_GLOBS for p in folder.glob(glob)]
    return f"transformers:{folder.resolve()}@{fingerprint(weights)}"


def _from_pretrained(source: str, dtype: torch.dtype):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    local = not downloads_allowed()
    model = AutoModel.from_pretrained(source, dtype=dtype, local_files_only=local)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    image_processor = AutoImageProcessor.from_pretrained(source, local_files_only=local)
    return model, tokenizer, image_processor


def load_transformers(spec: VLMSpec, device: torch.device, dtype: torch.dtype) -> TransformersVLM:
    """Load a CLIP, SigLIP or ALIGN model, its tokenizer and image processor."""
    source = spec.model
    is_folder = Path(source).is_dir()
    try:
        with hub_offline():
            model, tokenizer, image_processor = _from_pretrained(source, dtype)
    except OSError as err:
        if is_folder or downloads_allowed():
            raise
        raise FileNotFoundError(
            f"VLM {source!r} is neither a local folder nor in the Hugging Face cache ({err}); {DOWNLOAD_HINT}"
        ) from err
    if not all(hasattr(model, f) for f in ("get_image_features", "get_text_features")):
        raise ValueError(
            f"{source} is a {type(model).__name__}, not an image-text dual encoder; "
            "expected a CLIP, SigLIP or ALIGN model"
        )
    return TransformersVLM(model.to(device), tokenizer, image_processor, _identity(source), device, dtype)
