"""VLM backends and the image- and text-embedding caches, on conftest's tiny random-init models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import TINY_ARCH

from ex2.core.names import ModelNameError
from ex2.vlm import VLM, ImageEmbeddings, embed_images, embed_texts, load_vlm
from ex2.vlm.cache import EmbeddingCache


@pytest.fixture
def images(tmp_path) -> list[Path]:
    """Four small RGB images of different sizes and formats, and one greyscale."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (size, suffix) in enumerate(
        [((40, 30), ".png"), ((64, 64), ".jpg"), ((20, 50), ".png"), ((33, 33), ".bmp")]
    ):
        path = tmp_path / f"img{i}{suffix}"
        PIL.Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    grey = tmp_path / "grey.png"
    PIL.Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(grey)
    return [*paths, grey]


def _count_calls(monkeypatch, vlm: VLM, method: str) -> list:
    """Record the arguments of every call to ``vlm.<method>``."""
    calls, original = [], getattr(vlm, method)

    def counted(arg):
        calls.append(arg)
        return original(arg)

    monkeypatch.setattr(vlm, method, counted)
    return calls


def _assert_unit_rows(embeddings: torch.Tensor, rows: int, dim: int) -> None:
    assert embeddings.shape == (rows, dim)
    assert embeddings.dtype == torch.float32 and embeddings.device.type == "cpu"
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(rows), atol=1e-5, rtol=0)


# --- backends ------------------------------------------------------------------------------------


def test_open_clip_encodes_normalised_embeddings(tiny_open_clip, images):
    vlm = tiny_open_clip
    assert vlm.logit_scale == 100.0 and vlm.logit_bias == 0.0
    assert vlm.identity.startswith("open_clip:local-dir:/") and "@" in vlm.identity
    pixels = torch.stack([vlm.preprocess(PIL.Image.open(p).convert("RGB")) for p in images])
    assert pixels.shape == (len(images), 3, 32, 32)
    _assert_unit_rows(vlm.encode_images(pixels), len(images), 16)
    _assert_unit_rows(vlm.encode_texts(["a photo of a cat.", "a rocket"]), 2, 16)


@pytest.mark.parametrize(
    "form",
    ["local-dir:{dir}", "{dir}", "{arch}:{ckpt}", "open_clip:{arch}:{ckpt}", "r-open-clip:{arch}:{ckpt}"],
)
def test_open_clip_name_forms_load_the_same_weights(form, open_clip_dir, tiny_open_clip):
    name = form.format(dir=open_clip_dir, arch=TINY_ARCH, ckpt=open_clip_dir.parent / "ckpt.pt")
    vlm = load_vlm(name, device="cpu")
    texts = ["a photo of a cat.", "a rocket"]
    torch.testing.assert_close(vlm.encode_texts(texts), tiny_open_clip.encode_texts(texts))
    if "ckpt" in form:
        assert vlm.identity.startswith(f"open_clip:{TINY_ARCH}:{open_clip_dir.parent / 'ckpt.pt'}@")


def test_open_clip_accepts_every_argument_we_pass(open_clip_dir):
    import inspect

    import open_clip

    from ex2.core.names import parse_vlm_name
    from ex2.vlm.open_clip_backend import _resolve

    accepted = set(inspect.signature(open_clip.create_model_and_transforms).parameters)
    checkpoint = open_clip_dir.parent / "ckpt.pt"
    for name in (f"local-dir:{open_clip_dir}", f"{TINY_ARCH}:{checkpoint}", "ViT-B-32:openai", "hf-hub:org/name"):
        kwargs, _ = _resolve(parse_vlm_name(name))
        assert set(kwargs) <= accepted, name


def test_openai_weights_get_quick_gelu():
    from ex2.vlm.open_clip_backend import needs_quick_gelu

    assert needs_quick_gelu("ViT-B-32", "openai")
    assert not needs_quick_gelu("ViT-B-32-quickgelu", "openai")
    assert not needs_quick_gelu("ViT-B-32", "laion2b_s34b_b79k")


