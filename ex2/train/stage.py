"""``ex2 train``: RL-align a LoRA adapter on an LLM so its descriptions score high under a VLM reward.

The policy is trained with trl's ``GRPOTrainer`` (or ``RLOOTrainer``) against a reward from
:mod:`ex2.reward` (by name, :mod:`ex2.reward.registry`); prompts are concepts × query templates, and some templates can be held out to
measure the reward before and after training. On the embedded default, on a laptop CPU::

    ex2 train --dataset samples --vlm conse --llm smollm2 --reward ex2 --max-steps 20 --output runs/demo
    ex2 train ... --output runs/demo --resume          # continue from the newest complete checkpoint
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m ex2.cli train --config configs/train_ex2_pets.yaml

Its options are ex2's own (:class:`TrainConfig`: data, reward, templates, LoRA, ...) beside every
field of trl's ``GRPOConfig`` (or ``RLOOConfig`` with ``--algorithm rloo``), parsed together as trl's
own scripts do: any trl option works as a flag or YAML key, with EX2's defaults where they differ
(:data:`EX2_TRAINER_DEFAULTS`). From Python::

    config = TrainConfig(llm="smollm2", reward="ex2")
    run(config, trainer_config(config, max_steps=20, output_dir="runs/demo"))

The run folder holds ``config.yaml`` (ex2's settings and trl's that were set; ``--config`` reruns
it), ``checkpoint-N/`` (PEFT adapter + optimizer + trainer state, every ``save_steps``),
``log.jsonl`` (one record per step: reward mean/std, KL, sampled completions),
``reward_curve.png``, ``eval.json`` (held-out templates, base vs. trained, sampled with
:mod:`ex2.llm.samplers`) and the final adapter in ``adapter/`` (what ``ex2 generate --adapter`` takes).
``--report-to tensorboard|wandb|trackio`` also logs to that tracker, offline and inside the run
folder unless its own environment variables say otherwise (:func:`reporting_environment`).

How EX2's PPO settings (trl 0.7 ``PPOTrainer`` with a value head) map onto ours
------------------------------------------------------------------------------
=====================================  ===========================================================
EX2 (PPO)                              ex2 train (GRPO / RLOO)
=====================================  ===========================================================
``ppo_epochs=4``                       ``--num-iterations 4`` (optimisation passes per generation)
``cliprange=0.2`` (trl default)        ``--epsilon 0.2`` (clipped surrogate)
``init_kl_coef=0.2``, adaptive, in     ``--beta`` (KL to the reference in the loss; fixed; the
the reward                             reference is the base model with the adapter switched off)
value head + GAE (``cliprange_value``,  none: advantages are group-relative over ``--num-generations``
``vf_coef``, ``gamma``, ``lam``)       samples per query, which also removes the per-concept reward
                                       offset the value head had to learn
``batch_size=32`` queries × 1 sample   ``--generation-batch-size 32`` completions per generation,
                                       ``--num-generations`` (at least 2) of them per query
``mini_batch_size=1``,                 ``--per-device-train-batch-size 1``,
``gradient_accumulation_steps=8``      ``--gradient-accumulation-steps 8`` (one update per 8)
``learning_rate=1.41e-5``              ``--learning-rate``
``steps=1000`` batches, 16 updates     ``--max-steps 16000``: optimizer updates, not PPO batches;
each (16,000 on 32,000 completions)    with the rows above, 1000 generations of 32 completions
``max_new_tokens=32``, ``top_k=0``,    ``--max-completion-length 32``, top_k 0, top_p 1,
``top_p=1.0``, sampling                ``--temperature 1``
LoRA r=16, α=32, dropout 0.05          ``--lora-r 16 --lora-alpha 32 --lora-dropout 0.05`` (EX2 used
                                       peft's default targets, q_proj/v_proj; ours add k/o_proj)
``load_in_8bit=True``                  ``--quantization 8bit`` (bitsandbytes, CPU or CUDA)
``num_images_for_reward=256``          ``--images-per-class 256``
``save_freq=20`` (batches)             ``--save-steps 320`` (updates)
``use_score_scaling/norm=False``       ``--scale-rewards group`` (GRPO's per-group std; ``none``
                                       keeps raw reward differences)
reward of the raw decoded completion   ``--reward-text raw`` (``first-paragraph``: what generate keeps),
(``skip_special_tokens=True``)         ``--empty-reward score`` (``floor``: a floor for empty texts)
EX2's ``mult_template_v1.json``,       ``--templates data_files/mult_template_v1.json``,
``*_class_names.json``                 ``--classnames data_files/pets_class_names.json`` (EX2's files)
=====================================  ===========================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ex2.core.config import (
    ConfigError,
    check_values,
    classnames_option,
    config_to_dict,
    data_root_option,
    dataset_option,
    llm_option,
    option,
    read_yaml_options,
    split_option,
    vlm_option,
)
from ex2.core.devices import accelerate_state_released, dtype_name, resolve_dtype
from ex2.core.io import atomic_write_text, check_output_path, newest_intact
from ex2.core.names import split_dataset_name
from ex2.core.text import SCORED_TEXTS
from ex2.data import load_dataset, load_templates
from ex2.llm.models import load_tokenizer, query_prompt, resolve_llm, resolve_prompt_format
from ex2.llm.samplers import SamplingSettings
from ex2.reward.base import check_empty_reward
from ex2.reward.planted import DEFAULT_PLANTED_BONUS, DEFAULT_PLANTED_TEXT
from ex2.reward.registry import REWARD_NAMES, build_reward, reward_help
from ex2.train.callbacks import JsonlLogger, RewardProgress, StopOnSignal, plot_reward_curve, trim_log
from ex2.train.evaluation import evaluate_heldout
from ex2.vlm import load_vlm

# architecture -> LoRA target modules; other architectures get peft's defaults
LORA_TARGETS: dict[str, list[str]] = {
    name: ["q_proj", "k_proj", "v_proj", "o_proj"]
    for name in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")
}

# EX2's settings where they differ from trl's defaults; the one place they are set. Any other field
# of trl's GRPOConfig / RLOOConfig keeps trl's default and can be set by flag, YAML key or keyword.
EX2_TRAINER_DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/train", "max_steps": 100, "learning_rate": 1.41e-5, "beta": 0.05,
    "per_device_train_batch_size": 8, "num_generations": 8, "loss_type": "dapo", "scale_rewards": "group",
    "max_completion_length": 32, "temperature": 1.0, "top_p": 1.0, "top_k": 0,  # EX2's plain sampling
    "save_strategy": "steps", "save_steps": 20, "logging_steps": 1, "report_to": "none", "disable_tqdm": True,
    "remove_unused_columns": False,  # the reward reads the concept columns
    "gradient_checkpointing": None,  # off, and unset so transformers' renamed flag does not warn
    "seed": 0,
}
# flags (and YAML keys) that ex2 used before it took trl's names -> trl's field
TRAINER_ALIASES: dict[str, str] = {"output": "output_dir", "batch_size": "per_device_train_batch_size"}


@dataclass
class TrainConfig:
    """RL-align a LoRA adapter on an LLM against a VLM reward (trl GRPO or RLOO).

    ex2's own settings; trl's trainer settings are trl's ``GRPOConfig``/``RLOOConfig`` (see
    :func:`trainer_config`)."""

    dataset: str = dataset_option()
    data_root: str | None = data_root_option()
    split: str | None = split_option()
    classnames: str | None = classnames_option()
    vlm: str = vlm_option()
    llm: str = llm_option()
    reward: Literal[REWARD_NAMES] = option("ex2", reward_help())
    planted_text: str = option(DEFAULT_PLANTED_TEXT, "attribute text the planted reward pulls towards")
    planted_keywords: list[str] = option([], "words that earn the planted reward its bonus (whole words)")
    planted_bonus: float = option(DEFAULT_PLANTED_BONUS, "planted reward's bonus for naming a keyword (logit-scale units)")
    reward_text: Literal[SCORED_TEXTS] = option(
        "raw", "scored text of a completion: raw (EX2's: the decoded completion, every paragraph) | first-paragraph")
    empty_reward: str = option(
        "score", "reward of texts without a word: score (the VLM's score of the text, EX2's) | floor | a number")
    images_per_class: int = option(256, "images per concept in the reward (EX2's num_images_for_reward)")
    image_seed: int | None = option(None, "pick reward images at random with this seed (default: first N)")
    templates: str = option("describe25", "query template set or file (one {} per template; EX2's: its data_files/mult_template_v1.json)")
    heldout_templates: int = option(5, "templates held out of training to evaluate base vs. trained")
    prompt_format: Literal["auto", "base", "chat"] = option(
        "auto", "base: EX2's 'query\\n\\n'; chat: the chat template; auto: chat if the model has one")
    algorithm: Literal["grpo", "rloo"] = option("grpo", "trl trainer: grpo (GRPOConfig) or rloo (RLOOConfig)")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_target_modules: list[str] | None = option(None, "LoRA target modules (default: per architecture)")
    quantization: Literal["none", "4bit", "8bit"] = option("none", "QLoRA: base weights in 4 or 8 bits "
                                                                     "(bitsandbytes, CPU or CUDA: pip install 'ex2[quant]')")
    precision: Literal["auto", "fast", "fp32", "bf16", "fp16"] = option(
        "auto", "weights and trl's bf16/fp16 defaults (auto: bf16 on CUDA where supported, else fp16; fp32 on CPU; "
        "fast: bf16 also on CPUs that compute it natively)")
    log_samples: int = option(4, "sampled completions (with rewards) kept per step in log.jsonl")
    eval_samples: int = option(2, "completions per held-out prompt for the base/trained evaluation")
    resume: bool = option(False, "continue from the newest complete checkpoint in the run folder")

    def __post_init__(self) -> None:
        self.dataset, self.data_root = split_dataset_name(self.dataset, self.data_root)
        for name in ("images_per_class", "lora_r"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.heldout_templates < 0 or self.eval_samples < 0 or self.log_samples < 0:
            raise ConfigError("--heldout-templates, --eval-samples and --log-samples must not be negative")
        try:
            check_empty_reward(self.empty_reward)
        except ValueError as err:
            raise ConfigError(f"--empty-reward: {err}") from None
        for name in ("reward", "reward_text", "prompt_format", "algorithm", "quantization", "precision"):
            allowed = typing.get_args(typing.get_type_hints(TrainConfig)[name])
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")


# --- trl's config ----------------------------------------------------------------------------------

def trainer_class(algorithm: str) -> type:
    """trl's ``GRPOConfig`` or ``RLOOConfig``."""
    if algorithm == "rloo":
        from trl import RLOOConfig

        return RLOOConfig
    from trl import GRPOConfig

    return GRPOConfig


