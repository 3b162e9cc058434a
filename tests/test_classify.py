"""``ex2 classify`` end to end through the CLI, on an ImageFolder of synthetic images and a tiny
random-init open_clip model; the category ablation on a hand-made colour VLM; conse on samples (slow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

from ex2.classify.common import evaluate
from ex2.cli import main
from ex2.vlm.base import VLM

COLOURS = {"red_apple": (220, 30, 30), "green leaf": (30, 200, 40), "blue sky": (30, 60, 220)}


@pytest.fixture
def folder(tmp_path) -> Path:
    """ImageFolder: three colour classes, three noisy images each, one corrupt file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(3):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            PIL.Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "blue sky" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture
def base_args(folder, open_clip_dir, tmp_cache) -> list[str]:
    return ["--dataset", "imagefolder", "--data-root", str(folder), "--vlm", f"local-dir:{open_clip_dir}",
            "--no-progress"]


def _descriptions(path: Path, rows: list[tuple[str, str, str]], adapter: str = "runs/train/adapter") -> Path:
    with path.open("w") as handle:
        for concept, description, category in rows:
            handle.write(json.dumps({"concept": concept, "class_id": 0, "description": description,
                                     "model": "smollm2", "adapter": adapter, "category": category,
                                     "informative": category != "spurious"}) + "\n")
    return path


