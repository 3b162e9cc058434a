"""``ex2 finetune --objective grain`` as GRAIN's code has it (shaunak27/grain-clip @ c6bf85e): its
decoder, its box-loss normalisation and weights apart from the matcher's, repeated texts kept apart,
its own annotation files, training from random initialisation. Numbers marked "GRAIN's code" were
computed by running the original functions on the same tensors outside the project."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert

from ex2.cli import main
from ex2.core.io import read_jsonl
from ex2.finetune.batches import grain_inputs
from ex2.finetune.data import (
    GRAIN_FRAME,
    read_annotations,
    read_grain_files,
    read_grounding,
    synthetic_grounding,
)
from ex2.finetune.evaluation import evaluate_regions
from ex2.finetune.grain import (
    DECODERS,
    GRAIN_LOSS_WEIGHTS,
    GrainDecoder,
    RegionDecoder,
    build_decoder,
    hungarian_match,
    region_losses,
)
from ex2.finetune.model import FinetuneModel
from ex2.finetune.stage import FinetuneConfig
from ex2.finetune.towers import load_towers

ROOT = Path(__file__).resolve().parents[1]


def reference(relative: str) -> Path:
    """A file of ``$EX2_REFERENCE_DIR`` (default: ``shared/reference`` beside the checkout or its
    worktree folder); skip when absent."""
    candidates = [Path(os.environ["EX2_REFERENCE_DIR"])] if os.environ.get("EX2_REFERENCE_DIR") else [
        ROOT.parent / "shared" / "reference", ROOT.parents[1] / "shared" / "reference"]
    for folder in candidates:
        if (folder / relative).is_file():
            return folder / relative
    pytest.skip(f"{relative} is absent from {candidates[0]} (set EX2_REFERENCE_DIR to the reference files)")


# --- the decoder -------------------------------------------------------------------------------


def test_grain_decoder_is_grains_shape():
    decoder = build_decoder("grain", token_width=96, embed_dim=512)
    assert isinstance(decoder, GrainDecoder) and len(decoder.layers) == 6
    assert decoder.positions.weight.shape == (5 + 1, 512) and decoder.proj.bias is None
    # GRAIN's ObjDecoder(feature_dim=96, 6 queries) without its unused class head and embeddings
    assert sum(p.numel() for p in decoder.parameters()) == 26_330_116
    boxes, regions, image = decoder.eval()(torch.randn(3, 50, 96))
    assert boxes.shape == (3, 5, 4) and regions.shape == (3, 5, 512) and image.shape == (3, 512)
    assert ((boxes > 0) & (boxes < 1)).all()
    ours = build_decoder("ex2", token_width=96, embed_dim=32)
    assert isinstance(ours, RegionDecoder) and ours.shape["queries"] == 8 and ours(torch.randn(2, 9, 96))[2] is None
    assert DECODERS["grain"].tokens == "all" and DECODERS["ex2"].tokens == "patches"


def test_pre_norm_layers_see_the_query_positions_every_layer():
    decoder = GrainDecoder(16, 8, queries=2, layers=2, width=16, heads=2).eval()
    tokens = torch.randn(1, 7, 16)
    before = decoder(tokens)
    with torch.no_grad():
        decoder.positions.weight[0] += 1.0  # only the first region query's position moves
    after = decoder(tokens)
    assert not torch.allclose(before[0][0, 0], after[0][0, 0])


def test_open_clip_all_tokens_are_the_class_token_and_patches(open_clip_dir):
    model, towers = load_towers(str(open_clip_dir))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, patches = towers.encode_image(model.eval(), pixels, "patches")
        again, every = towers.encode_image(model, pixels, "all")
    assert every.shape[1] == patches.shape[1] + 1 and torch.allclose(every[:, 1:], patches, atol=1e-6)
    assert torch.allclose(every[:, 0] @ model.visual.proj, pooled, atol=1e-5) and torch.allclose(again, pooled)


# --- losses --------------------------------------------------------------------------------------

PRED = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2], [0.5, 0.4, 0.4, 0.4]]])
GOLD = box_convert(torch.tensor([[40.0, 50.0, 100.0, 110.0], [120.0, 110.0, 200.0, 170.0]]) / 224, "xyxy", "cxcywh")


def test_box_loss_is_detrs_with_grains_weights():
    terms = region_losses(PRED, torch.randn(1, 3, 4), [GOLD], [torch.tensor([0, 1])], F.normalize(torch.randn(2, 4)),
                          torch.tensor(10.0))
    query, region = hungarian_match(PRED[0], GOLD)
    assert query.tolist() == [0, 1] and region.tolist() == [0, 1]  # GRAIN's matcher: the same pairs
    assert terms["box_l1"].item() == pytest.approx((PRED[0, query] - GOLD[region]).abs().sum().item() / 2, rel=1e-6)
    weighted = GRAIN_LOSS_WEIGHTS[0] * terms["box_l1"] + GRAIN_LOSS_WEIGHTS[1] * terms["box_giou"]
    assert weighted.item() == pytest.approx(1.272790551185608, rel=1e-3)  # GRAIN's code: compute_box_loss
    # (GRAIN's box_ops adds 1e-4 to the IoU's union; torchvision does not)


def test_repeated_descriptions_stay_apart():
    desc = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    obj = torch.tensor([[[0.5, 0.1, 0.2, 0.9], [1.0, 0.3, -0.2, 0.4], [0.0, 1.0, 0.0, 0.0]]])
    apart = grain_inputs(["c"], [["wings", "wings"]], [GOLD], "apart")
    assert apart["region_texts"] == ["wings", "wings"] and apart["region_targets"][0].tolist() == [0, 1]
    terms = region_losses(PRED, obj, [GOLD], apart["region_targets"], F.normalize(desc, dim=-1), torch.tensor(10.0))
    assert terms["region_text"].item() == pytest.approx(0.6931471824645996, rel=1e-6)  # GRAIN's code: ln 2
    merged = grain_inputs(["c"], [["wings", "wings"]], [GOLD], "merged")
    assert merged["region_texts"] == ["wings"] and merged["region_targets"][0].tolist() == [0, 0]
    terms = region_losses(PRED, obj, [GOLD], merged["region_targets"], F.normalize(desc[:1], dim=-1), torch.tensor(10.0))
    assert terms["region_text"].item() == pytest.approx(0.0, abs=1e-6)


class _Towers:
    @staticmethod
    def logit_scale(model):
        return model.logit_scale.exp()

    @staticmethod
    def logit_bias(model):
        return None


def test_repeated_captions_stay_apart_as_in_clips_loss():
    clip = torch.nn.Module()
    clip.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
    model = FinetuneModel(clip, _Towers())
    captions = ["a dog", "a cat", "a dog", "a bird"]
    images = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    words = {c: torch.randn(8, generator=torch.Generator().manual_seed(len(c))) for c in captions}
    texts = F.normalize(torch.stack([words[c] for c in captions]), dim=-1)
    logits = clip.logit_scale.exp() * images @ texts.T
    clip_loss = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    losses = {}
    for mode in ("apart", "merged"):
        parts = grain_inputs(captions, [[]] * 4, [torch.zeros(0, 4)] * 4, mode)
        losses[mode] = model.contrast(images, texts, parts["labels"], parts["owners"], parts["ids"])[0].item()
    assert losses["apart"] == pytest.approx(clip_loss.item(), rel=1e-6)  # GRAIN's CLIPLoss: arange labels
    assert losses["merged"] != pytest.approx(losses["apart"], rel=1e-3)


# --- GRAIN's annotation files --------------------------------------------------------------------


def test_grains_reference_files_read_as_they_are():
    bboxes = reference("grain/bboxes_cc12m_pooled.json")
    records = read_grain_files(bboxes, bboxes.with_name("captions_pooled.csv"))
    assert len(records) == 1 and records[0].caption == "a bird over the sea"
    assert records[0].image == bboxes.with_name("img1.jpg")
    # box_supervision.py's pixels of OWLv2's 960 frame, as conceptual.py divides them
    assert records[0].regions == [("long wingspan", pytest.approx((100 / 960, 200 / 960, 500 / 960, 700 / 960)))]


def _grain_files(folder: Path, entries: dict, rows: list[list[str]]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if row[0].endswith(".png") and not (folder / row[0]).exists():
            synthetic_grounding(folder / "tmp", n=1, size=16)
            shutil.copy(folder / "tmp" / "images" / "00000.png", folder / row[0])
    (folder / "bboxes.json").write_text(json.dumps(entries))
    with open(folder / "captions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return folder / "bboxes.json", folder / "captions.csv"


def test_grain_files_keep_the_five_best_boxes_clipped(tmp_path):
    entries = {"a.png": [{"description": f"part {i}", "bbox": [10 * i, 0, 10 * i + 100, 50], "score": 0.3 + i / 20}
                         for i in range(7)]
               + [{"description": "outside", "bbox": [-50, 900, 1200, 1000], "score": 0.99},
                  {"description": "no area", "bbox": [990, 10, 1000, 20], "score": 0.98}]}
    bboxes, captions = _grain_files(tmp_path, entries, [["image", "caption"], ["a.png", "a bird"], ["b.png", "none"]])
    records = read_grain_files(bboxes, captions)
    assert [r.image.name for r in records] == ["a.png", "b.png"]  # the header row skipped, as conceptual.py does
    texts = [t for t, _ in records[0].regions]
    assert texts == ["outside", "part 6", "part 5", "part 4"]  # top 5 by score; "no area" dropped after clipping
    assert records[0].regions[0][1] == pytest.approx((0.0, 900 / GRAIN_FRAME, 1.0, 1.0))
    assert records[1].regions == []  # an image without boxes trains the caption loss only
    assert read_annotations(bboxes, captions) == records


def test_grain_files_errors_name_the_file(open_clip_dir, tmp_path, capsys):
    bboxes, captions = _grain_files(tmp_path, {"a.png": [{"description": "x", "bbox": [1, 2, 3], "score": 1}]},
                                    [["a.png", "c"]])
    with pytest.raises(ValueError, match=r"bboxes.json image 'a.png'.*bbox"):
        read_grain_files(bboxes, captions)
    bboxes, captions = _grain_files(tmp_path, {}, [["a.png", "c"], ["gone.jpg", "c"]])
    with pytest.raises(FileNotFoundError, match="captions.csv line 2"):
        read_grain_files(bboxes, captions)
    with pytest.raises(ValueError, match="--captions"):
        read_annotations(bboxes)
    bad, captions = _grain_files(tmp_path / "bad", {"a.png": [{"description": "x", "bbox": [], "score": 1}]},
                                 [["a.png", "c"]])
    out = tmp_path / "run"
    assert main(["finetune", "--objective", "grain", "--vlm", str(open_clip_dir), "--annotations", str(bad),
                 "--captions", str(captions), "--output", str(out), "--device", "cpu"]) == 1
    assert "bbox" in capsys.readouterr().err and not out.exists()  # checked before the run folder is made
    with pytest.raises(ValueError, match="--captions"):
        FinetuneConfig(output=str(tmp_path / "o"), objective="grain", annotations=str(bboxes))
    jsonl = synthetic_grounding(tmp_path / "set", n=1, size=16)
    with pytest.raises(ValueError, match="--captions"):
        FinetuneConfig(output=str(tmp_path / "o"), objective="grain", annotations=str(jsonl), captions=str(captions))


def _as_grain_files(annotations: Path, folder: Path) -> tuple[Path, Path]:
    """ex2's synthetic grounding written the way box_supervision.py writes: boxes in the 960 frame."""
    import PIL.Image

    folder.mkdir()
    boxes, rows = {}, []
    for record in read_jsonl(annotations):
        source = annotations.parent / record["image"]
        name = source.name
        shutil.copy(source, folder / name)
        width, height = PIL.Image.open(source).size
        boxes[name] = [{"description": r["text"], "score": 0.5,
                        "bbox": [r["box"][0] / width * GRAIN_FRAME, r["box"][1] / height * GRAIN_FRAME,
                                 r["box"][2] / width * GRAIN_FRAME, r["box"][3] / height * GRAIN_FRAME]}
                       for r in record["regions"]]
        rows.append([name, record["caption"]])
    return _grain_files(folder, boxes, rows)