def trainer_defaults(config: TrainConfig) -> dict[str, Any]:
    """EX2's trl settings for ``config.algorithm`` (fields the class lacks dropped), with the device's:
    CPU-only without CUDA, mixed precision and model weights per ``config.precision``."""
    import torch

    dtype = resolve_dtype(config.precision)
    device = {"use_cpu": not torch.cuda.is_available(), "bf16": dtype == torch.bfloat16,
              "fp16": dtype == torch.float16, "model_init_kwargs": {"dtype": dtype_name(dtype)}}
    names = {f.name for f in dataclasses.fields(trainer_class(config.algorithm))}
    return {k: v for k, v in {**EX2_TRAINER_DEFAULTS, **device}.items() if k in names}


def trainer_config(config: TrainConfig, **settings: Any):
    """trl's ``GRPOConfig`` (or ``RLOOConfig``) for ``config``: EX2's defaults, then ``settings``
    (any field of trl's config, e.g. ``max_steps=20, output_dir="runs/x"``). trl validates it."""
    return trainer_class(config.algorithm)(**{**trainer_defaults(config), **settings})


def trainer_settings(config: TrainConfig, args) -> dict[str, Any]:
    """The trl fields a run set (EX2's defaults and every value that differs from them), as YAML-ready
    data: enough to rebuild ``args`` with :func:`trainer_config`. Tokens are never included."""
    given, reference = args.to_dict(), trainer_config(config, output_dir=args.output_dir).to_dict()
    defaults = trainer_defaults(config)  # the device's settings are left to the machine that reruns it
    out = {k: v for k, v in defaults.items() if k in EX2_TRAINER_DEFAULTS and given.get(k) == reference.get(k)}
    out.update({k: v for k, v in given.items() if v != reference.get(k) or k == "output_dir"})
    out.pop("generation_batch_size", None)  # trl derives it from steps_per_generation
    # None leaves a field to trl's default (and is no value its type check accepts on rerun)
    return {k: v for k, v in out.items() if v is not None and not k.endswith("_token")}