def test_open_clip_texts_skip_the_padding_and_match_the_full_forward(monkeypatch, tiny_open_clip):
    from ex2.vlm.open_clip_backend import trims_padding

    vlm = tiny_open_clip
    assert vlm.trims_padding and not trims_padding(torch.nn.Identity(), vlm.tokenizer)
    texts = ["a photo of a cat.", "a", "a much longer description of a small grey cat"]
    lengths, forward = [], vlm.model.transformer.forward
    monkeypatch.setattr(vlm.model.transformer, "forward", lambda x, **k: lengths.append(x.shape[1]) or forward(x, **k))
    trimmed = vlm.encode_texts(texts)
    assert lengths[0] < vlm.model.context_length  # the positions after the longest text's end never ran
    with torch.inference_mode():
        full = torch.nn.functional.normalize(vlm.model.encode_text(vlm.tokenizer(texts)), dim=-1)
    assert lengths[1] == vlm.model.context_length
    torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=0)


def test_transformers_clip(hf_clip_dir, images):
    from transformers import CLIPModel

    vlm = load_vlm(str(hf_clip_dir), device="cpu")
    expected = CLIPModel.from_pretrained(hf_clip_dir).logit_scale.exp().item()
    assert vlm.logit_scale == pytest.approx(expected) and vlm.logit_bias == 0.0
    assert vlm.identity.startswith(f"transformers:{hf_clip_dir.resolve()}@")
    pixels = torch.stack([vlm.preprocess(PIL.Image.open(p).convert("RGB")) for p in images])
    assert pixels.shape == (len(images), 3, 32, 32)
    _assert_unit_rows(vlm.encode_images(pixels), len(images), 16)
    _assert_unit_rows(vlm.encode_texts(["a photo of a cat.", "a"]), 2, 16)


def test_transformers_siglip_pads_to_max_length_and_keeps_its_bias(hf_siglip_dir, images):
    from transformers import SiglipModel

    vlm = load_vlm(str(hf_siglip_dir), device="cpu")
    model = SiglipModel.from_pretrained(hf_siglip_dir)
    assert vlm.logit_scale == pytest.approx(model.logit_scale.exp().item())
    assert vlm.logit_bias == pytest.approx(model.logit_bias.item())
    single = vlm.encode_texts(["a cat"])
    vlm._texts.clear()
    batched = vlm.encode_texts(["a cat", "a much longer description of a cat"])
    torch.testing.assert_close(batched[:1], single)  # padding to max length: batch-independent
    pixels = vlm.preprocess(PIL.Image.open(images[0]).convert("RGB"))[None]
    _assert_unit_rows(vlm.encode_images(pixels), 1, 32)


def _name_of(backend: str, open_clip_dir: Path, hf_clip_dir: Path) -> str:
    return f"local-dir:{open_clip_dir}" if backend == "open_clip" else str(hf_clip_dir)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("backend", ["open_clip", "transformers"])
def test_half_precision_returns_float32_close_to_fp32(backend, precision, open_clip_dir, hf_clip_dir, images):
    name = _name_of(backend, open_clip_dir, hf_clip_dir)
    low, full = load_vlm(name, device="cpu", precision=precision), load_vlm(name, device="cpu")
    assert low.dtype == getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[precision])
    pixels = torch.stack([full.preprocess(PIL.Image.open(p).convert("RGB")) for p in images])
    for encode, arg in (("encode_texts", ["a photo of a cat.", "a rocket"]), ("encode_images", pixels)):
        half, exact = getattr(low, encode)(arg), getattr(full, encode)(arg)
        _assert_unit_rows(half, len(arg), 16)
        assert (half * exact).sum(dim=1).min() > 0.98


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["open_clip", "transformers"])
def test_cuda_runs_half_precision_and_returns_cpu_float32(backend, open_clip_dir, hf_clip_dir, images):
    vlm = load_vlm(_name_of(backend, open_clip_dir, hf_clip_dir), device="cuda")
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16  # what "auto" means on CUDA
    assert vlm.dtype == half and vlm.device.type == "cuda"
    result = embed_images(vlm, images, cache=False, progress=False)
    _assert_unit_rows(result.embeddings, len(images), 16)
    _assert_unit_rows(vlm.encode_texts(["a cat"]), 1, 16)


