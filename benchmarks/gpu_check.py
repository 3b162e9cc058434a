"""One GPU check: the paths users run on GPUs, measured by one command into one JSON.

    python benchmarks/gpu_check.py                            # a GPU machine: runs/gpu_check.json, <= 8 min on one H100
    python benchmarks/gpu_check.py --only grpo classify       # some items
    python benchmarks/gpu_check.py --tiny --output /tmp/c.json  # tiny models, 1-2 steps each: the CPU self-test
    python benchmarks/gpu_check.py --table runs/gpu_check.json  # the README's GPU-figures rows
    make gpu-check

On a bare GPU machine, first install what it lacks: ``bash benchmarks/pack_gpu.sh`` (on a CPU machine
with pip) builds the pack and prints the line that installs it. Every model is built at random from
its published configuration, on the machine, at its real size: **random weights give real speed and
memory, not meaningful outputs** (rewards, accuracies and predictions are noise). Nothing is downloaded.

Items (each part runs in its own process under a time budget, so one failure or hang loses only that
part; the JSON is rewritten atomically after every part):

grpo        ``ex2 train`` (GRPO, LoRA r 16 on q/k/v/o, EX2's batch: 8 completions of 32 tokens per
            optimizer step) on a model with Mistral-7B's configuration (transformers' ``MistralConfig``:
            hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336, vocabulary 32000), in bf16 and in
            4-bit QLoRA (NF4, double quantization, bf16 compute). Optimizer steps/s and generated tokens/s
            (the first step left out), peak memory, seconds per part of a step. Compared: 4-bit against
            bf16, and the GPU's bf16 matmul rate measured in the same process.
classify    ``ex2 classify`` (CLIP templates, empty embedding cache) with an open_clip ViT-L-14 in bf16:
            images/s of its image loop (decoding workers, preprocessing, forward, cache writes) against
            the bare ``encode_image`` loop on tensors already preprocessed and on the GPU, same batch.
finetune    ``ex2 finetune --objective desc`` and ``grain``, ViT-B-16, bf16, batch 256, ``--method full``
            and ``lora``: optimizer steps/s after the first steps, from the end of one step to the end of
            the last (torch's optimizer step hook; loading and saving left out). Compared: LoRA against full.
gvlm        ``ex2 classify --method likelihood`` with a model of LLaVA-1.5-7B's configuration (Llama-2-7B
            text model, CLIP ViT-L/14 at 336 pixels, 576 image tokens) on 100 classes: images/s with the
            prompt's KV cache shared by the classes, against one full forward per class (Zhang et al.'s
            code), timed on a few classes and scaled to 100.
cuda_tests  ``pytest -m gpu`` on the test files that hold such tests: each test's outcome.

Tokenizers: a byte-level BPE trained (``tokenizers``) on ex2's own text files stands in for the models'
SentencePiece vocabularies (ids below 32000); prompt lengths in tokens are close to, not equal to, the
real tokenizers'.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTE = ("random-initialised weights at the published configurations' sizes: speeds and memory are real, "
        "outputs (rewards, accuracies, predictions) are noise")
GIB = 2**30

# item -> its parts, in the order they run; each part is one process
PLAN: dict[str, tuple[str, ...]] = {
    "grpo": ("bf16", "4bit"),
    "classify": ("vit_l_14",),
    "finetune": ("desc", "grain"),
    "gvlm": ("llava_7b",),
    "cuda_tests": ("pytest",),
}
# seconds each part may run on a GPU (a part gets less when the total --budget runs short)
BUDGETS = {"grpo": 150, "classify": 90, "finetune": 100, "gvlm": 150, "cuda_tests": 150}
TINY_BUDGET = 900  # per part on a CPU (a loaded CI machine is slow; this only stops a hang)
# the items' large model folders (15 GB each at 7B), removed once the item is done
MODEL_FOLDERS = {"grpo": "mistral-7b-config", "gvlm": "llava-1.5-7b-config"}


@dataclass
class Context:
    """What every part knows: size (tiny or real), device, and the shared work folder."""

    tiny: bool
    device: str
    work: str

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def precision(self) -> str:
        """bf16 on the GPU; the tiny CPU run keeps fp32 (what ``auto`` means there)."""
        return "bf16" if self.cuda else "fp32"


# --- sizes -----------------------------------------------------------------------------------------

# Mistral-7B-v0.1's config.json values (transformers' MistralConfig defaults, eps as published)
MISTRAL_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                  sliding_window=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
MISTRAL_TINY = {**MISTRAL_7B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2}
# llava-hf/llava-1.5-7b-hf's config.json: Llama-2-7B text model, CLIP ViT-L/14-336 vision tower
LLAVA_TEXT_7B = dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)
LLAVA_VISION_7B = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=336, patch_size=14, projection_dim=768)
LLAVA_TEXT_TINY = {**LLAVA_TEXT_7B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "num_key_value_heads": 2}
LLAVA_VISION_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         image_size=56, patch_size=14, projection_dim=32)
TINY_OPEN_CLIP = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def sizes(ctx: Context) -> dict:
    """Counts of each item: the real ones on a GPU, 1-2 steps of tiny models on a CPU."""
    if ctx.tiny:
        return dict(grpo_steps=2, grpo_tokens=8, images=32, classify_batch=8, ft_batch=4, ft_warmup=1, ft_steps=1,
                    ft_workers=0, gvlm_classes=10, gvlm_images_per_class=1, gvlm_full_classes=3)
    return dict(grpo_steps=5, grpo_tokens=None, images=2048, classify_batch=None, ft_batch=256, ft_warmup=2, ft_steps=8,
                ft_workers=8, gvlm_classes=100, gvlm_images_per_class=1, gvlm_full_classes=10)


# --- measurement helpers ---------------------------------------------------------------------------

def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    """Start counting peak GPU memory afresh, after freeing what is no longer referenced."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """Peak GPU memory since the last :func:`reset_peak`, in GiB (None on a CPU)."""
    import torch

    if not torch.cuda.is_available():
        return {"peak_memory_gib": None, "peak_reserved_gib": None}
    torch.cuda.synchronize()
    return {"peak_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3)}


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    synchronize()
    start = time.perf_counter()
    out = fn()
    synchronize()
    return out, time.perf_counter() - start


def matmul_tflops(dtype_name: str = "bfloat16", n: int = 8192, seconds: float = 1.0) -> float:
    """The GPU's (or CPU's) rate on square matmuls of ``n`` in ``dtype``, TFLOP/s: the ceiling a run is held to."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = n if device == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype_name))
    b = torch.randn_like(a)
    a @ b
    synchronize()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
        synchronize()
    return 2 * n**3 * calls / (time.perf_counter() - start) / 1e12