# --- end to end ------------------------------------------------------------------------------------


def test_random_init_keeps_the_architecture(open_clip_dir, hf_clip_dir):
    for name in (str(open_clip_dir), str(hf_clip_dir)):
        model, towers = load_towers(name)
        fresh = towers.random_init(model)
        before, after = model.state_dict(), fresh.state_dict()
        assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
        weights = [k for k, v in before.items() if v.dim() == 2]
        assert weights and all(not torch.equal(before[k], after[k]) for k in weights)


def test_grain_from_random_init_on_grains_files(open_clip_dir, tmp_path):
    bboxes, captions = _as_grain_files(synthetic_grounding(tmp_path / "set", n=8, size=32), tmp_path / "grain-files")
    theirs, ours = read_grain_files(bboxes, captions), read_grounding(tmp_path / "set" / "annotations.jsonl")
    for a, b in zip(theirs, ours, strict=True):
        assert [t for t, _ in a.regions] == [t for t, _ in b.regions] and a.caption == b.caption
        assert torch.allclose(torch.tensor([x for _, x in a.regions]), torch.tensor([x for _, x in b.regions]), atol=1e-6)
    out = tmp_path / "run"
    assert main(["finetune", "--objective", "grain", "--vlm", str(open_clip_dir), "--init", "random",
                 "--annotations", str(bboxes), "--captions", str(captions), "--output", str(out), "--max-steps", "3",
                 "--batch-size", "8", "--log-steps", "1", "--save-steps", "3", "--device", "cpu", "--method", "full",
                 "--learning-rate", "1e-3", "--head-learning-rate", "1e-3"]) == 0
    log = read_jsonl(out / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3] and log[-1]["loss"] < log[0]["loss"]
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["init"] == "random" and provenance["region_decoder"]["kind"] == "grain"
    assert provenance["region_decoder"]["queries"] == 5 and provenance["region_decoder"]["layers"] == 6
    tuned, _ = load_towers(str(out / "model"))
    base, _ = load_towers(str(open_clip_dir))
    assert not torch.allclose(tuned.visual.conv1.weight, base.visual.conv1.weight, atol=1e-2)  # not the base's
    scores = evaluate_regions(out, bboxes, captions=captions)
    assert scores["regions"] == sum(len(r.regions) for r in read_grain_files(bboxes, captions))


def test_image_features_are_the_global_querys(open_clip_dir, tmp_path):
    from ex2.finetune.evaluation import image_features, load_grain_run

    annotations = synthetic_grounding(tmp_path / "set", n=4, size=32)
    out = tmp_path / "run"
    assert main(["finetune", "--objective", "grain", "--vlm", str(open_clip_dir), "--annotations", str(annotations),
                 "--output", str(out), "--max-steps", "1", "--batch-size", "4", "--save-steps", "1", "--device", "cpu",
                 "--decoder-layers", "1"]) == 0
    model = load_grain_run(out)
    pixels = torch.randn(2, 3, 32, 32)
    features = image_features(model, pixels)
    _, tokens = model.images(pixels, "all")
    assert torch.allclose(features, F.normalize(model.decoder(tokens)[2], dim=-1))
    assert not torch.allclose(features, model.images(pixels)[0], atol=1e-3)  # not the pooled head
