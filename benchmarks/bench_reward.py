"""Reward throughput: the class-mean reward against EX2's per-batch similarity matrix, and the share
of a training step spent in the reward.

    python benchmarks/bench_reward.py                          # 32 concepts x 256 images, D = 768
    python benchmarks/bench_reward.py --step --llm tiny        # + a few training steps (tiny Llama, conse)
    python benchmarks/bench_reward.py --step --llm smollm2

Part 1 uses random normalised embeddings (the reward's cost does not depend on their values) and
counts only the reward arithmetic, since both methods embed the same responses. Part 2 times
``ex2 train``'s trainer for a few steps with a timer around the real reward (text encoding included).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from timing import best_of

from ex2.reward.ex2 import EX2Reward, per_batch_reward


class TableVLM:
    """Looks text embeddings up in a table: the benchmark times the reward, not a text encoder."""

    logit_scale = 100.0

    def __init__(self, texts: list[str], embeddings: torch.Tensor) -> None:
        self.rows = dict(zip(texts, embeddings, strict=True))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([self.rows[t] for t in texts])


def bench_throughput(concepts: int, images: int, dim: int, batch: int, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)  # noqa: E731
    image_cache = list(unit(concepts * images, dim))  # EX2 caches one CPU tensor per image
    labels = torch.arange(concepts).repeat_interleave(images)
    texts = [f"response {i}" for i in range(batch)]
    text_embeddings = unit(batch, dim)
    classes = torch.randint(0, concepts, (batch,), generator=gen)
    vlm = TableVLM(texts, text_embeddings)
    means = torch.stack([torch.stack(image_cache[c * images:(c + 1) * images]).mean(0) for c in range(concepts)])
    reward = EX2Reward(vlm, means, [f"c{i}" for i in range(concepts)])
    involved = sorted(set(classes.tolist()))

    def original() -> torch.Tensor:  # gather the involved classes' cached images, full matrix, masked means
        rows = [i for c in involved for i in range(c * images, (c + 1) * images)]
        stacked = torch.stack([image_cache[i] for i in rows])
        return per_batch_reward(stacked, labels[rows], vlm.encode_texts(texts), classes, 100.0)

    def class_mean() -> list[float]:
        return reward(completions=texts, concept=classes.tolist())

    torch.testing.assert_close(torch.tensor(class_mean()), original(), atol=1e-4, rtol=0)
    slow, fast = best_of(original, repeats), best_of(class_mean, repeats)
    print(f"reward of {batch} responses, {concepts} concepts x {images} images, D={dim} "
          f"({len(involved)} concepts in the batch):")
    print(f"  EX2 per-batch similarity matrix: {slow * 1e3:8.2f} ms  ({batch / slow:10.0f} responses/s)")
    print(f"  class-mean dot product:          {fast * 1e3:8.2f} ms  ({batch / fast:10.0f} responses/s)")
    print(f"  speed-up: {slow / fast:.1f}x")


def tiny_llama(folder: Path) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ex2.llm.models import resolve_llm

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm("smollm2"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


class TimedReward:
    """Wraps a reward callable and adds up the time spent in it."""

    def __init__(self, reward) -> None:
        self.reward, self.seconds, self.calls = reward, 0.0, 0
        self.__name__ = reward.__name__
        self.last = reward.last

    def __call__(self, **kwargs) -> list[float]:
        start = time.perf_counter()
        out = self.reward(**kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.last = self.reward.last
        return out


def bench_step_share(llm: str, vlm_name: str, steps: int) -> None:
    from ex2.data import load_dataset, load_templates
    from ex2.llm.models import load_tokenizer, resolve_prompt_format
    from ex2.reward.registry import build_reward
    from ex2.train.stage import TrainConfig, build_trainer, prompt_dataset, trainer_config
    from ex2.vlm import load_vlm

    with tempfile.TemporaryDirectory() as tmp:
        llm = tiny_llama(Path(tmp) / "tiny") if llm == "tiny" else llm
        config = TrainConfig(llm=llm, vlm=vlm_name)
        args = trainer_config(config, max_steps=steps, per_device_train_batch_size=16, num_generations=8,
                              max_completion_length=32, beta=0.0, save_strategy="no",
                              output_dir=str(Path(tmp) / "run"))
        dataset = load_dataset(config.dataset)
        tokenizer = load_tokenizer(llm)
        reward = TimedReward(build_reward("ex2", load_vlm(vlm_name), dataset, config.images_per_class))
        prompts = prompt_dataset(dataset.classnames, load_templates("describe25"), resolve_prompt_format(tokenizer, "auto"))
        trainer = build_trainer(config, args, reward, prompts, tokenizer, [])
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    print(f"training {steps} steps of {args.per_device_train_batch_size} completions ({Path(llm).name}, {vlm_name}): "
          f"{total / steps:.2f} s/step, reward {reward.seconds / reward.calls * 1e3:.1f} ms/call; "
          f"share of the step in the reward: {reward.seconds / total:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=32)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=64, help="responses per reward call")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for part 1 (stable timings)")
    parser.add_argument("--step", action="store_true", help="also time training steps")
    parser.add_argument("--llm", default="tiny", help="tiny (random-init Llama), smollm2 or a model folder")
    parser.add_argument("--vlm", default="conse")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    bench_throughput(args.concepts, args.images, args.dim, args.batch, args.repeats)
    torch.set_num_threads(threads)
    if args.step:
        bench_step_share(args.llm, args.vlm, args.steps)


if __name__ == "__main__":
    main()