def training_budget(args) -> dict[str, int]:
    """By trl's GRPO arithmetic, what ``args`` makes: ``updates`` (optimizer steps, ``max_steps``),
    ``generations`` (one every ``steps_per_generation × num_iterations`` micro-batches, of
    ``generation_batch_size`` completions across processes) and ``completions``."""
    micro_batches = args.max_steps * args.gradient_accumulation_steps
    every = args.steps_per_generation * getattr(args, "num_iterations", 1)
    generations = -(-micro_batches // every)
    return {"updates": args.max_steps, "generations": generations,
            "completions": generations * args.generation_batch_size}


def check_budget(args) -> None:
    """Refuse a run that would make no optimizer update (trl would still take a step and save)."""
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"--max-steps {args.max_steps} makes no optimizer update: give 1 or more "
                         "(or -1 to train --num-train-epochs epochs)")


def save_run_config(config: TrainConfig, args, run_dir: Path) -> Path:
    """``RUN/config.yaml``: ex2's settings and trl's that were set; ``ex2 train --config`` reruns it."""
    path = run_dir / "config.yaml"
    data = {**config_to_dict(config), **trainer_settings(config, args)}
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


# --- command line ----------------------------------------------------------------------------------

def _read_yaml(path: str) -> dict[str, Any]:
    return {TRAINER_ALIASES.get(k, k): v for k, v in read_yaml_options(path).items()}


