"""open_clip models: built-in architectures with a pretrained tag or a checkpoint file,
``hf-hub:ORG/NAME`` repos and ``local-dir:PATH`` folders (``open_clip_config.json`` + weights).

Weights come from local files or the Hugging Face cache only, unless ``EX2_ALLOW_DOWNLOAD=1``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import PIL.Image
import torch

from ex2.core.names import CHECKPOINT_SUFFIXES, ModelNameError, VLMSpec
from ex2.vlm.base import VLM
from ex2.vlm.offline import DOWNLOAD_HINT, downloads_allowed, fingerprint, hub_offline

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pth")  # what open_clip looks for in a local-dir


class OpenClipVLM(VLM):
    """An open_clip ``CLIP``/``CustomTextCLIP`` model with its eval transform and tokenizer."""

    def __init__(
        self, model, transform, tokenizer, identity: str, device: torch.device, dtype: torch.dtype
    ) -> None:
        bias = getattr(model, "logit_bias", None)
        # CLIP-style models score 100 * cosine; SigLIP-style ones keep their learned scale and bias
        scale = model.logit_scale.exp().item() if bias is not None else 100.0
        super().__init__(identity, device, dtype, scale, bias.item() if bias is not None else 0.0)
        self.model, self.transform, self.tokenizer = model.eval(), transform, tokenizer
        self.trims_padding = trims_padding(model, tokenizer)

    def preprocess(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.transform(image)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return encode_trimmed(self.model, tokens) if self.trims_padding else self.model.encode_text(tokens)


def trims_padding(model, tokenizer) -> bool:
    """Whether texts may run through the text tower without the padding after their end token:
    open_clip's ``CLIP`` with a causal mask, features taken at the end token (the highest id, as
    open_clip's own tokenizer writes it, padding with 0), so no position up to a text's end token
    attends to the padding after it."""
    import open_clip

    return (type(model) is open_clip.CLIP and model.text_pool_type == "argmax" and model.attn_mask is not None
            and isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer))


def encode_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` on the positions up to the batch's longest text: the same
    features (to float rounding) for a fraction of the work; CLIP's templates take 12 of 77."""
    from open_clip.transformer import text_global_pool

    length = int((tokens != 0).sum(1).max())
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type)
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def _check_architecture(model: str) -> None:
    import open_clip

    if model not in open_clip.list_models():
        close = difflib.get_close_matches(model, open_clip.list_models(), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
        raise ModelNameError(f"open_clip has no architecture {model!r}{hint}")


def _check_pretrained(model: str, pretrained: str | None) -> str:
    """Return the pretrained tag or the absolute checkpoint path; raise a clear error otherwise."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained is None:
        raise ModelNameError(
            f"open_clip model {model!r} needs weights: MODEL:TAG (tags: "
            f"{', '.join(tags) or 'none'}) or MODEL:/path/to/checkpoint"
        )
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path.resolve())
    if pretrained in tags:
        return pretrained
    if "/" in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(f"checkpoint file {path} does not exist (VLM {model}:{pretrained})")
    raise ModelNameError(
        f"open_clip model {model!r} has no pretrained tag {pretrained!r}; "
        f"tags: {', '.join(tags) or 'none'}; or pass MODEL:/path/to/checkpoint"
    )


def _local_dir(model: str) -> tuple[str, Path]:
    folder = Path(model.removeprefix("local-dir:")).expanduser().resolve()
    if not (folder / "open_clip_config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not an open_clip folder: it needs open_clip_config.json "
            "and a weights file (e.g. open_clip_model.safetensors)"
        )
    if not any(p for glob in WEIGHT_GLOBS for p in folder.glob(glob)):
        raise FileNotFoundError(f"open_clip folder {folder} has no weights file ({', '.join(WEIGHT_GLOBS)})")
    return f"local-dir:{folder}", folder


def needs_quick_gelu(model: str, tag: str) -> bool:
    """Weights trained with QuickGELU (OpenAI's) on an architecture built with GELU: open_clip 3
    only warns, so ``ViT-B-32:openai`` (EX2's spelling) would run with the wrong activation."""
    import open_clip

    trained_with = (open_clip.get_pretrained_cfg(model, tag) or {}).get("quick_gelu", False)
    return trained_with and not open_clip.get_model_config(model).get("quick_gelu", False)


def _resolve(spec: VLMSpec) -> tuple[dict, str]:
    """(keyword arguments for ``create_model_and_transforms``, identity) for a parsed name."""
    if spec.model.startswith("local-dir:"):
        name, folder = _local_dir(spec.model)
        weights = [p for glob in WEIGHT_GLOBS for p in folder.glob(glob)]
        return {"model_name": name}, f"open_clip:{name}@{fingerprint(weights)}"
    if spec.model.startswith("hf-hub:"):
        return {"model_name": spec.model}, f"open_clip:{spec.model}"
    _check_architecture(spec.model)
    pretrained = _check_pretrained(spec.model, spec.pretrained)
    if Path(pretrained).is_file():
        identity = f"open_clip:{spec.model}:{pretrained}@{fingerprint([Path(pretrained)])}"
        return {"model_name": spec.model, "pretrained": pretrained}, identity
    quick_gelu = needs_quick_gelu(spec.model, pretrained)
    kwargs = {"model_name": spec.model, "pretrained": pretrained, "force_quick_gelu": quick_gelu}
    return kwargs, f"open_clip:{spec.model}:{pretrained}"


def load_open_clip(spec: VLMSpec, device: torch.device, dtype: torch.dtype) -> OpenClipVLM:
    """Build an open_clip model, its eval transform and tokenizer from local files or the cache."""
    import open_clip

    kwargs, identity = _resolve(spec)
    checkpoint = kwargs.get("pretrained")
    local = kwargs["model_name"].startswith("local-dir:") or (checkpoint and Path(checkpoint).is_file())
    try:
        with hub_offline():
            model, _, transform = open_clip.create_model_and_transforms(
                **kwargs, device=device, require_pretrained=True
            )
            tokenizer = open_clip.get_tokenizer(kwargs["model_name"])
    except (RuntimeError, OSError) as err:
        if local or downloads_allowed():
            raise
        raise FileNotFoundError(
            f"VLM {spec.identity!r} is not in the Hugging Face cache and "
            f"downloads are off ({err}); {DOWNLOAD_HINT}"
        ) from err
    if dtype != torch.float32:
        model = model.to(dtype)
    return OpenClipVLM(model, transform, tokenizer, identity, device, dtype)
