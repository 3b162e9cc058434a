"""``ex2 annotate``: OWLv2 detection as transformers computes it, boxes in image pixels, and the stage
end to end on ``samples`` with a tiny random-init OWLv2 (resume, categories, captions), feeding
``ex2 finetune --objective grain``."""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch

from ex2.annotate import stage as annotate_module
from ex2.annotate.stage import AnnotateConfig, partial_path
from ex2.cli import main
from ex2.core.io import read_jsonl, write_jsonl
from ex2.data import concept_names
from ex2.finetune.data import read_grounding
from ex2.vlm.detector import load_detector, pixel_boxes


@pytest.fixture(scope="module")
def detector(owlv2_dir):
    return load_detector(str(owlv2_dir), device="cpu")


def _images() -> list[PIL.Image.Image]:
    generator = torch.Generator().manual_seed(0)
    sizes = [(60, 40), (40, 64), (32, 32)]
    return [PIL.Image.fromarray((torch.rand(h, w, 3, generator=generator) * 255).byte().numpy()) for w, h in sizes]


def test_best_boxes_are_what_owlv2_forward_computes(detector):
    images = _images()
    queries = [["a red cat", "dog"], ["tripod legs"], ["a cup", "espresso crema", "steam"]]
    scores, boxes = detector.best_boxes(detector.pixels(images), queries)
    for row, (image, texts) in enumerate(zip(images, queries, strict=True)):
        inputs = detector.processor(text=[texts], images=[image], return_tensors="pt")
        with torch.no_grad():
            out = detector.model(**inputs)
        best = out.logits[0].max(dim=0)  # over patches: [Q]
        assert torch.allclose(scores[row, : len(texts)], best.values.sigmoid(), atol=1e-5)
        assert torch.allclose(boxes[row, : len(texts)], out.pred_boxes[0, best.indices], atol=1e-5)
        assert (scores[row, len(texts):] == 0).all()  # padding queries score nothing


def test_pixel_boxes_undo_owlv2_square_padding():
    # a 60x40 image is padded to 60x60 at the bottom: its full extent is (0.5, 1/3, 1, 2/3) of the square
    boxes = torch.tensor([[0.5, 1 / 3, 1.0, 2 / 3], [0.5, 0.9, 0.2, 0.2], [0.25, 0.25, 0.5, 0.5]])
    out = pixel_boxes(boxes, 60, 40)
    assert out[0].tolist() == pytest.approx([0, 0, 60, 40], abs=1e-4)
    assert out[1].tolist() == pytest.approx([24, 40, 36, 40], abs=1e-4)  # wholly in the padding: no area
    assert out[2].tolist() == pytest.approx([0, 0, 30, 30], abs=1e-4)


def test_detect_keeps_the_best_box_per_query_above_the_threshold(detector):
    images = _images()
    queries = [["a red cat", "dog"], ["tripod legs"], []]
    scores, _ = detector.best_boxes(detector.pixels(images), queries)
    cut = float(scores[0, :2].mean())  # between the two queries of the first image
    found = detector.detect(images, queries, threshold=cut)
    assert [d.query for d in found[0]] == [int(scores[0, :2].argmax())]
    assert found[2] == []
    everything = detector.detect(images, queries, threshold=0.0)
    for image, hits in zip(images, everything, strict=True):
        for hit in hits:
            x0, y0, x1, y1 = hit.box
            assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height


