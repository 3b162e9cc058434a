"""``ex2 train``: RL-align a LoRA adapter on an LLM so its descriptions score high under a VLM reward.

The policy is trained with trl's ``GRPOTrainer`` (or ``RLOOTrainer``) against a reward from
:mod:`ex2.reward`; prompts are concepts × query templates, and some templates can be held out to
measure the reward before and after training. On the embedded default, on a laptop CPU::

    ex2 train --dataset samples --vlm conse --llm smollm2 --reward ex2 --max-steps 20 --output runs/demo
    ex2 train ... --output runs/demo --resume          # continue from the newest checkpoint
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m ex2.cli train --config configs/train_ex2_pets.yaml

The run folder holds ``config.yaml``, ``checkpoint-N/`` (PEFT adapter + optimizer + trainer state,
every ``save_steps``), ``log.jsonl`` (one record per step: reward mean/std, KL, sampled
completions), ``reward_curve.png``, ``eval.json`` (held-out templates, base vs. trained) and the
final adapter in ``adapter/`` (what ``ex2 generate --adapter`` takes).

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
``batch_size=32`` queries × 1 sample   ``--batch-size`` completions per device per step,
                                       ``--num-generations`` of them per query
``mini_batch_size=1``,                 ``--gradient-accumulation-steps`` (trl also generates once
``gradient_accumulation_steps=8``      per that many steps)
``learning_rate=1.41e-5``              ``--learning-rate``
``steps=1000``                         ``--max-steps`` (optimizer steps, not PPO batches)
``max_new_tokens=32``, ``top_k=0``,    ``--max-completion-length 32``, top_k 0, top_p 1,
``top_p=1.0``, sampling                ``--temperature 1``
LoRA r=16, α=32, dropout 0.05          ``--lora-r 16 --lora-alpha 32 --lora-dropout 0.05`` (EX2 used
                                       peft's default targets, q_proj/v_proj; ours add k/o_proj)
``load_in_8bit=True``                  ``--quantization 8bit`` (bitsandbytes, CUDA only)
``num_images_for_reward=256``          ``--images-per-class 256``
``save_freq=20``                       ``--save-steps 20``
``use_score_scaling/norm=False``       ``--scale-rewards group`` (GRPO's per-group std; ``none``
                                       keeps raw reward differences)
=====================================  ===========================================================
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ex2.config import ConfigError, option, save_config
from ex2.reward import DEFAULT_PLANTED_BONUS, DEFAULT_PLANTED_TEXT, REWARDS

# architecture -> LoRA target modules; other architectures get peft's defaults
LORA_TARGETS: dict[str, list[str]] = {
    name: ["q_proj", "k_proj", "v_proj", "o_proj"]
    for name in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")
}


@dataclass
class TrainConfig:
    """RL-align a LoRA adapter on an LLM against a VLM reward (trl GRPO or RLOO)."""

    dataset: str = option("samples", "image dataset whose class names are the concepts (see `ex2 ls`)")
    data_root: str | None = option(None, "folder holding the dataset (not needed for samples)")
    split: str | None = option(None, "dataset split (default: the dataset's usual one)")
    vlm: str = option("conse", "VLM that gives the reward (see `ex2 ls`)")
    llm: str = option("smollm2", "LLM to align: smollm2, a hub id, a folder or a .gguf file")
    reward: Literal[REWARDS] = option("ex2", "reward: ex2 | contrastive | contrastive-softmax | planted")
    planted_text: str = option(DEFAULT_PLANTED_TEXT, "attribute text the planted reward pulls towards")
    planted_keywords: list[str] = option([], "words that earn the planted reward its bonus (whole words)")
    planted_bonus: float = option(DEFAULT_PLANTED_BONUS, "planted reward's bonus for naming a keyword (logit-scale units)")
    images_per_class: int = option(256, "images per concept in the reward (EX2's num_images_for_reward)")
    image_seed: int | None = option(None, "pick reward images at random with this seed (default: first N)")
    templates: str = option("ex2", "query template set or file (one {} per template)")
    heldout_templates: int = option(5, "templates held out of training to evaluate base vs. trained")
    prompt_format: Literal["auto", "base", "chat"] = option(
        "auto", "base: EX2's 'query\\n\\n'; chat: the chat template; auto: chat if the model has one")
    algorithm: Literal["grpo", "rloo"] = option("grpo", "trl trainer: grpo or rloo")
    max_steps: int = option(100, "optimizer steps")
    learning_rate: float = option(1.41e-5, "learning rate (EX2: 1.41e-5)")
    batch_size: int = option(8, "completions per device per step")
    gradient_accumulation_steps: int = option(1, "steps accumulated per optimizer update")
    num_generations: int = option(8, "completions per query; advantages are relative within them")
    num_iterations: int = option(1, "optimisation passes per generated batch (EX2's ppo_epochs: 4)")
    epsilon: float = option(0.2, "clipping range of the surrogate objective")
    beta: float = option(0.05, "KL coefficient to the base model (0 skips the reference pass)")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = option("dapo", "GRPO loss aggregation")
    scale_rewards: Literal["group", "batch", "none"] = option("group", "GRPO reward scaling by std")
    max_completion_length: int = option(32, "new tokens per description (EX2: 32)")
    temperature: float = option(1.0, "sampling temperature")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_target_modules: list[str] | None = option(None, "LoRA target modules (default: per architecture)")
    quantization: Literal["none", "4bit", "8bit"] = option("none", "QLoRA base weights (CUDA + ex2[quant])")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option("auto", "weights/compute (auto: bf16 on CUDA)")
    gradient_checkpointing: bool = option(False, "trade compute for memory (large models)")
    use_vllm: bool = option(False, "generate with vLLM (pip install 'ex2[vllm]')")
    vllm_mode: Literal["colocate", "server"] = option("colocate", "vLLM in the training process or a server")
    vllm_server_base_url: str | None = option(None, "URL of a `trl vllm-serve` server (server mode)")
    save_steps: int = option(20, "save a checkpoint every this many steps (EX2's save_freq)")
    log_samples: int = option(4, "sampled completions (with rewards) kept per step in log.jsonl")
    eval_samples: int = option(2, "completions per held-out prompt for the base/trained evaluation")
    seed: int = option(0, "random seed")
    output: str = option("runs/train", "run folder", short="-o")
    resume: bool = option(False, "continue from the newest checkpoint in the run folder")

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "num_iterations",
                     "max_completion_length", "lora_r", "save_steps", "images_per_class"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ConfigError("--num-generations must be at least 2: advantages compare samples of one query")
        if self.batch_size % self.num_generations:
            raise ConfigError(
                f"--batch-size {self.batch_size} must be a multiple of --num-generations {self.num_generations}")
        if self.heldout_templates < 0 or self.eval_samples < 0 or self.log_samples < 0:
            raise ConfigError("--heldout-templates, --eval-samples and --log-samples must not be negative")
        if self.use_vllm and self.vllm_mode == "server" and not self.vllm_server_base_url:
            self.vllm_server_base_url = "http://localhost:8000"


# --- prompts -------------------------------------------------------------------------------------

def split_templates(templates: list[str], heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, held out)``: ``heldout`` templates chosen with ``seed``, both in their file order."""
    if heldout >= len(templates):
        raise ValueError(f"cannot hold out {heldout} of {len(templates)} templates; at least one must train")
    chosen = set(random.Random(seed).sample(range(len(templates)), heldout))
    return ([t for i, t in enumerate(templates) if i not in chosen],
            [t for i, t in enumerate(templates) if i in chosen])