def test_clip_run_writes_metrics_tables_figures_and_config(base_args, tmp_path):
    out = tmp_path / "run"
    assert main(["classify", *base_args, "--method", "clip", "--templates", "clip_ensemble", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("dataset", "split", "vlm", "method", "descriptions", "categories", "acc1", "acc5",
                "mean_per_class_recall", "n_images", "n_classes", "n_skipped_images"):
        assert key in metrics
    assert metrics["n_images"] == 9 and metrics["n_classes"] == 3 and metrics["n_skipped_images"] == 1
    assert metrics["acc5"] == 1.0 and 0 <= metrics["acc1"] <= 1
    assert metrics["aggregate"] == "mean_embedding" and metrics["texts_per_class"] > 1
    with (out / "confusion.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == ["blue sky", "green leaf", "red apple"] and sum(int(v) for r in rows[1:] for v in r[1:]) == 9
    for name in ("per_class.csv", "predictions.csv", "confusion.png", "per_class.png", "skipped_images.csv"):
        assert (out / name).stat().st_size > 0
    assert yaml.safe_load((out / "config.yaml").read_text())["templates"] == "clip_ensemble"


def test_second_run_reads_image_and_text_embeddings_from_the_caches(base_args, tmp_path, tmp_cache, monkeypatch):
    from ex2.vlm.open_clip_backend import OpenClipVLM

    args = [*base_args, "--templates", "clip_ensemble"]
    assert main(["classify", *args, "--output", str(tmp_path / "a")]) == 0
    shards = sorted(tmp_cache.rglob("*.npz"))
    assert {p.parent.parent.name for p in shards} == {"embeddings", "text-embeddings"}
    calls = []
    for name in ("_image_features", "_text_features"):
        original = getattr(OpenClipVLM, name)
        monkeypatch.setattr(OpenClipVLM, name, lambda self, x, f=original, n=name: calls.append(n) or f(self, x))
    assert main(["classify", *args, "--output", str(tmp_path / "b")]) == 0
    assert calls == []
    assert main(["classify", *args, "--no-cache", "--output", str(tmp_path / "c")]) == 0
    assert set(calls) == {"_image_features", "_text_features"}  # --no-cache turns both caches off
    assert sorted(tmp_cache.rglob("*.npz")) == shards
    first, second, uncached = ((tmp_path / r / "predictions.csv").read_text() for r in "abc")
    assert first == second == uncached


def test_ex2_descriptions_filtered_by_category_record_provenance(base_args, tmp_path):
    adapter = tmp_path / "train" / "adapter"  # aligned against another VLM: a cross-VLM run
    adapter.mkdir(parents=True)
    (tmp_path / "train" / "config.yaml").write_text("vlm: ViT-L-14:openai\nllm: smollm2\n")
    source = _descriptions(tmp_path / "categories.jsonl", [
        ("red apple", "It is red and round.", "visual"), ("Green_Leaf", "It is green.", "visual"),
        ("blue sky", "It is blue.", "visual"), ("blue sky", "Stock photo.", "spurious"),
        ("red apple", "Sold at markets.", "non_visual"),
    ], adapter=str(adapter))
    out = tmp_path / "run"
    argv = ["classify", *base_args, "--method", "ex2", "--descriptions", str(source), "--output", str(out)]
    assert main([*argv, "--categories", "spurious,non_visual"]) == 1  # green leaf has neither
    assert main([*argv, "--categories", "spurious", "non_visual", "--allow-missing", "--explain", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["categories"] == ["spurious", "non_visual"]
    assert metrics["classes_without_descriptions"] == ["green leaf"]
    assert metrics["descriptions"]["model"] == "smollm2" and metrics["descriptions"]["adapter"] == str(adapter)
    assert metrics["descriptions"]["aligned_vlm"] == "ViT-L-14:openai" and metrics["cross_vlm"] is True
    assert metrics["descriptions"]["path"] == str(source.resolve())
    texts = json.loads((out / "class_texts.json").read_text())
    assert texts == {"blue sky": ["Stock photo."], "green leaf": ["green leaf"], "red apple": ["Sold at markets."]}
    assert len(list((out / "explanations").glob("*.png"))) == 2


def test_unused_keys_are_reported_and_unmatched_classes_fail_naming_the_keys(base_args, tmp_path, capsys):
    source = tmp_path / "descriptors.json"
    source.write_text(json.dumps({"red apple": ["red"], "green leaf": ["green"], "blue sky": ["blue"], "zebra": ["x"]}))
    out = tmp_path / "run"
    assert main(["classify", *base_args, "--method", "dclip", "--descriptions", str(source), "--output", str(out)]) == 0
    assert "1 of 4 keys name no class of this dataset and are unused: 'zebra'" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["class_match"]["unused_keys"] == 1
    source.write_text(json.dumps({"red apple": ["red"], "green leaf": ["green"], "zebra": ["x"]}))
    assert main(["classify", *base_args, "--method", "dclip", "--descriptions", str(source),
                 "--output", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err
    assert "descriptors.json: 1 class(es) have no descriptions" in err and "blue sky" in err and "'zebra'" in err
    assert not (tmp_path / "refused").exists()


def test_dclip_and_waffle_runs(base_args, tmp_path):
    source = tmp_path / "descriptors.json"
    source.write_text(json.dumps({"Red Apple": ["red skin"], "green leaf": ["has veins"], "blue sky": ["a blue hue"]}))
    assert main(["classify", *base_args, "--method", "dclip", "--descriptions", str(source),
                 "--aggregate", "mean_embedding", "--output", str(tmp_path / "dclip")]) == 0
    texts = json.loads((tmp_path / "dclip" / "class_texts.json").read_text())
    assert texts["green leaf"] == ["green leaf, which has veins"] and texts["blue sky"] == ["blue sky, which is a blue hue"]
    assert json.loads((tmp_path / "dclip" / "metrics.json").read_text())["descriptions"]["format"] == "dclip_json"
    assert main(["classify", *base_args, "--method", "waffle", "--waffle-seeds", "3", "--waffle-count", "4",
                 "--explain-misclassified", "--explain", "2", "--output", str(tmp_path / "waffle")]) == 0
    metrics = json.loads((tmp_path / "waffle" / "metrics.json").read_text())
    assert len(metrics["per_seed"]) == 3 and metrics["waffle"]["seeds"] == [0, 1, 2]
    assert metrics["acc1"] == pytest.approx(np.mean([s["acc1"] for s in metrics["per_seed"]]))
    assert metrics["texts_per_class"] == 8


def test_a_refused_run_writes_nothing_and_leaves_an_older_run_as_it_was(base_args, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["classify", *base_args, "--output", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    missing = tmp_path / "missing.json"
    assert main(["classify", *base_args, "--method", "dclip", "--descriptions", str(missing), "--output", str(out)]) == 1
    assert main(["classify", *base_args, "--method", "clip", "--templates", str(missing), "--output", str(out)]) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main(["classify", *base_args, "--method", "dclip", "--descriptions", str(missing),
                 "--output", str(tmp_path / "new")]) == 1
    assert not (tmp_path / "new").exists()
    assert "missing.json does not exist" in capsys.readouterr().err


def test_bad_flags_say_how_to_fix_them(capsys):
    with pytest.raises(SystemExit):
        main(["classify", "--method", "ex2"])
    assert "needs --descriptions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classify", "--method", "ex2", "--descriptions", "d.jsonl", "--categories", "colourful"])
    assert "unknown categories colourful" in capsys.readouterr().err
    for method in ("dclip", "cupl", "waffle", "clip"):
        with pytest.raises(SystemExit):
            main(["classify", "--method", method, "--descriptions", "d.json", "--description-format", "{class}: {description}"])
        assert "--description-format shapes --method ex2's texts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classify", "--method", "waffle", "--waffle-concept", "bird", "--waffle-prefix", "A bird: "])
    assert "not both" in capsys.readouterr().err


# --- which texts does the VLM use? a colour VLM makes the answer known ---------------------------------


class ColourVLM(VLM):
    """Images are their mean colour; a text is the colour words it names (plus a constant)."""

    WORDS = ("red", "green", "blue")

    def __init__(self) -> None:
        super().__init__("colour", torch.device("cpu"), torch.float32, 100.0)

    def preprocess(self, image):
        return torch.tensor(np.asarray(image, dtype=np.float32).mean((0, 1)))

    def _image_features(self, pixels):
        return torch.cat([pixels / 255, torch.full((len(pixels), 1), 0.3)], dim=1)

    def _text_features(self, texts):
        rows = [[float(w in t.lower()) for w in self.WORDS] + [0.3] for t in texts]
        return torch.tensor(rows)


def test_visual_descriptions_classify_where_spurious_ones_cannot():
    vlm = ColourVLM()
    images = vlm.encode_images(torch.tensor([[220.0, 30, 30], [30, 200, 40], [30, 60, 220]]))
    labels = torch.arange(3)
    visual = [["It is red."], ["It is green."], ["It is blue."]]
    spurious = [["A stock photo."], ["A stock photo."], ["A stock photo."]]
    results = evaluate(vlm.encode_texts, [visual, spurious], images, labels, "mean_score")
    assert results[0].metrics["acc1"] == 1.0
    assert results[1].metrics["acc1"] < 1.0


@pytest.mark.slow
def test_conse_classifies_the_embedded_samples(shared_cache, tmp_path):
    out = tmp_path / "run"
    assert main(["classify", "--dataset", "samples", "--vlm", "conse", "--method", "clip", "--no-progress",
                 "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_classes"] >= 8 and metrics["n_skipped_images"] == 0
    assert metrics["acc1"] >= 0.8


def test_dataset_given_as_name_colon_root(folder, open_clip_dir, tmp_cache, tmp_path, capsys):
    vlm = ["--vlm", f"local-dir:{open_clip_dir}", "--no-progress"]
    out = tmp_path / "run"
    assert main(["classify", "--dataset", f"imagefolder:{folder}", *vlm, "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "imagefolder" and metrics["n_images"] == 9 and metrics["n_classes"] == 3
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["dataset"], saved["data_root"]) == ("imagefolder", str(folder))
    clash = tmp_path / "clash"
    with pytest.raises(SystemExit):
        main(["classify", "--dataset", f"imagefolder:{folder}", "--data-root", str(tmp_path), *vlm,
              "--output", str(clash)])
    err = capsys.readouterr().err
    assert "given twice" in err and str(folder) in err and str(tmp_path) in err
    assert not clash.exists()
