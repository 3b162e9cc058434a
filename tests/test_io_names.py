from __future__ import annotations

from pathlib import Path

import pytest

from ex2.core.io import append_jsonl, atomic_open, materialise, read_jsonl, repair_jsonl, write_jsonl
from ex2.core.names import ModelNameError, parse_llm_name, parse_vlm_name


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



def test_repair_jsonl_drops_a_torn_line_and_completes_the_last(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')  # a kill mid-write
    assert repair_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    append_jsonl(path, {"a": 3})
    assert [r["a"] for r in read_jsonl(path)] == [1, 2, 3]
    path.write_text('{"a": 1}')  # whole, but without its newline: appending would glue records
    assert repair_jsonl(path) == [{"a": 1}] and path.read_text() == '{"a": 1}\n'
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2"):
        repair_jsonl(path)
    path.write_text("")
    assert repair_jsonl(path) == [] and path.read_text() == ""
    with pytest.raises(ValueError, match="lacks field"):
        repair_jsonl(write_jsonl(path, [{"a": 1}]), required=("b",))


def test_repair_jsonl_leaves_a_whole_file_untouched(tmp_path):
    path = write_jsonl(tmp_path / "log.jsonl", [{"a": 1}])
    before = path.stat().st_ino
    assert repair_jsonl(path) == [{"a": 1}]
    assert path.stat().st_ino == before  # not rewritten


def test_materialise_leaves_nothing_when_the_build_fails(tmp_path):
    def build(out: Path) -> None:
        (out / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialise(tmp_path / "set", build)
    assert list(tmp_path.iterdir()) == []
    materialise(tmp_path / "set", lambda out: (out / "done").write_text("y"))
    assert [p.name for p in (tmp_path / "set").iterdir()] == ["done"]
    materialise(tmp_path / "set", lambda out: pytest.fail("rebuilt"))


def test_materialise_clears_what_killed_builds_left(tmp_path):
    import os

    old, fresh = tmp_path / ".set.old.tmp", tmp_path / ".set.fresh.tmp"  # as a SIGKILLed build leaves them
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "half").write_text("x")
    os.utime(old, (0, 0))
    materialise(tmp_path / "set", lambda out: (out / "done").write_text("y"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".set.fresh.tmp", "set"]  # a fresh one may be live


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


def test_write_csv_writes_header_and_rows_atomically(tmp_path):
    import csv

    from ex2.core.io import write_csv

    path = write_csv(tmp_path / "t.csv", ["name", "n"], [["a, b", 1], ["c", None]])
    with open(path, newline="") as handle:
        assert list(csv.reader(handle)) == [["name", "n"], ["a, b", "1"], ["c", ""]]
    with pytest.raises(ZeroDivisionError):
        write_csv(path, ["x"], ([1 / 0] for _ in range(1)))
    assert path.read_text().startswith("name,n") and [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_resume_partial_keeps_records_of_the_same_settings_under_its_header(tmp_path):
    from ex2.core.io import partial_path, resume_partial

    partial = partial_path(tmp_path / "out.jsonl")
    assert partial.name == "out.jsonl.partial"
    assert resume_partial(partial, {"seed": 0}, header="my_settings") == []
    assert read_jsonl(partial) == [{"my_settings": {"seed": 0}}]
    append_jsonl(partial, {"key": 1})
    assert resume_partial(partial, {"seed": 0}, header="my_settings", required=("key",)) == [{"key": 1}]
    with pytest.raises(ValueError, match=r"other settings \(seed: 0 -> 1\)"):
        resume_partial(partial, {"seed": 1}, header="my_settings")
    with pytest.raises(ValueError, match="expected a partial file starting with its settings"):
        resume_partial(partial, {"seed": 0})  # another stage's header