def resolve_format(tokenizer, prompt_format: str) -> str:
    from ex2.llm import uses_chat_template

    if prompt_format == "auto":
        return "chat" if uses_chat_template(tokenizer) else "base"
    return prompt_format


def prompt_records(concepts: list[str], templates: list[str], prompt_format: str) -> list[dict[str, Any]]:
    """One record per (concept, template): a trl ``prompt`` plus the columns the reward reads."""
    records = []
    for concept_id, concept in enumerate(concepts):
        for template in templates:
            query = template.format(concept)
            prompt = [{"role": "user", "content": query}] if prompt_format == "chat" else query + "\n\n"
            records.append({"prompt": prompt, "concept": concept, "concept_id": concept_id, "query": query})
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


def quantization_config(mode: str):
    """A bitsandbytes config for 4-bit/8-bit QLoRA; CUDA and the ``quant`` extra are required."""
    if mode == "none":
        return None
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"--quantization {mode} needs a CUDA GPU (bitsandbytes); use --quantization none on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ValueError(f"--quantization {mode} needs bitsandbytes: pip install 'ex2[quant]'") from err
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def check_vllm(config: TrainConfig) -> None:
    if not config.use_vllm:
        return
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError("--use-vllm needs vLLM: pip install 'ex2[vllm]'")


