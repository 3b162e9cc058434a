"""``ex2 train`` on a tiny random-init Llama and a tiny random-init CLIP: run folder, resume after
SIGTERM and SIGKILL, RLOO, and two CPU processes under ``accelerate launch``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ex2.cli import main
from ex2.core.config import ConfigError
from ex2.core.io import read_jsonl
from ex2.train.stage import (
    TrainConfig,
    build_trainer,
    lora_config,
    parse_args,
    prompt_dataset,
    prompt_records,
    quantization_config,
    split_templates,
    trainer_config,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_clip(hf_clip_dir) -> Path:
    """A transformers CLIP folder with a character vocabulary and 32-pixel images (test_vlm's)."""
    return hf_clip_dir


def train_argv(llm: Path, vlm: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--llm", str(llm), "--vlm", str(vlm), "--dataset", "samples", "--reward", "ex2",
            "--images-per-class", "2", "--batch-size", "4", "--num-generations", "4",
            "--max-completion-length", "6", "--heldout-templates", "2", "--eval-samples", "1",
            "--learning-rate", "1e-2", "--output", str(output), *extra]


def reference_samples(llm: Path, adapter: Path | None, queries: list[str], max_new_tokens: int,
                      text: str = "raw") -> list[str]:
    """What ``ex2.llm.samplers`` draws for these queries (chat format, query ``i`` seeded with ``i``), as
    the reward scores it (``text``: EX2's raw completion, or its first paragraph)."""
    from ex2.core.text import scored_text
    from ex2.llm.models import format_prompt
    from ex2.llm.samplers import SamplingSettings, TransformersSampler, encode_prompts

    sampler = TransformersSampler(str(llm), adapter, SamplingSettings(max_new_tokens=max_new_tokens), device="cpu")
    prompts = [format_prompt(sampler.tokenizer, query, "chat") for query in queries]
    raws = sampler.generate(encode_prompts(sampler.tokenizer, prompts, "chat"), list(range(len(queries))))
    special = list(sampler.tokenizer.all_special_tokens)
    return [scored_text(raw, text, special) for raw in raws]


def subprocess_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, EX2_CACHE=str(cache), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def wait_for(predicate, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"training exited early with {process.returncode}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for training")
        time.sleep(0.5)


def global_step(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


# --- pure pieces ---------------------------------------------------------------------------------


def test_prompts_carry_the_concept_in_both_formats():
    base = prompt_records(["cat", "rocket"], ["Describe a {}.", "What is a {}?"], "base")
    chat = prompt_records(["cat", "rocket"], ["Describe a {}."], "chat")
    assert base[0]["prompt"] == "Describe a cat.\n\n" and base[3]["concept"] == "rocket"
    assert chat[1] == {"prompt": [{"role": "user", "content": "Describe a rocket."}], "concept": "rocket",
                       "concept_id": 1, "query": "Describe a rocket."}
    templates = [f"t{i} {{}}" for i in range(25)]
    train, heldout = split_templates(templates, 5, seed=0)
    assert len(heldout) == 5 and not set(train) & set(heldout) and split_templates(templates, 5, 0) == (train, heldout)
    with pytest.raises(ValueError, match="at least one must train"):
        split_templates(templates[:2], 2)


def test_lora_targets_per_architecture():
    assert sorted(lora_config("llama").target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert lora_config("gpt2").target_modules is None  # peft's default for the architecture
    custom = lora_config("mistral", r=8, alpha=16, target_modules=["q_proj", "v_proj"])
    assert (custom.r, custom.lora_alpha, sorted(custom.target_modules)) == (8, 16, ["q_proj", "v_proj"])


def test_quantization_computes_in_the_run_precision():
    pytest.importorskip("bitsandbytes")
    assert quantization_config(TrainConfig()) is None
    four = quantization_config(TrainConfig(quantization="4bit", precision="bf16"))
    assert four.load_in_4bit and four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config(TrainConfig(quantization="8bit")).load_in_8bit


def test_config_errors_say_how_to_fix():
    # trl's rule: the global batch (per device x processes x steps per generation) holds whole groups
    with pytest.raises(ValueError, match=r"generation_batch_size \(6\) must be divisible by num_generations \(4\)"):
        trainer_config(TrainConfig(), per_device_train_batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="at least 2"):
        trainer_config(TrainConfig(), num_generations=1, per_device_train_batch_size=4)
    with pytest.raises(ConfigError, match="--algorithm must be one of grpo, rloo"):
        TrainConfig(algorithm="ppo")


def test_python_api_keeps_ex2_defaults_and_takes_any_trl_field():
    from trl import GRPOConfig, RLOOConfig

    args = trainer_config(TrainConfig(), max_steps=7, warmup_steps=0.1)
    assert isinstance(args, GRPOConfig) and (args.max_steps, args.warmup_steps) == (7, 0.1)
    assert (args.learning_rate, args.max_completion_length, args.beta, args.loss_type) == (1.41e-5, 32, 0.05, "dapo")
    assert (args.top_k, args.top_p, args.temperature, args.num_generations, args.save_steps) == (0, 1.0, 1.0, 8, 20)
    assert args.use_cpu is not torch.cuda.is_available() and args.remove_unused_columns is False
    assert isinstance(trainer_config(TrainConfig(algorithm="rloo")), RLOOConfig)


def test_every_trl_field_is_a_flag_or_yaml_key(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("llm: some/model\nbatch-size: 4\nnum_generations: 4\nlr_scheduler_type: cosine\n"
                    "output: runs/x\n")
    config, args = parse_args(["--config", str(path), "--warmup-steps", "0.1", "--mask-truncated-completions",
                               "--max_steps", "3", "--lr-scheduler-type", "constant", "-o", "runs/y"], "ex2 train")
    assert config.llm == "some/model" and args.per_device_train_batch_size == 4
    assert (args.warmup_steps, args.mask_truncated_completions, args.max_steps) == (0.1, True, 3)
    assert (args.lr_scheduler_type.value, args.output_dir) == ("constant", "runs/y")  # flags override YAML
    path.write_text("max_completion_length: 9\n")
    assert parse_args(["--config", str(path)], "ex2 train")[1].max_completion_length == 9
    config, args = parse_args(["--algorithm", "rloo", "--batch-size", "4", "--num-generations", "4"], "ex2 train")
    assert type(args).__name__ == "RLOOConfig" and args.learning_rate == 1.41e-5


def test_unknown_yaml_key_is_an_error_naming_the_file(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text("max_stepz: 3\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)], "ex2 train")
    err = capsys.readouterr().err
    assert "max_stepz" in err and str(path) in err


def test_the_global_batch_must_hold_whole_groups(capsys):
    # 6 per device is no multiple of 4, but 6 x 2 accumulation steps is: trl accepts it, so do we
    _, args = parse_args(["--batch-size", "6", "--num-generations", "4", "--gradient-accumulation-steps", "2"],
                         "ex2 train")
    assert args.generation_batch_size == 12
    with pytest.raises(SystemExit):
        parse_args(["--batch-size", "6", "--num-generations", "4"], "ex2 train")
    assert "generation_batch_size (6) must be divisible by num_generations (4)" in capsys.readouterr().err


def test_lora_training_moves_the_adapter_and_freezes_the_base(tiny_llm, tiny_clip, tmp_path, tmp_cache):
    from ex2.data import load_dataset
    from ex2.llm.models import load_tokenizer
    from ex2.reward.registry import build_reward
    from ex2.vlm import load_vlm

    config = TrainConfig(llm=str(tiny_llm), vlm=str(tiny_clip), images_per_class=2)
    args = trainer_config(config, output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                          num_generations=4, max_completion_length=6, learning_rate=1e-2, save_strategy="no")
    dataset = load_dataset("samples")
    reward = build_reward("ex2", load_vlm(str(tiny_clip)), dataset, 2)
    tokenizer = load_tokenizer(str(tiny_llm))
    trainer = build_trainer(config, args, reward, prompt_dataset(dataset.classnames, ["Describe a {}."], "chat"),
                            tokenizer, [])
    before = {name: tensor.clone() for name, tensor in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    lora = [name for name in before if "lora_" in name]
    assert lora and all(not after[name].requires_grad for name in before if name not in lora)
    assert any(not torch.equal(before[name], after[name]) for name in lora)
    for name in before:
        if name not in lora:
            assert torch.equal(before[name], after[name]), f"base weight {name} changed"


# --- training through the CLI --------------------------------------------------------------------


def test_train_writes_a_complete_run_folder(tiny_llm, tiny_clip, tmp_path, tmp_cache, capsys):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    assert main(train_argv(tiny_llm, tiny_clip, run, "--max-steps", "2", "--save-steps", "1")) == 0
    for name in ("config.yaml", "log.jsonl", "reward_curve.png", "eval.json", "adapter/adapter_config.json",
                 "checkpoint-1/adapter_model.safetensors", "checkpoint-2/trainer_state.json"):
        assert (run / name).is_file(), name
    log = read_jsonl(run / "log.jsonl", required=("step", "reward", "reward_std", "kl", "samples"))
    assert [r["step"] for r in log] == [1, 2] and len(log[0]["samples"]) == 4
    assert {"concept", "text", "reward"} <= set(log[0]["samples"][0])
    lora_b = [t for k, t in load_file(run / "adapter/adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # the adapter moved away from its zero init
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["prompts"] == 2 * 8 and "base_mean_reward" in evaluation
    difference = evaluation["reward_difference"]  # trained - base over the same prompts, with its interval
    assert difference["estimate"] == pytest.approx(evaluation["trained_mean_reward"] - evaluation["base_mean_reward"])
    assert difference["low"] <= difference["estimate"] <= difference["high"]
    assert evaluation["base_mean_reward_low"] <= evaluation["base_mean_reward"] <= evaluation["base_mean_reward_high"]
    assert evaluation["scored_text"] == "raw"  # the held-out evaluation scores what training scored
    # the evaluation samples with ex2's one sampler: base = the model without the adapter, same seeds
    queries = [sample["query"] for sample in evaluation["samples"]]
    for key, adapter in (("base", None), ("trained", run / "adapter")):
        expected = reference_samples(tiny_llm, adapter, queries, max_new_tokens=6)
        assert [sample[key] for sample in evaluation["samples"]] == expected, key
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["llm"] == str(tiny_llm) and saved["per_device_train_batch_size"] == 4 and saved["max_steps"] == 2
    assert "use_cpu" not in saved and not any(key.endswith("_token") for key in saved)
    config, args = parse_args(["--config", str(run / "config.yaml")], "ex2 train")  # enough to rerun
    assert (args.max_steps, args.save_steps, args.learning_rate, config.eval_samples) == (2, 1, 1e-2, 1)
    # an existing run is never overwritten silently
    assert main(train_argv(tiny_llm, tiny_clip, run, "--max-steps", "2")) == 1
    assert "--resume" in capsys.readouterr().err


def test_rloo_and_base_prompt_format(tiny_llm, tiny_clip, tmp_path, tmp_cache):
    run = tmp_path / "rloo"
    argv = train_argv(tiny_llm, tiny_clip, run, "--max-steps", "1", "--algorithm", "rloo",
                      "--prompt-format", "base", "--eval-samples", "0")
    assert main(argv) == 0
    assert (run / "adapter/adapter_model.safetensors").is_file() and not (run / "eval.json").exists()


def test_sigterm_saves_and_sigkill_loses_at_most_one_interval(tiny_llm, tiny_clip, tmp_path, tmp_cache):
    run = tmp_path / "killed"
    argv = [sys.executable, "-m", "ex2.cli", *train_argv(tiny_llm, tiny_clip, run, "--max-steps", "6",
                                                         "--save-steps", "3", "--eval-samples", "0")]
    env = subprocess_env(tmp_cache)

    def start(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([*argv, *extra], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    def logged_steps() -> list[int]:
        path = run / "log.jsonl"
        return [r["step"] for r in read_jsonl(path, tolerate_torn_tail=True)] if path.is_file() else []

    # SIGTERM after the first step: a checkpoint of that step is written before exiting
    first = start()
    wait_for(lambda: logged_steps(), first)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM
    saved = [p.name for p in run.glob("checkpoint-*")]
    assert len(saved) == 1 and global_step(run / saved[0]) == int(saved[0].split("-")[1])
    # resume, then SIGKILL once the step-3 checkpoint is complete
    second = start("--resume")
    wait_for(lambda: (run / "checkpoint-3" / "trainer_state.json").is_file(), second)
    second.kill()
    second.wait(timeout=60)
    # resume again: it finishes, keeps the earlier checkpoints, and logs every step once
    assert main([*argv[3:], "--resume"]) == 0
    assert global_step(run / "checkpoint-6") == 6
    assert (run / "checkpoint-3").is_dir() and (run / saved[0]).is_dir()
    assert logged_steps() == [1, 2, 3, 4, 5, 6]


def test_two_cpu_processes_with_accelerate(tiny_llm, tiny_clip, tmp_path, tmp_cache):
    run = tmp_path / "ddp"
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
               str(REPO / "configs/accelerate/cpu_2proc.yaml"), "-m", "ex2.cli",
               *train_argv(tiny_llm, tiny_clip, run, "--max-steps", "2", "--eval-samples", "0")]
    done = subprocess.run(command, env=subprocess_env(tmp_cache), cwd=REPO, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((run / "checkpoint-2/trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [r["step"] for r in read_jsonl(run / "log.jsonl")] == [1, 2]  # one writer, not two
    assert (run / "adapter/adapter_model.safetensors").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_on_cuda(bits, tiny_llm, tiny_clip, tmp_path, tmp_cache):
    pytest.importorskip("bitsandbytes")
    run = tmp_path / bits
    assert main(train_argv(tiny_llm, tiny_clip, run, "--max-steps", "1", "--quantization", bits,
                           "--eval-samples", "0")) == 0
    assert (run / "adapter/adapter_model.safetensors").is_file()


def test_yaml_values_of_trl_fields_are_type_checked_naming_the_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("batch_size: 2.5\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)], "ex2 train")
    message = capsys.readouterr().err
    assert str(path) in message and "per_device_train_batch_size" in message and "an integer" in message


def test_output_under_a_file_is_refused_before_anything_loads(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = TrainConfig(llm=str(tmp_path / "no-such-llm"))
    with pytest.raises(ValueError, match="is a file"):
        from ex2.train.stage import run

        run(config, trainer_config(config, output_dir=str(blocker / "run")))
    assert not (blocker.parent / "run").exists()


def test_report_to_tensorboard_writes_event_files_in_the_run_folder(tiny_llm, tiny_clip, tmp_path, tmp_cache):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    argv = train_argv(tiny_llm, tiny_clip, run, "--max-steps", "2", "--eval-samples", "0",
                      "--report-to", "tensorboard")
    assert main(argv) == 0
    events = list(run.rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


def test_tensorboard_shows_each_step_once_after_a_kill_and_resume(tiny_llm, tiny_clip, tmp_path, tmp_cache):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    argv = train_argv(tiny_llm, tiny_clip, run, "--max-steps", "3", "--save-steps", "2", "--eval-samples", "0",
                      "--report-to", "tensorboard", "--logging-steps", "1")
    assert main(argv) == 0
    # as if killed after step 3 was logged but before its checkpoint was written
    shutil.rmtree(run / "checkpoint-3", ignore_errors=True)
    shutil.rmtree(run / "adapter")
    assert main([*argv, "--resume"]) == 0
    assert len(list((run / "runs").glob("events.out.tfevents.*"))) >= 2  # both runs wrote into one folder
    events = EventAccumulator(str(run / "runs")).Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 2, 3]


def test_unknown_report_to_is_a_one_line_error_before_anything_loads(tmp_path, capsys):
    run = tmp_path / "run"
    argv = train_argv(tmp_path / "no-such-llm", tmp_path / "no-such-vlm", run, "--report-to", "mlflowx")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mlflowx" in err and "tensorboard" in err
    assert not run.exists()


def test_wandb_and_trackio_stay_offline_unless_the_user_chose(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ex2.train.stage import reporting_environment

    for name in ("WANDB_MODE", "WANDB_DIR", "TRACKIO_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())  # as if both were installed
    monkeypatch.setenv("WANDB_MODE", "online")
    set_here = reporting_environment(SimpleNamespace(report_to=["wandb", "trackio"]), tmp_path)
    assert set_here == {"WANDB_DIR": str(tmp_path), "TRACKIO_DIR": str(tmp_path / "trackio")}
    assert os.environ["WANDB_MODE"] == "online"  # the user's choice stands
    monkeypatch.delenv("WANDB_MODE")
    assert reporting_environment(SimpleNamespace(report_to=["wandb"]), tmp_path) == {"WANDB_MODE": "offline"}
    assert reporting_environment(SimpleNamespace(report_to=[]), tmp_path) == {}


@pytest.mark.parametrize("steps", ["0", "-2"])
def test_a_budget_of_no_updates_is_refused_before_anything(tiny_llm, tiny_clip, tmp_path, capsys, steps):
    run = tmp_path / "run"
    assert main(train_argv(tiny_llm, tiny_clip, run, "--max-steps", steps)) == 1
    err = capsys.readouterr().err
    assert f"--max-steps {steps} makes no optimizer update" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_heldout_intervals_resample_prompts_with_all_their_samples():
    from ex2.train.evaluation import heldout_intervals

    base, trained = [10.0, 12.0, 20.0, 22.0, 15.0, 15.0], [11.0, 13.0, 25.0, 27.0, 15.0, 16.0]
    found = heldout_intervals(base, trained, ["a", "a", "b", "b", "c", "c"])  # three prompts, two samples each
    assert found["reward_difference"]["estimate"] == pytest.approx(13 / 6)
    # three prompts give three per-prompt differences, 1, 5 and 0.5: the interval lies among their means
    assert 0.5 <= found["reward_difference"]["low"] < found["reward_difference"]["high"] <= 5.0
    assert "clusters" in found["reward_difference"]["method"]
    assert found["base_mean_reward_low"] < found["base_mean_reward_high"]