# --- text LRU ------------------------------------------------------------------------------------


def test_text_embeddings_come_from_an_lru(monkeypatch, open_clip_dir):
    vlm = load_vlm(f"local-dir:{open_clip_dir}", device="cpu")
    calls = _count_calls(monkeypatch, vlm, "_text_features")
    first = vlm.encode_texts(["a", "b", "a"])
    assert calls == [["a", "b"]]
    torch.testing.assert_close(first[0], first[2])
    second = vlm.encode_texts(["b", "c"])
    assert calls == [["a", "b"], ["c"]]
    torch.testing.assert_close(second[0], first[1])
    vlm.text_cache_size = 2
    vlm.encode_texts(["d"])
    assert list(vlm._texts) == ["c", "d"]  # "a" and "b" were least recently used
    assert vlm.encode_texts([]).shape == (0, 16)
    with pytest.raises(TypeError, match="list of strings"):
        vlm.encode_texts("a")


# --- image cache ---------------------------------------------------------------------------------


def test_second_pass_runs_no_image_forward(monkeypatch, tmp_cache, tiny_open_clip, images):
    calls = _count_calls(monkeypatch, tiny_open_clip, "encode_images")
    first = embed_images(tiny_open_clip, images, batch_size=2, progress=False)
    assert len(calls) == 3 and sum(len(c) for c in calls) == len(images)
    assert first.paths == images and first.skipped == []
    _assert_unit_rows(first.embeddings, len(images), 16)

    calls.clear()
    EmbeddingCache._indexes.clear()  # as in a new process: read the shards back from disk
    EmbeddingCache._seen.clear()
    second = embed_images(tiny_open_clip, [str(p) for p in reversed(images)], progress=False)
    assert calls == []
    torch.testing.assert_close(second.embeddings, first.embeddings.flip(0))

    os.utime(images[1], ns=(0, 10**18))  # a changed file is embedded again, alone
    third = embed_images(tiny_open_clip, images, progress=False)
    assert [len(c) for c in calls] == [1]
    torch.testing.assert_close(third.embeddings, first.embeddings)


def test_cache_matches_uncached_and_cache_off_writes_nothing(tmp_cache, tiny_open_clip, images):
    uncached = embed_images(tiny_open_clip, images, cache=False, progress=False)
    assert not tmp_cache.exists()
    cached = embed_images(tiny_open_clip, images, progress=False)
    torch.testing.assert_close(cached.embeddings, uncached.embeddings)
    folders = list((tmp_cache / "embeddings").iterdir())
    assert len(folders) == 1
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta == {"identity": tiny_open_clip.identity, "dtype": "torch.float32"}


def test_unreadable_images_are_skipped_or_raise_when_strict(tmp_cache, tiny_open_clip, images):
    corrupt = images[0].parent / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing = images[0].parent / "missing.png"
    result = embed_images(tiny_open_clip, [images[0], corrupt, missing, images[1]], progress=False)
    assert isinstance(result, ImageEmbeddings)
    assert result.paths == [images[0], images[1]] and result.embeddings.shape == (2, 16)
    assert [p for p, _ in result.skipped] == [missing, corrupt]
    assert all(reason for _, reason in result.skipped)
    with pytest.raises(ValueError, match="corrupt.jpg"):
        embed_images(tiny_open_clip, [corrupt], strict=True, progress=False)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        embed_images(tiny_open_clip, [missing], strict=True, progress=False)
    empty = embed_images(tiny_open_clip, [corrupt], progress=False)
    assert empty.paths == [] and empty.embeddings.shape == (0, 16)