def _usage(prog: str) -> str:
    return f"{prog} [--config FILE.yaml] [options]   ({prog} --help lists them)"


def build_parser(config: TrainConfig, prog: str = "ex2 train"):
    """ex2's options and every field of trl's config for ``config.algorithm``, with EX2's defaults."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser((TrainConfig, trainer_class(config.algorithm)), prog=prog, usage=_usage(prog),
                              description=(TrainConfig.__doc__ or "").splitlines()[0])
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of defaults; flags override it")
    parser.add_argument("-o", "--output", dest="output_dir", default=argparse.SUPPRESS, help="same as --output-dir")
    parser.add_argument("--batch-size", "--batch_size", dest="per_device_train_batch_size", type=int,
                        default=argparse.SUPPRESS, help="same as --per-device-train-batch-size")
    parser.set_defaults(**trainer_defaults(config))
    return parser


def parse_args(argv: list[str] | None, prog: str = "ex2 train"):
    """``(TrainConfig, GRPOConfig | RLOOConfig)`` from flags and ``--config FILE.yaml`` (defaults that
    flags override). Bad values exit with the parser's usage and trl's or our message."""
    first = argparse.ArgumentParser(prog=prog, usage=_usage(prog), add_help=False, allow_abbrev=False)
    for name in ("config", "algorithm", "precision"):
        first.add_argument(f"--{name}")
    early, _ = first.parse_known_args(argv)
    try:
        values = _read_yaml(early.config) if early.config else {}
        choice = TrainConfig(**{k: v for k in ("algorithm", "precision") if (v := getattr(early, k) or values.get(k))})
    except ConfigError as err:
        first.error(str(err))
    parser = build_parser(choice, prog)
    known = {action.dest for action in parser._actions} - {"config", "help"}
    unknown = sorted(set(values) - known)
    if unknown:
        parser.error(f"config file {early.config}: unknown key(s) {', '.join(unknown)}; "
                     f"valid keys: the flags of {prog} --help, with underscores")
    try:
        for config_cls in (TrainConfig, trainer_class(choice.algorithm)):
            values = check_values(config_cls, values, f"config file {early.config}")
    except ConfigError as err:
        parser.error(str(err))
    parser.set_defaults(**values)
    namespace = vars(parser.parse_args(argv))
    namespace.pop("config")
    ours = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: v for k, v in namespace.items() if k in ours})
        return config, trainer_class(config.algorithm)(**{k: v for k, v in namespace.items() if k not in ours})
    except (ValueError, TypeError) as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


# --- prompts -------------------------------------------------------------------------------------

def split_templates(templates: list[str], heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, held out)``: ``heldout`` templates chosen with ``seed``, both in their file order."""
    if heldout >= len(templates):
        raise ValueError(f"cannot hold out {heldout} of {len(templates)} templates; at least one must train")
    chosen = set(random.Random(seed).sample(range(len(templates)), heldout))
    return ([t for i, t in enumerate(templates) if i not in chosen],
            [t for i, t in enumerate(templates) if i in chosen])


