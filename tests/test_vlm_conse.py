"""The embedded ``conse`` VLM: EfficientNet-Lite0 + MiniLM, real weights shipped in packages."""

from __future__ import annotations

import PIL.Image
import pytest
import torch
from conftest import SHARED_CACHE

from ex2.vlm import conse as conse_module
from ex2.vlm import embed_images, load_vlm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def conse():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EX2_CACHE", str(SHARED_CACHE))  # class-name embeddings are computed once
        yield load_vlm("conse", device="cpu")


def _photo(name: str, index: int | None = None) -> PIL.Image.Image:
    import skimage.data

    array = getattr(skimage.data, name)()
    return PIL.Image.fromarray(array if index is None else array[index]).convert("RGB")


def test_conse_embeddings_are_normalised(conse):
    assert conse.identity == "conse:v1:top10:photo" and conse.logit_scale == 100.0
    pixels = torch.stack([conse.preprocess(_photo("chelsea")), conse.preprocess(_photo("rocket"))])
    assert pixels.shape == (2, 3, 224, 224)
    for embeddings, rows in ((conse.encode_images(pixels), 2), (conse.encode_texts(["a", "b c"]), 2)):
        assert embeddings.shape == (rows, 384) and embeddings.dtype == torch.float32
        torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(rows), atol=1e-5, rtol=0)


def test_conse_prefers_the_right_caption(conse):
    photos = {
        "cat": _photo("chelsea"),
        "rocket": _photo("rocket"),
        "cup of coffee": _photo("coffee"),
        "motorcycle": _photo("stereo_motorcycle", 0),
    }
    images = conse.encode_images(torch.stack([conse.preprocess(p) for p in photos.values()]))
    texts = conse.encode_texts([f"a photo of a {name}." for name in photos])
    scores = conse.logit_scale * images @ texts.T
    assert scores.argmax(dim=1).tolist() == [0, 1, 2, 3], scores
    assert scores[0, 0] > scores[0, 1] + 5  # the cat photo: "cat" well above "rocket"


def test_conse_zero_shot_on_samples(conse, shared_cache):
    from ex2.data import load_dataset

    data = load_dataset("samples")
    result = embed_images(conse, [path for path, _ in data.items], cache=False, progress=False)
    assert result.skipped == [] and len(result.paths) == len(data)
    texts = conse.encode_texts([f"a photo of a {name}." for name in data.classnames])
    predicted = (result.embeddings @ texts.T).argmax(dim=1)
    labels = torch.tensor([label for _, label in data.items])
    assert (predicted == labels).float().mean() >= 0.9  # measured 96% (see ex2.vlm.conse)


def test_class_name_embeddings_are_cached_on_disk(conse, tmp_cache, monkeypatch):
    first = conse_module.class_name_embeddings(conse.text_encoder, "first")
    assert first.shape == (1000, 384)
    assert [p.name.startswith("classnames-first-") for p in (tmp_cache / "conse").iterdir()] == [True]
    monkeypatch.setattr(conse_module, "_encode", lambda *_: pytest.fail("recomputed class names"))
    torch.testing.assert_close(conse_module.class_name_embeddings(conse.text_encoder, "first"), first)


def test_classifier_loads_the_shipped_weights_without_fetching(monkeypatch):
    import efficientnet_lite_pytorch.utils as effnet_utils
    from efficientnet_lite_pytorch import EfficientNet

    monkeypatch.setattr(EfficientNet, "from_pretrained", lambda *a, **k: pytest.fail("fetches"))
    monkeypatch.setattr(effnet_utils.model_zoo, "load_url", lambda *a, **k: pytest.fail("fetches"))
    classifier = conse_module._load_classifier(torch.device("cpu"), torch.float32)
    probe = conse_module._transform()(_photo("chelsea"))[None]
    with torch.inference_mode():
        top = classifier(probe).argmax(dim=1).item()
    assert 281 <= top <= 285  # ImageNet's domestic cats: tabby .. Egyptian cat


def test_class_names_forms():
    assert conse_module.class_names("first")[281] == "tabby"
    assert conse_module.class_names("photo")[281] == "a photo of a tabby."
    assert conse_module.class_names("all")[281] == "tabby, tabby cat"
    with pytest.raises(ValueError, match="choose one of"):
        conse_module.class_names("plural")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_conse_on_cuda_in_half_precision():
    vlm = load_vlm("conse", device="cuda")
    assert vlm.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    images = vlm.encode_images(vlm.preprocess(_photo("chelsea"))[None])
    texts = vlm.encode_texts(["a photo of a cat.", "a photo of a rocket."])
    assert images.device.type == "cpu" and images.dtype == torch.float32
    assert (images @ texts.T).argmax().item() == 0
