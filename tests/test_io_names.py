from __future__ import annotations

import pytest

from ex2.io import append_jsonl, atomic_open, read_jsonl, write_jsonl
from ex2.names import ModelNameError, parse_llm_name, parse_vlm_name


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_jsonl_round_trip_and_torn_tail(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"a": 1}])
    append_jsonl(path, {"a": 2})
    with open(path, "a") as handle:
        handle.write('{"a": 3')  # a write cut off by a kill
    assert [r["a"] for r in read_jsonl(path, tolerate_torn_tail=True)] == [1, 2]
    with pytest.raises(ValueError, match=r"a\.jsonl:3"):
        read_jsonl(path)


def test_jsonl_missing_field_names_line(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"concept": "cat"}, {"x": 1}])
    with pytest.raises(ValueError, match=r"b\.jsonl:2: record lacks field\(s\) concept"):
        read_jsonl(path, required=["concept"])


@pytest.mark.parametrize(
    "name, backend, model, pretrained",
    [
        ("conse", "conse", "conse", None),
        ("ViT-B-32:openai", "open_clip", "ViT-B-32", "openai"),
        ("r-open-clip:ViT-L-14:laion2b_s32b_b82k", "open_clip", "ViT-L-14", "laion2b_s32b_b82k"),
        ("open_clip:RN50", "open_clip", "RN50", None),
        ("ViT-B-32:/ckpt/model.pt", "open_clip", "ViT-B-32", "/ckpt/model.pt"),
        ("hf-hub:timm/ViT-B-16-SigLIP", "open_clip", "hf-hub:timm/ViT-B-16-SigLIP", None),
        ("openai/clip-vit-base-patch32", "transformers", "openai/clip-vit-base-patch32", None),
    ],
)
def test_vlm_names(name, backend, model, pretrained):
    spec = parse_vlm_name(name)
    assert (spec.backend, spec.model, spec.pretrained) == (backend, model, pretrained)


def test_vlm_local_folders(tmp_path):
    assert parse_vlm_name(str(tmp_path)).backend == "transformers"
    (tmp_path / "open_clip_config.json").write_text("{}")
    assert parse_vlm_name(str(tmp_path)).model == f"local-dir:{tmp_path}"


def test_llm_names(tmp_path):
    assert parse_llm_name("smollm2").backend == "embedded"
    assert parse_llm_name("mistralai/Mistral-7B-v0.1").backend == "transformers"
    with pytest.raises(ModelNameError, match="no config.json"):
        parse_llm_name(str(tmp_path))
    with pytest.raises(ModelNameError, match="does not exist"):
        parse_llm_name(str(tmp_path / "m.gguf"))


def test_unknown_names_list_valid_forms():
    with pytest.raises(ModelNameError, match="valid forms: conse"):
        parse_vlm_name("not a model")
    with pytest.raises(ModelNameError, match="smollm2"):
        parse_llm_name("???")


def test_atomic_files_get_usual_permissions(tmp_path):
    import os

    path = write_jsonl(tmp_path / "p.jsonl", [{"a": 1}])
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