# --- inputs built on the machine ---------------------------------------------------------------------

def corpus() -> list[str]:
    """ex2's own text files (templates, class names, inspection data): what the stand-in tokenizer learns."""
    import ex2

    root = Path(ex2.__file__).parent
    files = sorted(p for suffix in ("*.txt", "*.jsonl", "*.json") for p in root.rglob(suffix))
    return [line for path in files for line in path.read_text(encoding="utf-8", errors="ignore").splitlines() if line]


def bpe_tokenizer(vocab_size: int, extra_special: tuple[str, ...] = ()):
    """A byte-level BPE (``tokenizers``) with Llama's special tokens (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2),
    trained on :func:`corpus`; its ids stay below ``vocab_size``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", *extra_special]
    core.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size - 64, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="</s>")
    if extra_special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special)})
    assert len(tokenizer) <= vocab_size, (len(tokenizer), vocab_size)
    return tokenizer


@contextlib.contextmanager
def default_dtype(dtype):
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def save_random_model(model_class, config, folder: Path, ctx: Context) -> None:
    """Save ``model_class(config)`` with random weights, built on the device in the run's precision
    (seconds for 7B), and free it before anything is measured."""
    import torch

    torch.manual_seed(0)
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    with torch.device(ctx.device), default_dtype(dtype):
        model = model_class(config)
    model.save_pretrained(folder)
    del model
    reset_peak()


def mistral_folder(ctx: Context) -> tuple[Path, float]:
    """A transformers folder of a random Mistral-7B-config model and its stand-in tokenizer (built once)."""
    from transformers import MistralConfig, MistralForCausalLM

    from ex2.core.io import materialise

    folder = Path(ctx.work) / MODEL_FOLDERS["grpo"]
    start = time.perf_counter()

    def build(tmp: Path) -> None:
        tokenizer = bpe_tokenizer(MISTRAL_7B["vocab_size"])
        values = MISTRAL_TINY if ctx.tiny else MISTRAL_7B
        config = MistralConfig(**values, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
        save_random_model(MistralForCausalLM, config, tmp, ctx)
        tokenizer.save_pretrained(tmp)

    materialise(folder, build)
    return folder, time.perf_counter() - start


def open_clip_folder(ctx: Context, arch: str) -> str:
    """A ``local-dir:`` open_clip folder of a random ``arch`` (the tiny config in ``--tiny``), as a VLM name."""
    import open_clip
    from safetensors.torch import save_file

    from ex2.core.io import materialise

    cfg = TINY_OPEN_CLIP if ctx.tiny else open_clip.get_model_config(arch)
    folder = Path(ctx.work) / f"open_clip-{'tiny' if ctx.tiny else arch}"

    def build(tmp: Path) -> None:
        import torch

        torch.manual_seed(0)
        with torch.device(ctx.device):  # random init on the GPU: seconds, not a minute, for ViT-L
            model = open_clip.CLIP(**cfg)
        (tmp / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  tmp / "open_clip_model.safetensors")

    materialise(folder, build)
    return f"local-dir:{folder}"


def _write_view(job: tuple[str, int, int, str]) -> None:
    from ex2.data.samples import SAMPLE_CONCEPTS, augmented_view

    name, concept_id, view, path = job
    augmented_view(SAMPLE_CONCEPTS[name](), concept_id, view).save(path, quality=90)


def image_folder(ctx: Context, n_images: int, n_classes: int | None = None) -> Path:
    """``ROOT/<class>/NNNN.jpg``: ``n_images`` 256-pixel augmented views of the sample photos, spread over
    the 8 sample classes or over ``n_classes`` classes named after Flowers-102's (decoded as JPEGs, as users'
    images are), written by a pool of processes."""
    from concurrent.futures import ProcessPoolExecutor

    from ex2.core.io import materialise
    from ex2.data.samples import SAMPLE_CONCEPTS

    concepts = list(SAMPLE_CONCEPTS)
    if n_classes is None:
        names = concepts
    else:
        from ex2.data import flowers102_classnames

        names = flowers102_classnames()[:n_classes]
    folder = Path(ctx.work) / f"images-{n_images}-{len(names)}"

    def build(tmp: Path) -> None:
        for name in names:
            (tmp / name).mkdir(parents=True)
        jobs = [(concepts[i % len(concepts)], i % len(concepts), i, str(tmp / names[i % len(names)] / f"{i:05d}.jpg"))
                for i in range(n_images)]
        with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
            list(pool.map(_write_view, jobs, chunksize=16))

    return materialise(folder, build)


# --- item 1: ex2 train (GRPO) ------------------------------------------------------------------------

def grpo_profile_class():
    """bench_grpo_step's :class:`StepProfile`, also keeping each step's seconds and the tokens generated."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_grpo_step import StepProfile

    class GpuStepProfile(StepProfile):
        def __init__(self) -> None:
            super().__init__()
            self.step_times: list[float] = []
            self.tokens: list[int] = []
            self.generation_times: list[float] = []

        def _time_generation(self, call, prompt_ids, *args, **kwargs):
            before = self.seconds["generation"]
            completion_ids, logprobs = super()._time_generation(lambda: timed(call)[0], prompt_ids, *args, **kwargs)
            self.generation_times.append(self.seconds["generation"] - before)
            self.tokens.append(sum(len(c) for c in completion_ids))
            return completion_ids, logprobs

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            before = self.step_seconds
            super().on_step_end(args, state, control, **kwargs)
            self.step_times.append(self.step_seconds - before)

    return GpuStepProfile