def prompt_records(concepts: list[str], templates: list[str], prompt_format: str) -> list[dict[str, Any]]:
    """One record per (concept, template): a trl ``prompt`` (EX2's base text or chat messages, which
    trl renders with the chat template) plus the columns the reward reads."""
    records = []
    for concept_id, concept in enumerate(concepts):
        for template in templates:
            query = template.format(concept)
            records.append({"prompt": query_prompt(query, prompt_format), "concept": concept,
                            "concept_id": concept_id, "query": query})
    return records


def prompt_dataset(concepts: list[str], templates: list[str], prompt_format: str):
    """A ``datasets.Dataset`` of prompts (EX2's base format, or chat messages) with concept columns."""
    from datasets import Dataset

    return Dataset.from_list(prompt_records(concepts, templates, prompt_format))


# --- model pieces ----------------------------------------------------------------------------------

def lora_config(model_type: str, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                target_modules: list[str] | None = None):
    """EX2's LoRA (r 16, α 32, dropout 0.05) on the attention projections of known architectures."""
    from peft import LoraConfig

    targets = target_modules or LORA_TARGETS.get(model_type)  # None: peft's default for the type
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules=targets)


def quantization_config(config: TrainConfig):
    """bitsandbytes' config for ``--quantization`` (CPU or CUDA), computing in the run's precision."""
    from ex2.core.devices import resolve_dtype
    from ex2.llm.models import quantization_config as bnb_config

    return bnb_config(config.quantization, resolve_dtype(config.precision))


def check_vllm(args) -> None:
    """``--use-vllm`` (trl's in-training generation) needs vLLM and, for now, CUDA: on vLLM's CPU build trl
    1.16 builds the engine, then fails at its first weight sync (the CPU backend repacks linear weights,
    which lose the ``weight_loader`` trl loads through), and trl accepts vLLM 0.22-0.31 only."""
    import importlib.util

    import torch

    if not args.use_vllm:
        return
    if not torch.cuda.is_available():
        raise ValueError("--use-vllm needs a CUDA GPU: on vLLM's CPU build trl's weight sync fails (the CPU backend "
                         "repacks linear weights); train without --use-vllm (trl generates with transformers) "
                         "and sample afterwards with ex2 generate --sampler vllm")
    if importlib.util.find_spec("vllm") is None:
        raise ValueError("--use-vllm needs vLLM: pip install 'ex2[vllm]'")