def precision_flags(precision: str) -> dict[str, bool]:
    """trl's ``bf16``/``fp16`` flags; ``auto`` is bf16 on CUDA (fp16 without bf16) and fp32 elsewhere."""
    import torch

    if precision == "auto":
        cuda = torch.cuda.is_available()
        bf16 = cuda and torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": cuda and not bf16}
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def checkpointing_flag(enabled: bool) -> dict[str, bool]:
    """Activation checkpointing under the name the installed transformers uses (``gradient_checkpointing``
    became ``activation_checkpointing`` in 5.x and warns when the old name is set)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def trainer_args(config: TrainConfig, run_dir: Path):
    """A ``GRPOConfig`` or ``RLOOConfig`` from our config."""
    import torch

    common: dict[str, Any] = dict(
        output_dir=str(run_dir), max_steps=config.max_steps, learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_generations=config.num_generations, num_iterations=config.num_iterations,
        epsilon=config.epsilon, beta=config.beta, max_completion_length=config.max_completion_length,
        temperature=config.temperature, top_p=1.0, top_k=0,
        **checkpointing_flag(config.gradient_checkpointing),
        save_strategy="steps", save_steps=config.save_steps, logging_steps=1, report_to="none",
        seed=config.seed, remove_unused_columns=False, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        use_vllm=config.use_vllm, vllm_mode=config.vllm_mode, vllm_server_base_url=config.vllm_server_base_url,
        model_init_kwargs={"dtype": _model_dtype(config.precision)},
        **precision_flags(config.precision),
    )
    if config.algorithm == "rloo":
        from trl import RLOOConfig

        return RLOOConfig(**common)
    from trl import GRPOConfig

    return GRPOConfig(**common, loss_type=config.loss_type, scale_rewards=config.scale_rewards)


def _model_dtype(precision: str) -> str:
    import torch

    if precision == "auto":
        if not torch.cuda.is_available():
            return "float32"
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]


# --- run -------------------------------------------------------------------------------------------

def checkpoints(run_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders, oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def prepare_run_dir(config: TrainConfig) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to resume from; refuses to overwrite a run without --resume."""
    run_dir = Path(config.output).expanduser()
    found = checkpoints(run_dir) if run_dir.is_dir() else []
    if found and not config.resume:
        raise ValueError(f"{run_dir} already holds {found[-1].name}; pass --resume to continue it "
                         "or choose a new --output")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, (found[-1] if found and config.resume else None)


def build_trainer(config: TrainConfig, run_dir: Path, reward, train_data, tokenizer, callbacks: list):
    """The trl trainer, with LoRA applied and our callbacks in place of the default progress output."""
    from transformers import AutoConfig
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ex2.llm import resolve_llm

    model_path = resolve_llm(config.llm)
    model_type = AutoConfig.from_pretrained(model_path).model_type
    if config.algorithm == "rloo":
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOTrainer as Trainer
    trainer = Trainer(
        model=model_path, reward_funcs=reward, args=trainer_args(config, run_dir), train_dataset=train_data,
        processing_class=tokenizer, callbacks=callbacks, quantization_config=quantization_config(config.quantization),
        peft_config=lora_config(model_type, config.lora_r, config.lora_alpha, config.lora_dropout,
                                config.lora_target_modules),
    )
    for noisy in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(noisy)
    return trainer


def run(config: TrainConfig) -> Path:
    """Train, save the adapter to ``RUN/adapter`` and evaluate held-out templates; returns the run folder."""
    from ex2.data import load_dataset, load_templates
    from ex2.llm import load_tokenizer
    from ex2.reward import build_reward
    from ex2.train_callbacks import JsonlLogger, RewardProgress, StopOnSignal, plot_reward_curve, trim_log
    from ex2.train_eval import evaluate_heldout
    from ex2.vlm import load_vlm

    check_vllm(config)
    quantization_config(config.quantization)  # fail before loading anything
    run_dir, resume_from = prepare_run_dir(config)
    save_config(config, run_dir)
    dataset = load_dataset(config.dataset, config.data_root, config.split)
    train_templates, heldout = split_templates(load_templates(config.templates), config.heldout_templates,
                                               config.seed)
    tokenizer = load_tokenizer(config.llm, padding_side="left")
    prompt_format = resolve_format(tokenizer, config.prompt_format)
    reward = build_reward(config.reward, load_vlm(config.vlm), dataset, config.images_per_class,
                          config.image_seed, config.planted_text, planted_keywords=config.planted_keywords,
                          planted_bonus=config.planted_bonus)
    log_path = run_dir / "log.jsonl"
    if int(os.environ.get("RANK", "0")) == 0:  # the main process (set by accelerate/torchrun)
        trim_log(log_path, int(resume_from.name.split("-")[-1]) if resume_from else 0)
    stop = StopOnSignal()
    callbacks = [JsonlLogger(log_path, reward, config.log_samples), RewardProgress(), stop]
    trainer = build_trainer(config, run_dir, reward, prompt_dataset(dataset.classnames, train_templates,
                                                                    prompt_format), tokenizer, callbacks)
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
            evaluate_heldout(trainer.model, tokenizer, records, reward, run_dir / "eval.json",
                             config.eval_samples, config.max_completion_length, config.seed)
    return run_dir