def grpo(ctx: Context, mode: str) -> dict:
    """``ex2 train`` for a few optimizer steps in ``mode`` (bf16 or 4bit), the first step left out."""
    from unittest import mock

    from ex2.train import stage as train

    if mode not in PLAN["grpo"]:
        raise ValueError(f"grpo part {mode!r}: expected one of {', '.join(PLAN['grpo'])}")
    if mode == "4bit" and not ctx.cuda:
        return {"status": "skipped", "reason": "4-bit QLoRA needs CUDA (bitsandbytes)"}
    size = sizes(ctx)
    folder, build_seconds = mistral_folder(ctx)
    reward_vlm = open_clip_folder(ctx, "ViT-B-32")
    config = train.TrainConfig(dataset="samples", vlm=reward_vlm, llm=str(folder), reward="ex2",
                               quantization="4bit" if mode == "4bit" else "none", precision=ctx.precision,
                               eval_samples=0, log_samples=0)
    length = {"max_completion_length": size["grpo_tokens"]} if size["grpo_tokens"] else {}  # else EX2's 32
    args = train.trainer_config(config, output_dir=str(Path(ctx.work) / f"train-{mode}"),
                                max_steps=size["grpo_steps"], save_strategy="no", **length)
    profile = grpo_profile_class()()
    build = train.build_trainer

    def build_instrumented(*a, **k):
        trainer = build(*a, **k)
        profile.instrument(trainer)
        return trainer

    reset_peak()
    with mock.patch.object(train, "build_trainer", build_instrumented):
        _, wall = timed(lambda: train.run(config, args))
    timed_steps = profile.step_times[1:]
    generation = sum(profile.generation_times[1:])
    tokens = sum(profile.tokens[1:])
    limit = matmul_tflops()
    return {
        "optimizer_steps_per_s": len(timed_steps) / sum(timed_steps),
        "generated_tokens_per_s": tokens / generation if generation else None,
        **peak_memory(),
        "steps_timed": len(timed_steps), "tokens_generated_timed": tokens,
        "completions_per_generation": args.generation_batch_size, "batch_per_step": args.per_device_train_batch_size,
        "max_completion_length": args.max_completion_length,
        "seconds_per_step_by_part": {k: v / profile.steps for k, v in profile.seconds.items()},
        "model_parameters": profile.body + profile.head, "lora_parameters": profile.lora,
        "weights": "nf4 (bitsandbytes), bf16 compute" if mode == "4bit" else ctx.precision,
        "matmul_tflops_bf16": limit,
        "run_seconds": wall, "model_build_seconds": build_seconds,
    }