def test_every_box_is_what_transformers_post_processing_keeps(detector):
    """GRAIN's rule: box_supervision.py keeps post_process_object_detection's boxes above 0.3."""
    images = [image.resize((32, 32)) for image in _images()]  # square, as GRAIN's 224x224 input
    queries = [["a red cat", "dog"], ["tripod legs"], ["a cup", "espresso crema", "steam"]]
    pixels = detector.pixels(images)
    logits, _, _ = detector.patch_logits(pixels, queries)
    for row, (image, texts) in enumerate(zip(images, queries, strict=True)):
        values = logits[row, :, : len(texts)].max(-1).values.sigmoid().sort().values
        threshold = float(values[len(values) // 2 : len(values) // 2 + 2].mean())  # keeps about half, no ties
        labels, scores, boxes = detector.every_box(pixels[row : row + 1], [texts], threshold)[0]
        inputs = detector.processor(text=[texts], images=[image], return_tensors="pt")
        with torch.no_grad():
            out = detector.model(**inputs)
        kept = detector.processor.image_processor.post_process_object_detection(
            out, threshold=threshold, target_sizes=torch.tensor([[1, 1]]))[0]
        assert labels.tolist() == kept["labels"].tolist() and len(labels) > 0
        assert torch.allclose(scores, kept["scores"], atol=1e-5)
        from torchvision.ops import box_convert

        assert torch.allclose(box_convert(boxes, "cxcywh", "xyxy"), kept["boxes"], atol=1e-5)


def test_grain_preset_settings(tmp_path):
    grain = AnnotateConfig(output=str(tmp_path / "o.jsonl"), descriptions=__file__, preset="grain")
    assert (grain.threshold, grain.max_regions) == (0.3, 5)
    ours = AnnotateConfig(output=str(tmp_path / "o.jsonl"), descriptions=__file__)
    assert (ours.threshold, ours.max_regions) == (0.1, 8)
    mixed = AnnotateConfig(output=str(tmp_path / "o.jsonl"), descriptions=__file__, preset="grain", threshold=0.5)
    assert (mixed.threshold, mixed.max_regions) == (0.5, 5)


@pytest.fixture
def descriptions(tmp_path):
    path = tmp_path / "categories.jsonl"
    records = []
    for name in concept_names("samples"):
        records += [{"concept": name, "description": f"{name} seen up close", "category": "visual"},
                    {"concept": name, "description": f"the {name} outline", "category": "visual"},
                    {"concept": name, "description": f"{name} in the catalogue", "category": "non_visual"}]
    write_jsonl(path, records)
    return path


def _annotate_args(owlv2_dir, descriptions, out, *extra):
    return ["annotate", "--dataset", "samples", "--descriptions", str(descriptions), "--categories", "visual",
            "--detector", str(owlv2_dir), "--output", str(out), "--images-per-class", "3", "--threshold", "0",
            "--batch-size", "4", "--num-workers", "0", "--device", "cpu", *extra]


def test_annotate_then_finetune_grain(owlv2_dir, open_clip_dir, descriptions, tmp_path, shared_cache):
    out = tmp_path / "grounding.jsonl"
    assert main(_annotate_args(owlv2_dir, descriptions, out, "--max-regions", "1")) == 0
    records = read_jsonl(out)
    assert len(records) == 8 * 3 and not partial_path(out).exists()
    assert (tmp_path / "grounding.jsonl.config.yaml").is_file()
    for record in records:
        assert record["caption"] == f"a photo of a {record['class']}."
        assert len(record["regions"]) == 1  # --max-regions
        assert record["regions"][0]["text"] in (f"{record['class']} seen up close", f"the {record['class']} outline")
    grounded = read_grounding(out)  # the format finetune reads, boxes inside their images
    assert all(len(g.regions) == 1 for g in grounded)

    run_dir = tmp_path / "grain"
    assert main(["finetune", "--objective", "grain", "--vlm", str(open_clip_dir), "--annotations", str(out),
                 "--output", str(run_dir), "--max-steps", "2", "--batch-size", "8", "--log-steps", "1",
                 "--save-steps", "2", "--device", "cpu", "--queries", "2", "--method", "full"]) == 0
    log = read_jsonl(run_dir / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] == r["loss"] for r in log)  # finite, not NaN
    assert (run_dir / "region_decoder.safetensors").is_file()


def test_grain_preset_keeps_several_boxes_of_a_description(owlv2_dir, descriptions, tmp_path, shared_cache):
    out = tmp_path / "grain.jsonl"
    assert main(_annotate_args(owlv2_dir, descriptions, out, "--preset", "grain")) == 0  # --threshold 0: every box
    records = read_jsonl(out)
    assert len(records) == 24 and all(len(r["regions"]) == 5 for r in records)  # GRAIN's top 5
    texts = [[region["text"] for region in r["regions"]] for r in records]
    assert any(len(set(t)) < len(t) for t in texts)  # one description, several boxes: not ours
    for record, grounded in zip(records, read_grounding(out), strict=True):
        scores = [region["score"] for region in record["regions"]]
        assert scores == sorted(scores, reverse=True) and len(grounded.regions) == 5


def test_annotate_resumes_after_a_kill(owlv2_dir, descriptions, tmp_path, shared_cache, monkeypatch, capsys):
    out = tmp_path / "grounding.jsonl"
    real, calls = annotate_module.annotate_batch, []

    def dies_on_second_batch(batch, *args):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(batch, *args)

    monkeypatch.setattr(annotate_module, "annotate_batch", dies_on_second_batch)
    assert main(_annotate_args(owlv2_dir, descriptions, out)) == 130
    assert not out.exists() and len(read_jsonl(partial_path(out))) == 1 + 4  # settings + the first batch
    # another threshold would mix two runs' records: refused, naming what changed
    assert main(_annotate_args(owlv2_dir, descriptions, out, "--threshold", "0.5")) == 1
    # so would descriptions changed in place (the same path): their digest is a setting
    original = descriptions.read_bytes()
    descriptions.write_bytes(original + original.splitlines(keepends=True)[0])
    capsys.readouterr()
    assert main(_annotate_args(owlv2_dir, descriptions, out)) == 1
    assert "descriptions_sha256" in capsys.readouterr().err
    descriptions.write_bytes(original)
    calls.clear()
    monkeypatch.setattr(annotate_module, "annotate_batch", lambda batch, *args: calls.append(len(batch)) or real(batch, *args))
    assert main(_annotate_args(owlv2_dir, descriptions, out)) == 0
    assert sum(calls) == 24 - 4  # only what was missing
    fresh = tmp_path / "fresh.jsonl"
    assert main(_annotate_args(owlv2_dir, descriptions, fresh)) == 0
    assert read_jsonl(out) == [{**r} for r in read_jsonl(fresh)]


def test_annotate_threshold_and_empty_images(owlv2_dir, descriptions, tmp_path, shared_cache, capsys):
    out = tmp_path / "none.jsonl"
    assert main(_annotate_args(owlv2_dir, descriptions, out, "--threshold", "1")) == 0
    assert read_jsonl(out) == [] and "0 of 24 images written" in capsys.readouterr().out
    kept = tmp_path / "kept.jsonl"
    assert main(_annotate_args(owlv2_dir, descriptions, kept, "--threshold", "1", "--keep-empty")) == 0
    assert len(read_jsonl(kept)) == 24 and all(r["regions"] == [] for r in read_jsonl(kept))
    every = tmp_path / "all.jsonl"  # without --categories the non-visual description is a query too
    args = _annotate_args(owlv2_dir, descriptions, every)
    args.remove("--categories"), args.remove("visual")
    assert main(args) == 0
    assert any("catalogue" in region["text"] for r in read_jsonl(every) for region in r["regions"])


def test_annotate_captions_with_a_generative_vlm(owlv2_dir, descriptions, tmp_path, shared_cache):
    from ex2.gvlm.testing import build_tiny_llava

    llava = build_tiny_llava(tmp_path / "llava")
    out = tmp_path / "captioned.jsonl"
    assert main(_annotate_args(owlv2_dir, descriptions, out, "--captioner", f"gen:local-dir:{llava}",
                               "--max-new-tokens", "5", "--images-per-class", "1")) == 0
    records = read_jsonl(out)
    assert len(records) == 8 and all(isinstance(r["caption"], str) and r["caption"] for r in records)
    templated = [r["caption"] == f"a photo of a {r['class']}." for r in records]
    assert not all(templated)  # the random model wrote something (an empty answer falls back)


def test_annotate_config_errors(tmp_path, descriptions):
    with pytest.raises(ValueError, match="--output"):
        AnnotateConfig(descriptions=str(descriptions))
    with pytest.raises(ValueError, match="--threshold"):
        AnnotateConfig(output=str(tmp_path / "o.jsonl"), descriptions=str(descriptions), threshold=2)
    with pytest.raises(ValueError, match="--captioner"):
        AnnotateConfig(output=str(tmp_path / "o.jsonl"), descriptions=str(descriptions), captioner="ViT-B-32")


def test_annotate_refuses_a_detector_of_another_kind(hf_clip_dir):
    with pytest.raises(ValueError, match="OWLv2"):
        load_detector(str(hf_clip_dir), device="cpu")


def test_annotate_bad_descriptions_are_one_line_errors(owlv2_dir, tmp_path, shared_cache, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"zebra": ["stripes"]}))
    out = tmp_path / "o.jsonl"
    assert main(["annotate", "--descriptions", str(other), "--detector", str(owlv2_dir), "--output", str(out)]) == 1
    assert "no descriptions for any class of samples" in capsys.readouterr().err
    assert main(["annotate", "--descriptions", str(tmp_path / "missing.jsonl"), "--output", str(out)]) == 1
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_loader_workers_give_the_same_annotations(owlv2_dir, descriptions, tmp_path, shared_cache):
    outputs = []
    for workers in ("0", "2"):
        out = tmp_path / f"workers-{workers}.jsonl"
        args = _annotate_args(owlv2_dir, descriptions, out, "--images-per-class", "1")
        args[args.index("--num-workers") + 1] = workers
        assert main(args) == 0
        outputs.append(read_jsonl(out))
    assert len(outputs[0]) == 8 and outputs[0] == outputs[1]