def test_stray_temp_files_and_broken_shards_are_ignored(monkeypatch, tmp_cache, tiny_open_clip, images):
    first = embed_images(tiny_open_clip, images, progress=False)
    folder = EmbeddingCache(tiny_open_clip).folder
    (shard,) = folder.glob("*.npz")
    (folder / "truncated.npz").write_bytes(shard.read_bytes()[:100])  # e.g. a copy cut off
    (folder / "broken.npz").write_bytes(b"not a zip")
    (folder / ".abc.npz.123.tmp").write_bytes(b"half a shard")  # left by a killed job
    EmbeddingCache._indexes.clear()
    EmbeddingCache._seen.clear()
    calls = _count_calls(monkeypatch, tiny_open_clip, "encode_images")
    with pytest.warns(UserWarning) as caught:
        again = embed_images(tiny_open_clip, images, progress=False)
    messages = " ".join(str(warning.message) for warning in caught)
    assert "broken.npz" in messages and "truncated.npz" in messages and ".tmp" not in messages
    assert calls == []
    torch.testing.assert_close(again.embeddings, first.embeddings)


def test_decoding_workers_change_nothing_and_report_unreadable_images(tiny_open_clip, images):
    corrupt = images[0].parent / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = [*images[:2], corrupt, *images[2:]]
    here = embed_images(tiny_open_clip, paths, cache=False, batch_size=2, progress=False, workers=0)
    forked = embed_images(tiny_open_clip, paths, cache=False, batch_size=2, progress=False, workers=2)
    assert forked.paths == here.paths == images and torch.equal(forked.embeddings, here.embeddings)
    assert [p for p, _ in forked.skipped] == [p for p, _ in here.skipped] == [corrupt]
    with pytest.raises(ValueError, match="corrupt.jpg"):  # raised in a worker, re-raised here
        embed_images(tiny_open_clip, paths, cache=False, batch_size=2, strict=True, progress=False, workers=2)


# --- text cache ----------------------------------------------------------------------------------


def _new_process(vlm: VLM) -> None:
    """Forget what this process holds, as a new process would: shard indexes and the text LRU."""
    EmbeddingCache._indexes.clear()
    EmbeddingCache._seen.clear()
    vlm._texts.clear()


def test_text_cache_hit_is_identical_and_runs_no_text_forward(monkeypatch, tmp_cache, tiny_open_clip):
    texts = ["a photo of a cat.", "a rocket", "a photo of a cat.", "Ünïcode ✓"]
    first = embed_texts(tiny_open_clip, texts, progress=False)
    torch.testing.assert_close(first, tiny_open_clip.encode_texts(texts))
    assert len(list((tmp_cache / "text-embeddings").glob("*/*.npz"))) == 1
    _new_process(tiny_open_clip)
    calls = _count_calls(monkeypatch, tiny_open_clip, "_text_features")
    again = embed_texts(tiny_open_clip, list(reversed(texts)), progress=False)
    assert calls == [] and torch.equal(again, first.flip(0))
    changed = embed_texts(tiny_open_clip, ["a photo of a cat.", "a photo of a cat. "], progress=False)
    assert calls == [["a photo of a cat. "]]  # a text differing by one space is encoded again
    assert torch.equal(changed[0], first[0])
    assert embed_texts(tiny_open_clip, [], progress=False).shape == (0, 16)
    with pytest.raises(TypeError, match="list of strings"):
        embed_texts(tiny_open_clip, "a cat")