# --- item 2: ex2 classify against the bare image encoder ----------------------------------------------

def classify(ctx: Context, part: str) -> dict:
    """``ex2 classify`` on an ImageFolder (empty cache) against ``encode_image`` on preprocessed tensors."""
    import ex2.vlm
    from ex2.classify.stage import ClassifyConfig
    from ex2.classify.stage import run as classify_run

    size = sizes(ctx)
    vlm_name = open_clip_folder(ctx, "ViT-L-14")
    images = image_folder(ctx, size["images"])
    config = ClassifyConfig(dataset="imagefolder", data_root=str(images), split="val", vlm=vlm_name,
                            device=ctx.device, precision=ctx.precision, templates="clip", progress=False,
                            output=str(Path(ctx.work) / "classify-run"),
                            **({"batch_size": size["classify_batch"]} if size["classify_batch"] else {}))
    seconds: dict[str, float] = {}
    embed = ex2.vlm.embed_images

    def embed_timed(*a, **k):
        out, seconds["images"] = timed(lambda: embed(*a, **k))
        return out

    os.environ["EX2_CACHE"] = str(Path(ctx.work) / "classify-cache")  # empty: every image is embedded
    reset_peak()
    with replaced_everywhere(embed, embed_timed):
        _, wall = timed(lambda: classify_run(config))
    memory = peak_memory()
    if "images" not in seconds:
        raise RuntimeError("ex2 classify embedded its images without calling ex2.vlm.embed_images: time it anew")
    n = len(list(images.rglob("*.jpg")))
    bare = bare_encoder(vlm_name, images, config.batch_size, ctx)
    loop = n / seconds["images"]
    return {"images_per_s": loop, "bare_encode_image_per_s": bare["images_per_s"],
            "ratio_to_bare": loop / bare["images_per_s"], **memory, "bare_peak_memory_gib": bare["peak_memory_gib"],
            "images": n, "batch_size": config.batch_size, "precision": ctx.precision, "run_seconds": wall}


@contextlib.contextmanager
def replaced_everywhere(function, replacement):
    """``function`` replaced by ``replacement`` in every loaded ex2 module that holds it (where it is defined,
    re-exported and imported by name), for the duration of the block."""
    name = function.__name__
    owners = [module for key, module in list(sys.modules.items())
              if (key == "ex2" or key.startswith("ex2.")) and getattr(module, name, None) is function]
    for module in owners:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module in owners:
            setattr(module, name, function)


def bare_encoder(vlm_name: str, images: Path, batch_size: int, ctx: Context) -> dict:
    """open_clip's ``encode_image`` alone over the same images, preprocessed beforehand and already on the
    device, at the same batch size and precision: the ceiling of the image loop."""
    import open_clip
    import PIL.Image
    import torch
    from safetensors.torch import load_file

    folder = Path(vlm_name.removeprefix("local-dir:"))
    cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.CLIP(**cfg)
    model.load_state_dict(load_file(folder / "open_clip_model.safetensors"))
    dtype = torch.bfloat16 if ctx.precision == "bf16" else torch.float32
    model = model.to(ctx.device, dtype).eval()
    transform = open_clip.image_transform(model.visual.image_size, is_train=False)
    paths = sorted(images.rglob("*.jpg"))
    pixels = torch.stack([transform(PIL.Image.open(p).convert("RGB")) for p in paths]).to(ctx.device, dtype)
    reset_peak()

    def loop() -> None:
        with torch.inference_mode():
            for start in range(0, len(pixels), batch_size):
                model.encode_image(pixels[start : start + batch_size])

    loop()  # warm-up
    _, seconds = timed(loop)
    return {"images_per_s": len(pixels) / seconds, **peak_memory()}