# experiment trackers ``--report-to`` takes, each kept on this machine -> the package it needs
REPORT_BACKENDS: dict[str, str | None] = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb",
                                          "trackio": "trackio"}


def reporting_environment(args, run_dir: Path) -> dict[str, str]:
    """Check ``--report-to`` and set the trackers' offline settings the user has not set: wandb offline
    (``WANDB_MODE``) with its files in the run folder, trackio's local database under ``RUN/trackio``.
    TensorBoard writes to ``RUN/runs/`` (one folder for a run and its resumptions, so that a resumed
    run's events can hide those a killed run logged past its checkpoint). Returns the variables it set."""
    import importlib.util

    chosen = [args.report_to] if isinstance(args.report_to, str) else list(args.report_to or [])
    for name in chosen:
        if name not in REPORT_BACKENDS:
            raise ValueError(f"--report-to {name!r}: expected one of {', '.join(REPORT_BACKENDS)}")
        package = REPORT_BACKENDS[name]
        if package and importlib.util.find_spec(package) is None:
            extra = "'ex2[tensorboard]'" if name == "tensorboard" else package
            raise ValueError(f"--report-to {name} needs {package}: pip install {extra}")
    wanted = {"wandb": {"WANDB_MODE": "offline", "WANDB_DIR": str(run_dir)},
              "trackio": {"TRACKIO_DIR": str(run_dir / "trackio")}}
    set_here = {k: v for name in chosen for k, v in wanted.get(name, {}).items() if k not in os.environ}
    os.environ.update(set_here)
    return set_here


# --- run -------------------------------------------------------------------------------------------

