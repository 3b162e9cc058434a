"""The dual encoders ``ex2 finetune`` trains, behind one small interface.

A :class:`Towers` knows how one backend's model encodes images (pooled, and the ViT's patch
tokens for GRAIN's region decoder) and texts, its similarity scale and bias, which layers LoRA
adapts, and how to save the model so it loads back as an ex2 VLM. It holds no weights: the
``torch.nn.Module`` is passed to each call, so accelerate may wrap, shard or cast it.

    model, towers = load_towers("ViT-B-32:openai")          # open_clip
    model, towers = load_towers("openai/clip-vit-base-patch32")   # transformers CLIP or SigLIP
    pooled, patches = towers.encode_image(model, pixels, tokens="patches")   # or "all": with the class token
    texts = towers.encode_text(model, towers.tokenize(["a photo of a cat."]))
"""

from __future__ import annotations

import abc
import json
import shutil
from pathlib import Path

import PIL.Image
import torch

from ex2.core.io import materialise


class Towers(abc.ABC):
    """One backend's view of a dual encoder for training (see the module docstring)."""

    lora_targets: tuple[str, ...]  # the towers' MLP linears: what LoRA adapts by default

    def __init__(self, name: str, identity: str, tokenizer, preprocess) -> None:
        self.name, self.identity, self.tokenizer, self._preprocess = name, identity, tokenizer, preprocess

    def preprocess(self, image: PIL.Image.Image) -> torch.Tensor:
        """One RGB image -> the model's input ``[3, H, W]``."""
        return self._preprocess(image)

    @abc.abstractmethod
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Texts -> the keyword inputs of :meth:`encode_text`, on the CPU."""

    @abc.abstractmethod
    def encode_text(self, model: torch.nn.Module, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[N, D]`` text features (not normalised)."""

    @abc.abstractmethod
    def encode_image(self, model: torch.nn.Module, pixels: torch.Tensor, tokens: str | None = None):
        """(``[B, D]`` image features, not normalised; the ViT's final ``[B, N, W]`` tokens, layer-normed:
        ``tokens="patches"`` the patch tokens, ``"all"`` the class token too where it has one; else None)."""

    @abc.abstractmethod
    def random_init(self, model: torch.nn.Module) -> torch.nn.Module:
        """A model of ``model``'s architecture with its library's random initialisation, in train mode."""

    @staticmethod
    def logit_scale(model: torch.nn.Module) -> torch.Tensor:
        return model.logit_scale.exp().clamp(max=100)

    @staticmethod
    def logit_bias(model: torch.nn.Module) -> torch.Tensor | None:
        """SigLIP's learned bias (its models train with a sigmoid loss); None for CLIP."""
        return getattr(model, "logit_bias", None)

    @abc.abstractmethod
    def shape(self, model: torch.nn.Module) -> dict[str, int]:
        """``image_size`` (square input side), ``width`` (patch-token width), ``embed_dim``."""

    @abc.abstractmethod
    def save(self, model: torch.nn.Module, folder: Path) -> Path:
        """Write ``model`` (fp32) to ``folder`` so that ``load_vlm(folder)`` loads it; atomically."""


# --- open_clip -----------------------------------------------------------------------------------


def model_config(vlm: str) -> dict:
    """open_clip's ``model_cfg`` of an open_clip VLM (what ``open_clip_config.json`` holds)."""
    import open_clip

    from ex2.core.names import parse_vlm_name
    from ex2.vlm.offline import hub_offline
    from ex2.vlm.open_clip_backend import needs_quick_gelu

    spec = parse_vlm_name(vlm)
    if spec.model.startswith("local-dir:"):
        path = Path(spec.model.removeprefix("local-dir:")) / "open_clip_config.json"
        return json.loads(path.read_text(encoding="utf-8"))["model_cfg"]
    if spec.model.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config

        with hub_offline():
            return _get_hf_config(spec.model.removeprefix("hf-hub:"))["model_cfg"]
    cfg = dict(open_clip.get_model_config(spec.model) or {})
    if spec.pretrained and not Path(spec.pretrained).expanduser().is_file() and needs_quick_gelu(spec.model, spec.pretrained):
        cfg["quick_gelu"] = True
    return cfg


def _replace(folder: Path, build) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    return materialise(folder, build)