# --- item 3: ex2 finetune ----------------------------------------------------------------------------

def finetune(ctx: Context, objective: str) -> dict:
    """Steps/s of ``ex2 finetune --objective OBJECTIVE``, full and LoRA: the optimizer steps after the
    first few, timed from the end of one step to the end of the last (loading and saving left out)."""
    from ex2.finetune.data import synthetic_grounding
    from ex2.finetune.stage import FinetuneConfig
    from ex2.finetune.stage import run as finetune_run

    size = sizes(ctx)
    vlm = open_clip_folder(ctx, "ViT-B-16")
    work = Path(ctx.work)
    if objective == "grain":
        data = {"annotations": str(synthetic_grounding(work / "grounding", n=size["ft_batch"] * 2,
                                                       size=32 if ctx.tiny else 224))}
    else:
        images = image_folder(ctx, max(size["images"], size["ft_batch"]))
        descriptions = work / "descriptions.json"
        descriptions.write_text(json.dumps({name.name: [f"a photo of a {name.name}, {d}." for d in DESCRIPTIONS]
                                            for name in sorted(images.iterdir())}))
        data = {"dataset": "imagefolder", "data_root": str(images), "descriptions": str(descriptions)}
    results = {}
    for method in ("full", "lora"):
        steps = size["ft_warmup"] + size["ft_steps"]
        config = FinetuneConfig(
            output=str(work / f"ft-{objective}-{method}"), objective=objective, vlm=vlm, method=method,
            batch_size=size["ft_batch"], max_steps=steps, save_steps=steps + 1, log_steps=steps,
            device=ctx.device, precision=ctx.precision, num_workers=size["ft_workers"], lr_schedule="constant",
            **data)
        reset_peak()
        with optimizer_step_times() as ends:
            _, wall = timed(lambda config=config: finetune_run(config))
        if len(ends) != steps:
            raise RuntimeError(f"expected {steps} optimizer steps, saw {len(ends)}")
        seconds = (ends[-1] - ends[size["ft_warmup"] - 1]) / size["ft_steps"]
        results[method] = {"steps_per_s": 1 / seconds, "images_per_s": size["ft_batch"] / seconds, **peak_memory(),
                           "run_seconds": wall}
    return {**results, "lora_over_full_steps_per_s": results["lora"]["steps_per_s"] / results["full"]["steps_per_s"],
            "batch_size": size["ft_batch"], "steps_timed": size["ft_steps"], "precision": ctx.precision}


@contextlib.contextmanager
def optimizer_step_times():
    """The times at which every torch optimizer step of this process ends (torch's global step hook)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    ends: list[float] = []

    def record(*_) -> None:
        synchronize()
        ends.append(time.perf_counter())

    handle = register_optimizer_step_post_hook(record)
    try:
        yield ends
    finally:
        handle.remove()


DESCRIPTIONS = ("seen from the side", "in bright daylight", "with a plain background", "close up",
                "with its typical colours", "in its usual surroundings")


# --- item 4: generative-VLM likelihood classification -----------------------------------------------

def llava_folder(ctx: Context) -> tuple[Path, float]:
    """A transformers folder of a random LLaVA-1.5-7B-config model with its processor (built once)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from ex2.core.io import materialise
    from ex2.gvlm.testing import LLAVA_TEMPLATE

    folder = Path(ctx.work) / MODEL_FOLDERS["gvlm"]
    start = time.perf_counter()

    def build(tmp: Path) -> None:
        text_values, vision_values = (LLAVA_TEXT_TINY, LLAVA_VISION_TINY) if ctx.tiny else (LLAVA_TEXT_7B, LLAVA_VISION_7B)
        tokenizer = bpe_tokenizer(text_values["vocab_size"], extra_special=("<image>",))
        text = LlamaConfig(**text_values, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
        vision = CLIPVisionConfig(**vision_values)
        config = LlavaConfig(vision_config=vision, text_config=text, projector_hidden_act="gelu",
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             vision_feature_layer=-2, vision_feature_select_strategy="default")
        save_random_model(LlavaForConditionalGeneration, config, tmp, ctx)
        side = vision_values["image_size"]
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
            tokenizer=tokenizer, patch_size=vision_values["patch_size"], vision_feature_select_strategy="default",
            chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1)
        processor.save_pretrained(tmp)

    materialise(folder, build)
    return folder, time.perf_counter() - start