def test_text_cache_is_per_vlm_and_off_writes_nothing(monkeypatch, tmp_cache, open_clip_dir, tiny_open_clip):
    texts = ["a photo of a cat.", "a rocket"]
    uncached = embed_texts(tiny_open_clip, texts, cache=False, progress=False)
    assert not tmp_cache.exists()
    embed_texts(tiny_open_clip, texts, progress=False)
    (checkpoint,) = open_clip_dir.parent.glob("*.pt")  # the same weights under another name
    for other in (load_vlm(f"{TINY_ARCH}:{checkpoint}", device="cpu"),
                  load_vlm(f"local-dir:{open_clip_dir}", device="cpu", precision="bf16")):
        assert (other.identity, other.dtype) != (tiny_open_clip.identity, tiny_open_clip.dtype)
        calls = _count_calls(monkeypatch, other, "_text_features")
        embed_texts(other, texts, progress=False)
        assert calls == [texts]  # another VLM never reads this one's text embeddings
    folders = sorted((tmp_cache / "text-embeddings").iterdir())
    assert len(folders) == 3
    cached = embed_texts(tiny_open_clip, texts, progress=False)
    torch.testing.assert_close(cached, uncached)


def test_broken_text_shards_are_named_and_rebuilt(monkeypatch, tmp_cache, tiny_open_clip):
    texts = ["a photo of a cat.", "a rocket"]
    first = embed_texts(tiny_open_clip, texts, progress=False)
    (shard,) = (tmp_cache / "text-embeddings").glob("*/*.npz")
    shard.write_bytes(shard.read_bytes()[:200])  # torn, e.g. by a copy cut off
    _new_process(tiny_open_clip)
    calls = _count_calls(monkeypatch, tiny_open_clip, "_text_features")
    with pytest.warns(UserWarning, match=f"unreadable embedding shard .*{shard.name}"):
        again = embed_texts(tiny_open_clip, texts, progress=False)
    assert calls == [texts]
    torch.testing.assert_close(again, first)
    _new_process(tiny_open_clip)  # the embeddings were written again, to a new shard
    calls.clear()
    with pytest.warns(UserWarning, match=shard.name):
        torch.testing.assert_close(embed_texts(tiny_open_clip, texts, progress=False), first)
    assert calls == []


# --- names and errors ----------------------------------------------------------------------------


def test_unknown_names_list_the_valid_forms():
    with pytest.raises(ModelNameError, match="valid forms"):
        load_vlm("not a model")
    with pytest.raises(ModelNameError, match="no architecture 'No-Such-Arch'"):
        load_vlm("open_clip:No-Such-Arch:openai", device="cpu")
    with pytest.raises(ModelNameError, match="tags: .*openai"):
        load_vlm("ViT-B-32:no_such_tag", device="cpu")
    with pytest.raises(ModelNameError, match="needs weights"):
        load_vlm("open_clip:ViT-B-32", device="cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        load_vlm("conse", device="cpu", precision="fp8")


def test_missing_files_are_clear_errors(tmp_path, open_clip_dir):
    with pytest.raises(FileNotFoundError, match="checkpoint file .*nope.pt does not exist"):
        load_vlm(f"{TINY_ARCH}:{tmp_path}/nope.pt", device="cpu")
    with pytest.raises(FileNotFoundError, match="no such folder|not an open_clip folder"):
        load_vlm(f"local-dir:{tmp_path}/absent", device="cpu")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "open_clip_config.json").write_text((open_clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_vlm(f"local-dir:{bare}", device="cpu")


def test_uncached_hub_models_are_not_downloaded(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("EX2_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as for a user with no HF_HUB_OFFLINE
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    for name in ("ViT-B-32:openai", "hf-hub:timm/no-such-repo", "ex2-test/no-such-model"):
        with pytest.raises(FileNotFoundError, match="EX2_ALLOW_DOWNLOAD=1"):
            load_vlm(name, device="cpu")
    assert constants.HF_HUB_OFFLINE is False


def test_hub_offline_unless_downloads_are_allowed(monkeypatch):
    from huggingface_hub import constants

    from ex2.vlm.offline import hub_offline

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("EX2_ALLOW_DOWNLOAD", raising=False)
    with hub_offline():
        assert constants.is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "1"
    assert not constants.is_offline_mode() and "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.setenv("EX2_ALLOW_DOWNLOAD", "1")
    with hub_offline():
        assert not constants.is_offline_mode()
