"""``ex2 finetune`` on transformers CLIP and SigLIP: the desc objective with LoRA and in full, the
grain objective on the ViT's patch tokens, the saved model loading back as an ex2 VLM, and
SigLIP's sigmoid loss."""

from __future__ import annotations

import json

import pytest
import torch

from ex2.cli import main
from ex2.core.io import read_jsonl, write_jsonl
from ex2.data import concept_names
from ex2.finetune.data import synthetic_grounding
from ex2.finetune.evaluation import evaluate_regions
from ex2.finetune.losses import multi_positive_nce, multi_positive_sigmoid
from ex2.finetune.model import FinetuneModel, add_lora, merge_lora
from ex2.finetune.stage import FinetuneConfig, run
from ex2.finetune.towers import TransformersTowers, load_towers
from ex2.vlm import load_vlm


def test_sigmoid_loss_is_siglips_with_identity():
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    labels = 2 * torch.eye(4) - 1
    siglip = -torch.nn.functional.logsigmoid(labels * logits).sum() / 4
    assert multi_positive_sigmoid(logits, torch.eye(4)).item() == pytest.approx(siglip.item(), rel=1e-6)


@pytest.fixture
def descriptions(tmp_path):
    path = tmp_path / "categories.jsonl"
    write_jsonl(path, [{"concept": name, "description": f"{name} up close", "category": "visual"}
                       for name in concept_names("samples")])
    return path


def _args(vlm, descriptions, out, *extra):
    return ["finetune", "--vlm", str(vlm), "--dataset", "samples", "--split", "test", "--descriptions",
            str(descriptions), "--output", str(out), "--max-steps", "3", "--batch-size", "8", "--log-steps", "1",
            "--save-steps", "3", "--device", "cpu", "--learning-rate", "1e-3", *extra]


def test_clip_lora_finetune_loads_back_and_classifies(hf_clip_dir, descriptions, tmp_path, shared_cache):
    out = tmp_path / "ft"
    assert main(_args(hf_clip_dir, descriptions, out)) == 0
    log = read_jsonl(out / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3] and {"desc", "name", "desc_acc"} <= set(log[0])
    assert (out / "model" / "config.json").is_file()
    tuned, base = load_vlm(str(out / "model"), device="cpu"), load_vlm(str(hf_clip_dir), device="cpu")
    assert type(tuned).__name__ == "TransformersVLM"
    texts = ["a photo of a cat."]
    assert not torch.allclose(tuned.encode_texts(texts), base.encode_texts(texts))  # LoRA was merged in
    assert not any("lora_" in k for k in tuned.model.state_dict())
    assert main(["classify", "--vlm", str(out / "model"), "--dataset", "samples", "--device", "cpu",
                 "--method", "clip", "--output", str(tmp_path / "cls")]) == 0
    assert json.loads((tmp_path / "cls" / "metrics.json").read_text())["n_images"] == 80


def test_siglip_full_finetune_keeps_its_bias_and_sigmoid_loss(hf_siglip_dir, descriptions, tmp_path, shared_cache):
    out = tmp_path / "ft"
    assert main(_args(hf_siglip_dir, descriptions, out, "--method", "full", "--name-weight", "0")) == 0
    log = read_jsonl(out / "log.jsonl")
    assert log[-1]["loss"] < log[0]["loss"]
    tuned, base = load_vlm(str(out / "model"), device="cpu"), load_vlm(str(hf_siglip_dir), device="cpu")
    assert tuned.siglip and tuned.logit_bias != base.logit_bias  # the bias is trained with the sigmoid loss


def test_each_model_gets_its_own_loss(hf_siglip_dir, hf_clip_dir):
    logits, positives = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)), torch.eye(4, 6)
    siglip, clip = FinetuneModel(*load_towers(str(hf_siglip_dir))), FinetuneModel(*load_towers(str(hf_clip_dir)))
    assert isinstance(siglip.towers, TransformersTowers)
    assert siglip.contrastive(logits, positives) == multi_positive_sigmoid(logits, positives)
    assert clip.contrastive(logits, positives) == multi_positive_nce(logits, positives)
    images, texts = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1), torch.eye(3, 8)
    bias = siglip.clip.logit_bias
    assert torch.allclose(siglip.logits(images, texts), siglip.scale() * images @ texts.T + bias)


def test_clip_lora_merge_matches_adapters(hf_clip_dir, tmp_path):
    model, towers = load_towers(str(hf_clip_dir))
    config = FinetuneConfig(output=str(tmp_path), descriptions=__file__)
    model = add_lora(model.eval(), config, towers.lora_targets)
    tokens, pixels = towers.tokenize(["a red cat", "a dog"]), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
        before = towers.encode_text(model, tokens), towers.encode_image(model, pixels)[0]
        merged = merge_lora(model)
        after = towers.encode_text(merged, tokens), towers.encode_image(merged, pixels)[0]
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("fixture", ["hf_clip_dir", "hf_siglip_dir"])
def test_patch_tokens_are_the_vits(fixture, request):
    model, towers = load_towers(str(request.getfixturevalue(fixture)))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, patches = towers.encode_image(model.eval(), pixels, tokens="patches")
        features = model.get_image_features(pixel_values=pixels)
    shape = towers.shape(model)
    assert patches.shape == (2, (32 // 8) ** 2, shape["width"])  # the CLS token (CLIP) dropped
    assert pooled.shape == (2, shape["embed_dim"])
    assert torch.allclose(pooled, getattr(features, "pooler_output", features), atol=1e-5)
    with torch.no_grad():
        _, every = towers.encode_image(model, pixels, tokens="all")
    cls = 1 if fixture == "hf_clip_dir" else 0  # SigLIP has no class token
    assert every.shape == (2, (32 // 8) ** 2 + cls, shape["width"]) and torch.allclose(every[:, cls:], patches, atol=1e-6)


def test_clip_grain_objective(hf_clip_dir, tmp_path):
    annotations = synthetic_grounding(tmp_path / "set", n=8, size=32)
    out = tmp_path / "grain"
    run(FinetuneConfig(output=str(out), objective="grain", vlm=str(hf_clip_dir), annotations=str(annotations),
                       method="lora", max_steps=4, batch_size=8, save_steps=4, log_steps=1, device="cpu",
                       learning_rate=1e-3, head_learning_rate=1e-3, queries=4))
    log = read_jsonl(out / "log.jsonl")
    assert {"box_l1", "region_text", "caption"} <= set(log[0]) and log[-1]["loss"] < log[0]["loss"]
    scores = evaluate_regions(out, annotations)
    assert scores["regions"] > 0 and 0 <= scores["mean_iou"] <= 1


def test_finetune_refuses_a_model_it_cannot_train(tmp_path, descriptions):
    with pytest.raises(ValueError, match="conse"):
        load_towers("conse")