def gvlm(ctx: Context, part: str) -> dict:
    """``ex2 classify --method likelihood`` (shared prompt cache; the whole run, model loaded) against one full
    forward per class."""
    import PIL.Image
    import torch

    from ex2.classify.stage import ClassifyConfig
    from ex2.classify.stage import run as classify_run
    from ex2.gvlm.backend import join_continuation, load_gvlm

    size = sizes(ctx)
    folder, build_seconds = llava_folder(ctx)
    images = image_folder(ctx, size["gvlm_classes"] * size["gvlm_images_per_class"], size["gvlm_classes"])
    name = f"gen:local-dir:{folder}"
    vlm, load_seconds = timed(lambda: load_gvlm(name, ctx.device, ctx.precision))
    config = ClassifyConfig(dataset="imagefolder", data_root=str(images), split="val", vlm=name, method="likelihood",
                            device=ctx.device, precision=ctx.precision, progress=False,
                            output=str(Path(ctx.work) / "gvlm-run"))
    reset_peak()
    _, wall = timed(lambda: classify_run(config, vlm))
    memory = peak_memory()
    metrics = json.loads((Path(config.output) / "metrics.json").read_text())
    # the reference: prompt + image + class name in one forward per class (Zhang et al.), on a few classes
    image = PIL.Image.open(next(iter(sorted(images.rglob("*.jpg"))))).convert("RGB")
    prompt = vlm.prompt(config.question, answer_prefix=config.answer_prefix)
    classes = [p.name for p in sorted(images.iterdir())][: size["gvlm_full_classes"]]
    continuations = [join_continuation(prompt, c) for c in classes]
    vlm.full_logprobs(image, prompt, continuations[0])  # warm-up
    full, full_seconds = timed(lambda: [vlm.full_logprobs(image, prompt, c).sum() for c in continuations])
    cached = vlm.score_continuations([image], prompt, continuations, "sum")[0]
    per_class = full_seconds / len(continuations)
    images_per_s = metrics["n_images"] / wall
    full_images_per_s = 1 / (per_class * size["gvlm_classes"])
    return {"images_per_s": images_per_s, "full_forward_per_class_images_per_s": full_images_per_s,
            "ratio_to_full_forward": images_per_s / full_images_per_s, **memory,
            "classes": size["gvlm_classes"], "images": metrics["n_images"],
            "prompt_tokens": vlm.prefix(image, prompt).length,
            "full_forward_classes_timed": len(continuations),
            "max_score_difference_cached_vs_full": float((torch.stack(full) - cached).abs().max()),
            "precision": ctx.precision, "run_seconds": wall, "load_seconds": load_seconds,
            "model_build_seconds": build_seconds}


# --- item 5: the CUDA-only tests ----------------------------------------------------------------------

