"""``ex2 finetune --shards``: webdataset shards written by ShardWriter feed the grain objective
(caption + regions) and the desc objective (class per sample), resume, and bad samples are errors
naming the shard and the key."""

from __future__ import annotations

import io
import json

import PIL.Image
import pytest

from ex2.cli import main
from ex2.core.io import read_jsonl, write_jsonl
from ex2.data import concept_names, load_dataset
from ex2.finetune.data import read_grounding, shard_record, synthetic_grounding
from ex2.finetune.evaluation import evaluate_regions
from ex2.finetune.stage import FinetuneConfig

wds = pytest.importorskip("webdataset")


def _png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shards(folder, samples, per_shard: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "shard-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
    count = len(list(folder.glob("shard-*.tar")))
    return str(folder / f"shard-{{000000..{count - 1:06d}}}.tar")


@pytest.fixture
def grounding_shards(tmp_path):
    """The synthetic shapes as shards: png + json {caption, regions with pixel boxes}."""
    annotations = synthetic_grounding(tmp_path / "set", n=12, size=32)
    samples = []
    for index, record in enumerate(read_jsonl(annotations)):
        with PIL.Image.open(annotations.parent / record["image"]) as image:
            samples.append({"__key__": f"{index:06d}", "png": _png(image.convert("RGB")),
                            "json": {"caption": record["caption"], "regions": record["regions"]}})
    return _write_shards(tmp_path / "shards", samples, per_shard=4), annotations


def _grain_args(open_clip_dir, shards, out, steps, *extra):
    return ["finetune", "--objective", "grain", "--vlm", str(open_clip_dir), "--shards", shards, "--output", str(out),
            "--max-steps", str(steps), "--batch-size", "4", "--log-steps", "1", "--save-steps", "2",
            "--device", "cpu", "--method", "full", "--queries", "4", "--shuffle-buffer", "8",
            "--lr-schedule", "constant", *extra]


def test_grain_reads_shards_and_resumes(open_clip_dir, grounding_shards, tmp_path):
    shards, annotations = grounding_shards
    assert shards.endswith("shard-{000000..000002}.tar")  # 12 samples, 4 a shard
    out = tmp_path / "grain"
    assert main(_grain_args(open_clip_dir, shards, out, 2)) == 0
    assert main(_grain_args(open_clip_dir, shards, out, 4, "--resume")) == 0
    log = read_jsonl(out / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4] and {"box_l1", "region_text", "caption"} <= set(log[0])
    assert json.loads((out / "provenance.json").read_text())["shards"] == shards
    scores = evaluate_regions(out, annotations)  # the shards' regions are the annotations'
    assert scores["regions"] == sum(len(r.regions) for r in read_grounding(annotations))


def test_desc_reads_classes_from_shards(open_clip_dir, tmp_path, shared_cache):
    dataset = load_dataset("samples")
    names = concept_names("samples")
    samples = []
    for index, (path, label) in enumerate(dataset.items[::4]):
        with PIL.Image.open(path) as image:
            sample = {"__key__": f"{index:06d}", "png": _png(image)}
        # half the samples name their class by index (cls), half by name (json class)
        sample.update({"cls": label} if index % 2 else {"json": {"class": names[label]}})
        samples.append(sample)
    shards = _write_shards(tmp_path / "shards", samples, per_shard=8)
    descriptions = tmp_path / "descriptions.jsonl"
    write_jsonl(descriptions, [{"concept": n, "description": f"{n} up close"} for n in names])
    out = tmp_path / "desc"
    assert main(["finetune", "--vlm", str(open_clip_dir), "--shards", shards, "--descriptions", str(descriptions),
                 "--output", str(out), "--max-steps", "3", "--batch-size", "4", "--log-steps", "1",
                 "--save-steps", "3", "--device", "cpu", "--shuffle-buffer", "4"]) == 0
    assert [r["step"] for r in read_jsonl(out / "log.jsonl")] == [1, 2, 3]
    assert (out / "model" / "open_clip_model.safetensors").is_file()


def test_bad_samples_name_their_shard_and_key():
    image = _png(PIL.Image.new("RGB", (20, 10)))
    where = {"__key__": "k7", "__url__": "a/shard-000001.tar"}
    with pytest.raises(ValueError, match="shard-000001.tar sample k7: no image.*it has txt"):
        shard_record({**where, "txt": b"a cat"})
    with pytest.raises(ValueError, match="k7.*box"):
        shard_record({**where, "png": image, "json": json.dumps({"regions": [{"text": "a", "box": [0, 0, 30, 5]}]}).encode()})
    with pytest.raises(ValueError, match="k7: its cls must be a class index"):
        shard_record({**where, "png": image, "cls": b"cat"})
    record = shard_record({**where, "png": image, "txt": b" a cat \n",
                           "json": json.dumps({"regions": [{"text": "left", "box": [0, 0, 10, 10]}]}).encode()})
    assert record.caption == "a cat" and record.regions == [("left", (0.0, 0.0, 0.5, 1.0))] and record.image.size == (20, 10)


def test_grain_without_captions_is_an_error(open_clip_dir, tmp_path, capsys):
    shards = _write_shards(tmp_path / "shards", [{"__key__": "000000", "png": _png(PIL.Image.new("RGB", (32, 32)))}], 4)
    assert main(_grain_args(open_clip_dir, shards, tmp_path / "out", 1)) == 1
    assert "000000: no caption" in capsys.readouterr().err


def test_shards_config_errors(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        FinetuneConfig(output=str(tmp_path), objective="grain", annotations=__file__, shards="x-{0..1}.tar")
    FinetuneConfig(output=str(tmp_path), objective="grain", shards="x-{0..1}.tar")  # shards alone suffice


@pytest.mark.parametrize("damage", ["not a tar", "missing"])
def test_a_corrupt_or_missing_shard_is_one_line_before_the_run_folder(open_clip_dir, grounding_shards, tmp_path,
                                                                       capsys, damage):
    shards = grounding_shards
    first = sorted(tmp_path.rglob("*.tar"))[0]
    if damage == "missing":
        first.unlink()
    else:
        first.write_bytes(b"\x00garbage that is no tar archive" * 3)
    out = tmp_path / "out"
    assert main(_grain_args(open_clip_dir, shards, out, 1)) == 1
    err = capsys.readouterr().err
    assert str(first) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
