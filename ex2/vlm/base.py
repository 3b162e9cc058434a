"""The interface every VLM backend implements: preprocess, encode images, encode texts.

Backends supply ``preprocess`` and two forward methods (``_image_features``, ``_text_features``)
returning raw features on the model's device. This class runs the forwards under
``torch.inference_mode()`` (and autocast in half precision), L2-normalises, returns CPU float32,
encodes texts in batches of ``text_batch_size`` and keeps an in-memory LRU of text embeddings.
"""

from __future__ import annotations

import abc
import contextlib
from collections import OrderedDict
from collections.abc import Iterator

import PIL.Image
import torch


def l2_normalise(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, as float32 on CPU."""
    features = features.float()
    return torch.nn.functional.normalize(features, dim=-1).cpu()


def lru_rows(cache: OrderedDict[str, torch.Tensor], texts: list[str], size: int) -> list[torch.Tensor]:
    """The cached rows of ``texts`` (all present), each marked most recently used; then the least
    recently used entries are dropped down to ``size`` (or ``len(texts)``, so none just read goes)."""
    rows = []
    for text in texts:
        cache.move_to_end(text)
        rows.append(cache[text])
    while len(cache) > max(size, len(texts)):
        cache.popitem(last=False)
    return rows


class VLM(abc.ABC):
    """An image-text dual encoder; similarities are ``logit_scale * cosine (+ logit_bias)``."""

    identity: str  # names the model and its weights; used as a cache key
    logit_scale: float  # 100 for open_clip and conse, logit_scale.exp() for transformers CLIP
    logit_bias: float = 0.0  # non-zero only for SigLIP
    device: torch.device
    dtype: torch.dtype  # the forward pass dtype; outputs are always float32
    text_batch_size: int = 256
    text_cache_size: int = 16384

    def __init__(
        self,
        identity: str,
        device: torch.device,
        dtype: torch.dtype,
        logit_scale: float,
        logit_bias: float = 0.0,
    ) -> None:
        self.identity, self.device, self.dtype = identity, device, dtype
        self.logit_scale, self.logit_bias = float(logit_scale), float(logit_bias)
        self._texts: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r}, device={self.device}, dtype={self.dtype})"

    @abc.abstractmethod
    def preprocess(self, image: PIL.Image.Image) -> torch.Tensor:
        """One RGB image -> the model's input tensor ``[3, H, W]``."""

    @abc.abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` on the model's device and dtype -> raw features ``[B, D]``."""

    @abc.abstractmethod
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        """A batch of texts -> raw features ``[N, D]``."""

    @contextlib.contextmanager
    def _forward(self) -> Iterator[None]:
        """Inference mode, plus autocast when running in half precision."""
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            yield

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` float32, L2-normalised, on CPU."""
        with self._forward():
            features = self._image_features(pixels.to(self.device, self.dtype))
        return l2_normalise(features)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts -> ``[N, D]`` float32, L2-normalised, on CPU; repeated texts come from an LRU."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings, not one string")
        missing = list(dict.fromkeys(t for t in texts if t not in self._texts))
        for start in range(0, len(missing), self.text_batch_size):
            batch = missing[start : start + self.text_batch_size]
            with self._forward():
                features = l2_normalise(self._text_features(batch))
            self._texts.update(zip(batch, [row.clone() for row in features], strict=True))
        rows = lru_rows(self._texts, texts, self.text_cache_size)
        if not rows:
            return torch.empty(0, self.embedding_dim())
        return torch.stack(rows)

    def embedding_dim(self) -> int:
        """The width ``D`` of the embeddings."""
        return int(self.encode_texts(["a"]).shape[1])