def gpu_test_files() -> list[str]:
    """The test files that hold ``@pytest.mark.gpu`` tests."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text(encoding="utf-8"))


def cuda_tests(ctx: Context, part: str) -> dict:
    """``pytest -m gpu`` on those files; each test's outcome (pytest's JUnit XML read back)."""
    import xml.etree.ElementTree as ET

    report = Path(ctx.work) / "cuda_tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               f"--junitxml={report}", *gpu_test_files()]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if not report.is_file():
        raise RuntimeError(f"pytest wrote no report (exit {done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    tests = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome, message = kind, (found.get("message") or found.text or "")[:300]
        tests[f"{case.get('classname')}::{case.get('name')}"] = {"outcome": outcome, "message": message,
                                                                 "seconds": float(case.get("time") or 0)}
    counts = {kind: sum(t["outcome"] == kind for t in tests.values()) for kind in ("passed", "failure", "error", "skipped")}
    return {**counts, "pytest_exit_code": done.returncode, "tests": tests, "files": gpu_test_files()}


ITEMS: dict[str, Callable[[Context, str], dict]] = {
    "grpo": grpo, "classify": classify, "finetune": finetune, "gvlm": gvlm, "cuda_tests": cuda_tests,
}
COMPARED_WITH = {
    "grpo": "4-bit QLoRA against bf16 in the same run; the GPU's bf16 matmul rate measured in each process",
    "classify": "the bare open_clip encode_image loop on preprocessed tensors already on the device, same batch and precision",
    "finetune": "LoRA against full fine-tuning, same objective and batch",
    "gvlm": "one full forward (image + prompt + class name) per class, timed on a few classes and scaled to the class count",
    "cuda_tests": "nothing: pass/fail of each test",
}


# --- the runner ----------------------------------------------------------------------------------------

def child(args) -> None:
    """One part, in this process; its result (or error) goes to ``--record`` as JSON."""
    from ex2.core.io import write_json

    ctx = Context(**json.loads(args.context))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        result = {"status": "ok", **ITEMS[args.child](ctx, args.part)}
    except Exception as err:  # the parent records it; the other parts go on
        result = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
    result.setdefault("status", "ok")
    write_json(args.record, result)


def run_part(item: str, part: str, ctx: Context, timeout: float) -> dict:
    """``item``'s ``part`` in a fresh process group under ``timeout`` seconds (the whole group is killed
    then: loader workers and test runs too); its record, or why there is none."""
    import signal

    work = Path(tempfile.mkdtemp(prefix=f"{item}-{part}-", dir=ctx.work))
    record, log = work / "record.json", work / "output.log"
    command = [sys.executable, __file__, "--child", item, "--part", part, "--record", str(record),
               "--context", json.dumps(asdict(ctx))]
    start = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what the part left running
        process.wait()
    tail = log.read_text(errors="replace")[-3000:].strip()
    if code is None:
        result = {"status": "timeout", "error": f"stopped after its budget of {timeout:.0f} s", "output_tail": tail}
    elif record.is_file():
        result = json.loads(record.read_text())
        if result["status"] == "failed":
            result["output_tail"] = tail
    else:
        result = {"status": "failed", "error": f"the process ended with exit code {code} and no record", "output_tail": tail}
    shutil.rmtree(work, ignore_errors=True)
    return {**result, "seconds": time.perf_counter() - start}


def compare(item: str, parts: dict) -> dict:
    """The item's figures across its parts (what each was compared against in the same run)."""
    if item == "grpo" and all(parts.get(p, {}).get("status") == "ok" for p in ("bf16", "4bit")):
        bf16, nf4 = parts["bf16"], parts["4bit"]
        return {"4bit_over_bf16_steps_per_s": nf4["optimizer_steps_per_s"] / bf16["optimizer_steps_per_s"],
                "4bit_over_bf16_peak_memory": nf4["peak_memory_gib"] / bf16["peak_memory_gib"]}
    return {}


def environment() -> dict:
    """The machine and the versions of what ran."""
    import importlib.metadata

    import torch

    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "open_clip_torch", "bitsandbytes",
                 "timm", "tokenizers", "pyarrow", "ex2"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1) if cuda else None,
            "cuda": torch.version.cuda, "python": platform.python_version(), "versions": versions}