class OpenClipTowers(Towers):
    lora_targets = ("c_fc", "c_proj")

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"text": self.tokenizer(texts)}

    def encode_text(self, model, tokens):
        return model.encode_text(tokens["text"])

    def encode_image(self, model, pixels, tokens=None):
        if tokens is None:
            return model.encode_image(pixels), None
        visual = model.visual
        if tokens == "all":  # the transformer's output, all tokens, through the final layer norm
            found = []
            handle = visual.transformer.register_forward_hook(lambda _module, _args, out: found.append(out))
            try:
                pooled = visual(pixels)
            finally:
                handle.remove()
            return pooled, visual.ln_post(found[0])
        visual.output_tokens = True
        try:
            return visual(pixels)
        finally:
            visual.output_tokens = False

    def random_init(self, model):
        import open_clip
        from open_clip.model import get_model_preprocess_cfg, set_model_preprocess_cfg

        cfg = dict(model_config(self.name))
        custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
        fresh = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**cfg).train()
        set_model_preprocess_cfg(fresh, get_model_preprocess_cfg(model))  # what save_config_for_hf writes
        return fresh

    def shape(self, model):
        size = model.visual.image_size
        embed = model.text_projection.shape[-1] if hasattr(model, "text_projection") else model.visual.output_dim
        return {"image_size": int(size[0] if isinstance(size, tuple | list) else size),
                "width": model.visual.transformer.width, "embed_dim": int(embed)}

    def save(self, model, folder):
        from open_clip.push_to_hf_hub import save_config_for_hf
        from safetensors.torch import save_file

        def build(tmp: Path) -> None:
            state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
            save_file(state, tmp / "open_clip_model.safetensors")
            save_config_for_hf(model, tmp / "open_clip_config.json", model_config=model_config(self.name))

        return _replace(folder, build)


# --- transformers CLIP and SigLIP ------------------------------------------------------------------


class TransformersTowers(Towers):
    """transformers ``CLIPModel`` or ``SiglipModel`` (their MLPs' linears are ``fc1``/``fc2``)."""

    lora_targets = ("fc1", "fc2")

    def __init__(self, name, identity, vlm) -> None:
        super().__init__(name, identity, vlm.tokenizer, vlm.preprocess)
        self.vlm = vlm  # for its tokenize and its processor

    def tokenize(self, texts):
        return self.vlm.tokenize(texts)

    def encode_text(self, model, tokens):
        from ex2.vlm.transformers_backend import _pooled

        return _pooled(model.get_text_features(**tokens))

    def encode_image(self, model, pixels, tokens=None):
        out = model.vision_model(pixel_values=pixels)
        projection = getattr(model, "visual_projection", None)  # CLIP projects its CLS state; SigLIP pools
        pooled = projection(out.pooler_output) if projection is not None else out.pooler_output
        if tokens is None:
            return pooled, None
        hidden = out.last_hidden_state
        if projection is not None:  # CLIP: its final layer norm comes after the encoder; token 0 is CLS
            hidden = model.vision_model.post_layernorm(hidden if tokens == "all" else hidden[:, 1:])
        return pooled, hidden

    def random_init(self, model):
        return type(model)(model.config).train()

    def shape(self, model):
        vision = model.config.vision_config
        embed = getattr(model.config, "projection_dim", None) if hasattr(model, "visual_projection") else None
        return {"image_size": int(vision.image_size), "width": int(vision.hidden_size),
                "embed_dim": int(embed or vision.hidden_size)}

    def save(self, model, folder):
        def build(tmp: Path) -> None:
            model.float().save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            self.vlm.image_processor.save_pretrained(tmp)

        return _replace(folder, build)


def load_towers(name: str) -> tuple[torch.nn.Module, Towers]:
    """The VLM ``name`` (open_clip or transformers CLIP/SigLIP) on the CPU in fp32, in train mode,
    and its :class:`Towers`."""
    from ex2.core.names import parse_vlm_name

    spec = parse_vlm_name(name)
    cpu = torch.device("cpu")
    if spec.backend == "open_clip":
        from ex2.vlm.open_clip_backend import load_open_clip

        vlm = load_open_clip(spec, cpu, torch.float32)
        return vlm.model.train(), OpenClipTowers(name, vlm.identity, vlm.tokenizer, vlm.transform)
    if spec.backend == "transformers":
        from ex2.vlm.transformers_backend import load_transformers

        vlm = load_transformers(spec, cpu, torch.float32)
        kind = vlm.model.config.model_type
        if not hasattr(vlm.model, "vision_model") or not hasattr(vlm.model, "logit_scale"):
            raise ValueError(f"ex2 finetune trains transformers CLIP and SigLIP models; {name} is a {kind} model")
        return vlm.model.train(), TransformersTowers(name, vlm.identity, vlm)
    raise ValueError(f"ex2 finetune trains open_clip and transformers CLIP/SigLIP models; --vlm {name!r} is a "
                     f"{spec.backend} model")