def checkpoints(run_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders, oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (a file missing, empty or torn by a kill), or None."""
    import json

    checkpoint = Path(checkpoint)
    if not any(checkpoint.iterdir()):
        return "the folder is empty"
    adapters = [checkpoint / name for name in ADAPTER_FILES if (checkpoint / name).exists()]
    if not adapters:
        return f"no adapter weights ({' or '.join(ADAPTER_FILES)})"
    for path in (*(checkpoint / name for name in CHECKPOINT_FILES), adapters[0]):
        if not path.is_file():
            return f"{path.name} is missing"
        if path.stat().st_size == 0:
            return f"{path.name} is empty"
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"trainer_state.json is not valid JSON ({err})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return "trainer_state.json has no global_step"
    if adapters[0].suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(adapters[0]), "pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as err:
            return f"{adapters[0].name} is unreadable ({err})"
    return None


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint; each newer one that is incomplete is skipped with a printed reason."""
    found = newest_intact(checkpoints(run_dir), checkpoint_problem)
    if found is None:
        print(f"no complete checkpoint in {run_dir}; training starts from step 0")
    return found


def prepare_run_dir(config: TrainConfig, args) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to resume from; refuses to overwrite a run without --resume."""
    run_dir = Path(args.output_dir).expanduser()
    found = checkpoints(run_dir) if run_dir.is_dir() else []
    if found and not config.resume:
        raise ValueError(f"{run_dir} already holds {found[-1].name}; pass --resume to continue it "
                         "or choose a new --output")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, (resume_checkpoint(run_dir) if found and config.resume else None)


def place_tensorboard(trainer, run_dir: Path, resumed_step: int) -> None:
    """TensorBoard writes a run and its resumptions to ``RUN/runs``; a resumed writer hides the steps after
    ``resumed_step`` that a killed run logged (TensorBoard's ``purge_step``), so each step is shown once."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback._SummaryWriter is not None:
            callback.logging_dir = str(run_dir / "runs")
            if resumed_step:
                callback.tb_writer = callback._SummaryWriter(log_dir=callback.logging_dir,
                                                             purge_step=resumed_step + 1)


def build_trainer(config: TrainConfig, args, reward, train_data, tokenizer, callbacks: list):
    """The trl trainer, with LoRA applied and our callbacks in place of the default progress output."""
    from transformers import AutoConfig
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    model_path = resolve_llm(config.llm)
    model_type = AutoConfig.from_pretrained(model_path).model_type
    if config.algorithm == "rloo":
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOTrainer as Trainer
    trainer = Trainer(
        model=model_path, reward_funcs=reward, args=args, train_dataset=train_data,
        processing_class=tokenizer, callbacks=callbacks, quantization_config=quantization_config(config),
        peft_config=lora_config(model_type, config.lora_r, config.lora_alpha, config.lora_dropout,
                                config.lora_target_modules),
    )
    for noisy in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(noisy)
    return trainer


def run(config: TrainConfig, args=None) -> Path:
    """Train, save the adapter to ``RUN/adapter`` and evaluate held-out templates; returns the run folder.

    ``args`` is trl's config (:func:`trainer_config`; EX2's defaults when omitted)."""
    with accelerate_state_released():
        return _run(config, trainer_config(config) if args is None else args)


def _run(config: TrainConfig, args) -> Path:
    check_output_path(args.output_dir, "folder")
    check_budget(args)
    check_vllm(args)
    quantization_config(config)  # fail before loading anything
    reporting_environment(args, Path(args.output_dir).expanduser())  # before the run folder is made
    dataset = load_dataset(config.dataset, config.data_root, config.split, config.classnames)
    train_templates, heldout = split_templates(load_templates(config.templates), config.heldout_templates,
                                               args.seed)  # bad data, names or templates: before any file
    run_dir, resume_from = prepare_run_dir(config, args)
    save_run_config(config, args, run_dir)
    if config.algorithm == "grpo" and int(os.environ.get("RANK", "0")) == 0:
        budget = training_budget(args)
        print(f"budget: {budget['updates']} optimizer updates on {budget['completions']} completions "
              f"({budget['generations']} generations)")
    tokenizer = load_tokenizer(config.llm, padding_side="left")
    prompt_format = resolve_prompt_format(tokenizer, config.prompt_format)
    reward = build_reward(config.reward, load_vlm(config.vlm), dataset, config.images_per_class,
                          config.image_seed, config.planted_text, planted_keywords=config.planted_keywords,
                          planted_bonus=config.planted_bonus, text=config.reward_text,
                          empty_reward=config.empty_reward)
    log_path = run_dir / "log.jsonl"
    if int(os.environ.get("RANK", "0")) == 0:  # the main process (set by accelerate/torchrun)
        trim_log(log_path, int(resume_from.name.split("-")[-1]) if resume_from else 0)
    stop = StopOnSignal()
    callbacks = [JsonlLogger(log_path, reward, config.log_samples), RewardProgress(), stop]
    trainer = build_trainer(config, args, reward, prompt_dataset(dataset.classnames, train_templates,
                                                                 prompt_format), tokenizer, callbacks)
    if int(os.environ.get("RANK", "0")) == 0:
        place_tensorboard(trainer, run_dir, int(resume_from.name.split("-")[-1]) if resume_from else 0)
    with stop.installed(signal.SIGTERM):
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stop.received:
        print(f"stopped by signal {stop.received} at step {trainer.state.global_step}; "
              f"checkpoint saved; rerun with --resume to continue")
        raise SystemExit(128 + stop.received)
    trainer.save_model(str(run_dir / "adapter"))  # every process: ZeRO-3 gathers the weights
    if trainer.accelerator.is_main_process:
        plot_reward_curve(log_path, run_dir / "reward_curve.png")
        if heldout and config.eval_samples:
            records = prompt_records(dataset.classnames, heldout, prompt_format)
            evaluate_heldout(trainer.model, tokenizer, records, prompt_format, reward, run_dir / "eval.json",
                             config.eval_samples, sampling_settings(args), args.seed)
    return run_dir


def sampling_settings(args):
    """The sampler settings of training (trl's completion length, temperature, top-p, top-k)."""
    return SamplingSettings(max_new_tokens=args.max_completion_length, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k or 0)