def work_folder(cuda: bool) -> str:
    """Where models are written: RAM (/dev/shm) on a GPU machine with room for a 7B model, else a temp folder."""
    shm = Path("/dev/shm")
    if cuda and shm.is_dir() and shutil.disk_usage(shm).free > 32 * GIB:
        return tempfile.mkdtemp(prefix="ex2-gpu-check-", dir=shm)
    return tempfile.mkdtemp(prefix="ex2-gpu-check-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/gpu_check.json", help="the JSON to write")
    parser.add_argument("--tiny", action="store_true", help="tiny models, 1-2 steps each (the CPU self-test)")
    parser.add_argument("--only", nargs="+", choices=PLAN, help="run these items only")
    parser.add_argument("--table", metavar="JSON", help="print the README's GPU-figures rows from a check's JSON")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (parts share it)")
    parser.add_argument("--child", choices=ITEMS, help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    parser.add_argument("--context", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.table:
        print("\n".join(table_rows(json.loads(Path(args.table).read_text()))))
        return 0
    import torch

    from ex2.core.io import write_json

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        parser.error("no CUDA GPU here: the full check needs one; --tiny runs the self-test on the CPU")
    ctx = Context(tiny=args.tiny, device="cuda" if cuda else "cpu", work=work_folder(cuda))
    items = args.only or list(PLAN)
    print(f"{NOTE}; parts in {ctx.work}, results in {args.output}", flush=True)
    start = time.perf_counter()
    report = {"note": NOTE, "tiny": args.tiny, "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **environment(), "items": {}}
    try:
        for item in items:
            entry = report["items"][item] = {"compared_with": COMPARED_WITH[item], "parts": {}}
            for part in PLAN[item]:
                left = args.budget - (time.perf_counter() - start)
                budget = TINY_BUDGET if args.tiny else min(BUDGETS[item], left)
                if not args.tiny and budget < 10:
                    entry["parts"][part] = {"status": "not run", "error": "the check's --budget was spent"}
                else:
                    entry["parts"][part] = run_part(item, part, ctx, budget)
                print(f"{item} {part}: {summary(entry['parts'][part])}", flush=True)
                report["seconds"] = time.perf_counter() - start
                write_json(args.output, report)
            entry.update(compare(item, entry["parts"]))
            write_json(args.output, report)
            if item in MODEL_FOLDERS:
                shutil.rmtree(Path(ctx.work) / MODEL_FOLDERS[item], ignore_errors=True)
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    failed = [f"{i} {p}" for i, e in report["items"].items() for p, r in e["parts"].items()
              if r["status"] not in ("ok", "skipped")]
    print(f"{args.output}: {len(failed)} part(s) without figures{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


def _f(value, unit: str = "", digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}{unit}"


def table_rows(report: dict) -> list[str]:
    """The README's *GPU figures* rows from a check's JSON (cells of parts without figures stay empty)."""
    items, device = report["items"], report["device"]

    def part(item: str, name: str) -> dict:
        found = items.get(item, {}).get("parts", {}).get(name, {})
        return found if found.get("status") == "ok" else {}

    def memory(*results: dict) -> str:
        return " / ".join(cell for r in results if r and (cell := _f(r.get("peak_memory_gib"), " GiB")))

    bf16, nf4 = part("grpo", "bf16"), part("grpo", "4bit")
    clf, gen, tests = part("classify", "vit_l_14"), part("gvlm", "llava_7b"), part("cuda_tests", "pytest")
    rows = [
        ("`ex2 train` GRPO + LoRA, Mistral-7B config, bf16", "optimizer steps/s; generated tokens/s",
         "the GPU's bf16 matmul TFLOP/s",
         bf16 and f"{_f(bf16['optimizer_steps_per_s'])}; {_f(bf16['generated_tokens_per_s'])}",
         bf16 and _f(bf16["matmul_tflops_bf16"]), memory(bf16)),
        ("`ex2 train` GRPO + QLoRA (NF4), same", "optimizer steps/s; generated tokens/s", "bf16 (ratio of steps/s)",
         nf4 and f"{_f(nf4['optimizer_steps_per_s'])}; {_f(nf4['generated_tokens_per_s'])}",
         _f(items.get("grpo", {}).get("4bit_over_bf16_steps_per_s"), "x"), memory(nf4)),
        ("`ex2 classify`, ViT-L-14, bf16", "images/s of the image loop", "bare `encode_image` loop (ratio)",
         clf and _f(clf["images_per_s"]), clf and _f(clf["ratio_to_bare"], "x"), memory(clf)),
    ]
    for objective in ("desc", "grain"):
        ft = part("finetune", objective)
        label = ("`ex2 finetune --objective desc`, ViT-B-16, bf16, batch 256" if objective == "desc"
                 else "`ex2 finetune --objective grain`, same")
        rows.append((label, "steps/s full; LoRA", "LoRA / full",
                     ft and f"{_f(ft['full']['steps_per_s'])}; {_f(ft['lora']['steps_per_s'])}",
                     ft and _f(ft["lora_over_full_steps_per_s"], "x"), ft and memory(ft["full"], ft["lora"])))
    rows += [
        ("`ex2 classify --method likelihood`, LLaVA-1.5-7B config, 100 classes", "images/s, prompt cache shared",
         "one full forward per class (ratio)", gen and _f(gen["images_per_s"]),
         gen and _f(gen["ratio_to_full_forward"], "x"), memory(gen)),
        ("`pytest -m gpu`", "passed / failed / errors / skipped", "",
         tests and f"{tests['passed']} / {tests['failure']} / {tests['error']} / {tests['skipped']}", "", ""),
    ]
    return [f"| {' | '.join((what, figure, against, device if value else '', value or '', ratio or '', mem or ''))} |"
            for what, figure, against, value, ratio, mem in rows]


def summary(result: dict) -> str:
    """One line: the status and the part's main figures."""
    if result["status"] != "ok":
        return f"{result['status']}: {result.get('error') or result.get('reason', '')}"
    keys = [k for k in result if k.endswith("_per_s") or k.startswith("ratio") or k in ("passed", "failure", "error")]
    shown = ", ".join(f"{k} {result[k]:.3g}" if isinstance(result[k], float) else f"{k} {result[k]}" for k in keys)
    return f"ok in {result['seconds']:.0f} s: {shown}"


if __name__ == "__main__":
    sys.exit(main())
