"""``ex2 finetune``: the Hungarian matcher, the desc objective end to end on the tiny open_clip
model (reload as an ex2 VLM, classify, resume), and the GRAIN objective on synthetic shapes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ex2.cli import main
from ex2.core.io import read_jsonl, write_jsonl
from ex2.data import concept_names
from ex2.finetune.data import read_grounding, synthetic_grounding
from ex2.finetune.evaluation import evaluate_regions
from ex2.finetune.grain import hungarian_match, match_cost
from ex2.finetune.losses import first_columns, multi_positive_nce, share_gradient, text_ids
from ex2.finetune.model import FinetuneModel, add_lora, merge_lora
from ex2.finetune.stage import FinetuneConfig, run
from ex2.finetune.towers import OpenClipTowers


def _brute_force(cost: torch.Tensor) -> float:
    q, g = cost.shape
    if q >= g:
        return min(sum(cost[p[j], j] for j in range(g)) for p in itertools.permutations(range(q), g)).item()
    return min(sum(cost[i, p[i]] for i in range(q)) for p in itertools.permutations(range(g), q)).item()


def _boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


@pytest.mark.parametrize(("queries", "regions"), [(3, 3), (4, 2), (2, 4), (5, 3)])
def test_hungarian_match_equals_brute_force(queries, regions):
    generator = torch.Generator().manual_seed(queries * 10 + regions)
    for _ in range(5):
        pred, gold = _boxes(queries, generator), _boxes(regions, generator)
        rows, cols = hungarian_match(pred, gold)
        cost = match_cost(pred, gold)
        assert len(rows) == min(queries, regions) and len(set(rows.tolist())) == len(rows)
        assert cost[rows, cols].sum().item() == pytest.approx(_brute_force(cost), abs=1e-5)


def test_hungarian_match_finds_identical_boxes():
    gold = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]])
    pred = torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3], [0.2, 0.2, 0.1, 0.1]])
    rows, cols = hungarian_match(pred, gold)
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 2, 1: 0}


def test_multi_positive_nce_is_clip_loss_with_identity():
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    clip = (torch.nn.functional.cross_entropy(logits, torch.arange(4)) +
            torch.nn.functional.cross_entropy(logits.T, torch.arange(4))) / 2
    assert multi_positive_nce(logits, torch.eye(4)).item() == pytest.approx(clip.item(), rel=1e-5)
    two = torch.tensor([[1, 1, 0, 0]] * 2 + [[0, 0, 1, 1]] * 2)
    assert multi_positive_nce(logits, two) < multi_positive_nce(logits, torch.eye(4)) + 1e-6


def test_merged_lora_computes_what_the_adapters_did(open_clip_dir, tmp_path):
    import open_clip

    torch.manual_seed(0)
    config = FinetuneConfig(output=str(tmp_path), descriptions=__file__)
    clip = add_lora(open_clip.create_model("ex2-tiny-clip").eval(), config, OpenClipTowers.lora_targets)
    trained = [n for n, p in clip.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    tokens, pixels = torch.randint(1, 400, (2, 16)), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = clip.encode_text(tokens)
        for name, param in clip.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B starts at zero: give the adapters an effect
        before = clip.encode_text(tokens), clip.encode_image(pixels)
        merged = merge_lora(clip)
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        after = merged.encode_text(tokens), merged.encode_image(pixels)
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(before[0], base, atol=1e-3)  # the adapters did change the model


@pytest.fixture
def descriptions(tmp_path):
    path = tmp_path / "categories.jsonl"
    records = []
    for name in concept_names("samples"):
        records += [{"concept": name, "description": f"{name} seen up close", "category": "visual"},
                    {"concept": name, "description": f"{name} in the catalogue", "category": "non_visual"}]
    write_jsonl(path, records)
    return path


def _desc_args(open_clip_dir, descriptions, out, steps):
    return ["finetune", "--vlm", str(open_clip_dir), "--dataset", "samples", "--split", "test",
            "--descriptions", str(descriptions), "--categories", "visual", "--objective", "desc",
            "--output", str(out), "--max-steps", str(steps), "--batch-size", "4", "--save-steps", "2",
            "--log-steps", "1", "--device", "cpu", "--learning-rate", "1e-3", "--gradient-accumulation-steps", "2",
            "--lr-schedule", "constant"]  # resume's test compares runs of different lengths


def test_desc_finetune_reloads_and_classifies(open_clip_dir, descriptions, tmp_path, shared_cache):
    out = tmp_path / "ft"
    assert main(_desc_args(open_clip_dir, descriptions, out, 3)) == 0
    log = read_jsonl(out / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    assert {"loss", "desc", "name", "desc_acc", "name_acc"} <= set(log[0])
    assert (out / "loss.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["vlm"] == str((out / "model").resolve()) and provenance["method"] == "lora"

    from ex2.vlm import load_vlm

    tuned, base = load_vlm(str(out / "model"), device="cpu"), load_vlm(f"local-dir:{open_clip_dir}", device="cpu")
    texts = ["a photo of a cat."]
    assert not torch.allclose(tuned.encode_texts(texts), base.encode_texts(texts))  # LoRA was merged in
    assert main(["classify", "--vlm", str(out / "model"), "--dataset", "samples", "--device", "cpu",
                 "--method", "clip", "--output", str(tmp_path / "cls")]) == 0
    assert json.loads((tmp_path / "cls" / "metrics.json").read_text())["n_images"] == 80


def test_desc_resume_continues_at_the_right_step(open_clip_dir, descriptions, tmp_path, shared_cache):
    out = tmp_path / "ft"
    assert main(_desc_args(open_clip_dir, descriptions, out, 2) + ["--method", "full"]) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
    assert main(_desc_args(open_clip_dir, descriptions, out, 4) + ["--method", "full", "--resume"]) == 0
    with pytest.raises(ValueError, match="--resume"):  # a fresh run never mixes with an old one
        run(FinetuneConfig(output=str(out), vlm=str(open_clip_dir), descriptions=str(descriptions)))
    log = read_jsonl(out / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    # a fresh run of 4 steps sees the same batches: the resumed losses match it
    fresh = tmp_path / "fresh"
    assert main(_desc_args(open_clip_dir, descriptions, fresh, 4) + ["--method", "full"]) == 0
    again = read_jsonl(fresh / "log.jsonl")
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in log], rel=1e-3)


def test_first_columns_drop_repeated_texts_of_one_owner():
    owners, ids = torch.tensor([1, 1, 2, 1, 2]), torch.tensor([5, 5, 5, 6, 5])
    assert first_columns(owners, ids).tolist() == [0, 2, 3]
    assert text_ids(["a cat", "a dog", "a cat"]).tolist()[::2] == [text_ids(["a cat"]).item()] * 2


def test_share_gradient_keeps_the_value_and_divides_the_gradient():
    scale = torch.tensor(3.0, requires_grad=True)
    shared = share_gradient(scale, 4)
    (shared * 2).backward()
    assert shared.item() == pytest.approx(3.0) and scale.grad.item() == pytest.approx(0.5)


class _Towers:
    """The least a FinetuneModel needs to contrast features: a scale and no bias."""

    @staticmethod
    def logit_scale(model):
        return model.logit_scale.exp()

    @staticmethod
    def logit_bias(model):
        return None


def _contrast_case():
    """(model, image inputs, labels, text inputs, owners, ids) of a two-process split and one-process whole."""
    torch.manual_seed(0)
    clip = torch.nn.Module()
    clip.image, clip.text, clip.logit_scale = torch.nn.Linear(4, 3), torch.nn.Linear(5, 3), torch.nn.Parameter(torch.tensor(1.0))
    x, labels = torch.randn(6, 4), torch.tensor([0, 1, 0, 2, 1, 2])
    y = torch.randn(3, 5)  # the texts of classes 0, 1, 2
    split = {0: (slice(0, 2), [0, 1]), 1: (slice(2, 6), [2, 1])}  # class 1's text is on both processes
    return FinetuneModel(clip, _Towers()), x, labels, y, split


def _contrast(model, x, labels, y, classes):
    images = torch.nn.functional.normalize(model.clip.image(x), dim=-1)
    texts = torch.nn.functional.normalize(model.clip.text(y[classes]), dim=-1)
    owners = torch.tensor(classes)
    return model.contrast(images, texts, labels, owners, owners + 100)


def _contrast_worker(rank: int, init: str, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    model, x, labels, y, split = _contrast_case()
    rows, classes = split[rank]
    loss, backward, _ = _contrast(model, x[rows], labels[rows], y, classes)
    backward.backward()
    grads = [p.grad for p in model.parameters()]
    for grad in grads:  # what DDP does
        dist.all_reduce(grad)
        grad /= 2
    results.put((rank, loss.item(), [g.tolist() for g in grads]))
    dist.destroy_process_group()


def test_contrast_over_two_processes_is_the_one_process_loss_and_gradient(tmp_path):
    import torch.multiprocessing as mp

    model, x, labels, y, _ = _contrast_case()
    loss, backward, _ = _contrast(model, x, labels, y, [0, 1, 2])
    backward.backward()
    expected = [p.grad for p in model.parameters()]
    context = mp.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_contrast_worker, args=(rank, f"file://{tmp_path / 'init'}", results))
               for rank in range(2)]
    for worker in workers:
        worker.start()
    got = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    for _, other_loss, grads in got:
        assert other_loss == pytest.approx(loss.item(), rel=1e-6)
        for grad, want in zip(grads, expected, strict=True):
            assert torch.allclose(torch.tensor(grad), want, atol=1e-6)


@pytest.mark.slow
def test_two_cpu_processes_follow_one_process_at_the_same_global_batch(open_clip_dir, descriptions, tmp_path,
                                                                        shared_cache):
    out, single = tmp_path / "ddp", tmp_path / "single"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--nproc_per_node", "2", "-m", "ex2.cli", *_desc_args(open_clip_dir, descriptions, out, 4)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "provenance.json").read_text())["processes"] == 2
    assert (out / "model" / "open_clip_model.safetensors").is_file()
    # one process with the two processes' batches together: the same images per step, the same loss
    args = _desc_args(open_clip_dir, descriptions, single, 4)
    args[args.index("--batch-size") + 1] = "8"
    assert main(args) == 0
    two, one = read_jsonl(out / "log.jsonl"), read_jsonl(single / "log.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # one writer, not two
    print("loss, 1 process x 8 images:", [r["loss"] for r in one], "2 processes x 4:", [r["loss"] for r in two])
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-3)
    assert [r["desc_acc"] for r in two] == pytest.approx([r["desc_acc"] for r in one], abs=1e-6)


DEEPSPEED_ON_CPU = """\
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: {stage}
  offload_optimizer_device: none
  offload_param_device: none
  zero3_init_flag: false
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
use_cpu: true
rdzv_backend: static
same_network: true
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_follows_one_process_and_saves_a_model_classify_loads(stage, open_clip_dir, descriptions,
                                                                        tmp_path, shared_cache):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'ex2[deepspeed]')")
    config = tmp_path / "deepspeed.yaml"
    config.write_text(DEEPSPEED_ON_CPU.format(stage=stage))
    out, single = tmp_path / "deepspeed", tmp_path / "single"
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    command = [accelerate, "launch", "--config_file", str(config), "-m", "ex2.cli",
               *_desc_args(open_clip_dir, descriptions, out, 4)]
    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "DS_ACCELERATOR": "cpu"}  # DeepSpeed's CPU backend, over gloo
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "provenance.json").read_text())["processes"] == 2
    args = _desc_args(open_clip_dir, descriptions, single, 4)
    args[args.index("--batch-size") + 1] = "8"
    assert main(args) == 0
    losses = [[r["loss"] for r in read_jsonl(run / "log.jsonl")] for run in (out, single)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    # the model DeepSpeed trained (its ZeRO-3 shards gathered) loads back and classifies
    assert main(["classify", "--dataset", "samples", "--split", "test", "--vlm", str(out / "model"),
                 "--method", "clip", "--device", "cpu", "--output", str(tmp_path / "classify")]) == 0
    assert json.loads((tmp_path / "classify" / "metrics.json").read_text())["n_images"] > 0


def test_finetune_config_errors(tmp_path):
    with pytest.raises(ValueError, match="--descriptions"):
        FinetuneConfig(output=str(tmp_path), objective="desc")
    with pytest.raises(ValueError, match="--annotations"):
        FinetuneConfig(output=str(tmp_path), objective="grain")
    with pytest.raises(ValueError, match="--output"):
        FinetuneConfig(descriptions="x.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        FinetuneConfig(output=str(tmp_path), descriptions=str(tmp_path / "missing.jsonl"))


def test_read_grounding_checks_boxes(tmp_path):
    path = synthetic_grounding(tmp_path / "set", n=3, size=32)
    records = read_grounding(path)
    assert len(records) == 3 and all(0 <= v <= 1 for r in records for _, box in r.regions for v in box)
    text = path.read_text().splitlines()
    bad = json.loads(text[0])
    bad["regions"][0]["box"] = [10, 10, 5, 40]
    path.write_text("\n".join([json.dumps(bad), *text[1:]]) + "\n")
    with pytest.raises(ValueError, match="line 1.*box"):
        read_grounding(path)


def _grain_config(open_clip_dir, annotations, out, steps, **extra) -> FinetuneConfig:
    options = {"method": "full", "max_steps": steps, "batch_size": 8, "save_steps": steps, "log_steps": 1,
               "device": "cpu", "learning_rate": 1e-3, "head_learning_rate": 1e-3, "queries": 4, **extra}
    return FinetuneConfig(output=str(out), objective="grain", vlm=str(open_clip_dir), annotations=str(annotations),
                          **options)


@pytest.mark.parametrize("ours", [False, True], ids=["grain", "ex2"])
def test_grain_objective_runs_and_loss_decreases(ours, open_clip_dir, tmp_path):
    annotations = synthetic_grounding(tmp_path / "set", n=8, size=32)
    extra = {"decoder": "ex2", "duplicates": "merged", "box_l1_weight": 1.25, "box_giou_weight": 2.0} if ours else {}
    out = _grain_config(open_clip_dir, annotations, tmp_path / "grain", 4, **extra)
    run(out)
    log = read_jsonl(tmp_path / "grain" / "log.jsonl")
    assert {"box_l1", "box_giou", "region_text", "caption", "region_acc"} <= set(log[0])
    assert log[-1]["loss"] < log[0]["loss"]
    scores = evaluate_regions(tmp_path / "grain", annotations)
    assert scores["regions"] == sum(len(r.regions) for r in read_grounding(annotations))
    assert 0 <= scores["region_top1"] <= 1 and 0 <= scores["mean_iou"] <= 1


@pytest.mark.slow
def test_grain_learns_held_out_regions(open_clip_dir, tmp_path):
    train = synthetic_grounding(tmp_path / "train", n=96, size=32, seed=1)
    held_out = synthetic_grounding(tmp_path / "held_out", n=24, size=32, seed=2)
    out = tmp_path / "grain"
    run(_grain_config(open_clip_dir, train, out, 100, log_steps=10, save_steps=1000))
    log = read_jsonl(out / "log.jsonl")
    after = evaluate_regions(out, held_out)
    print(f"grain, 100 steps: loss {log[0]['loss']:.3f} -> {log[-1]['loss']:.3f}; held-out region->description "
          f"top-1 {after['region_top1']:.3f} (chance {after['chance_top1']:.3f}), mean IoU {after['mean_iou']:.3f}")
    assert log[-1]["loss"] < log[0]["loss"]
    assert log[-1]["box_l1"] < log[0]["box_l1"]
    assert after["region_top1"] > 3 * after["chance_top1"] and after["mean_iou"] > 0.3


@pytest.mark.parametrize("field, value, message", [
    ("image", 7, "'image' must be the path of an image file, got 7"),
    ("image", "notes.txt", "cannot be read as an image"),
    ("caption", ["a", "b"], "'caption' must be a string"),
])
def test_an_annotation_that_cannot_be_an_image_names_its_line(tmp_path, field, value, message):
    path = synthetic_grounding(tmp_path / "set", n=2, size=32)
    (path.parent / "notes.txt").write_text("not an image\n")
    lines = path.read_text().splitlines()
    bad = {**json.loads(lines[1]), field: value}
    path.write_text("\n".join([lines[0], json.dumps(bad)]) + "\n")
    with pytest.raises(ValueError) as err:
        read_grounding(path)
    assert str(err.value).startswith(f"{path} line 2: ") and message in str(err.value)


@pytest.mark.parametrize("flag, value", [("--learning-rate", "-1"), ("--learning-rate", "nan"),
                                         ("--head-learning-rate", "0"), ("--weight-decay", "-0.1")])
def test_a_rate_that_cannot_train_is_refused_up_front(open_clip_dir, descriptions, tmp_path, capsys, flag, value):
    out = tmp_path / "ft"
    argv = _desc_args(open_clip_dir, descriptions, out, 2)
    at = argv.index("--learning-rate")
    argv = [*argv[:at], *argv[at + 2:], flag, value]  # each flag given once
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and f"{flag} must be" in capsys.readouterr().err and not out.exists()


def test_a_damaged_newest_checkpoint_is_skipped_and_removed(open_clip_dir, descriptions, tmp_path, shared_cache,
                                                            capsys):
    out = tmp_path / "ft"
    assert main(_desc_args(open_clip_dir, descriptions, out, 4) + ["--method", "full"]) == 0
    newest = out / "checkpoints" / "step-0000004"
    weights = next(newest.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # torn
    capsys.readouterr()
    assert main(_desc_args(open_clip_dir, descriptions, out, 5) + ["--method", "full", "--resume"]) == 0
    printed = capsys.readouterr()
    assert f"skipping {newest}: {weights.relative_to(newest)} is torn" in printed.out + printed.err
    assert "Traceback" not in printed.err
    assert [r["step"] for r in read_jsonl(out / "log.jsonl")] == [1, 2, 3, 4, 5]


def test_a_second_finetune_into_one_output_is_refused(open_clip_dir, descriptions, tmp_path, capsys, lock_holder):
    out = tmp_path / "ft"
    pid = lock_holder(out, "ex2 finetune")
    assert main(_desc_args(open_clip_dir, descriptions, out, 2)) == 1
    err = capsys.readouterr().err
    assert f"{out} is being written by pid {pid}" in err and not (out / "log.jsonl").exists()
