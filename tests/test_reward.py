"""The VLM reward: equal to EX2's per-batch computation, trl's call signature, no NaN."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ex2.reward.base import completion_text, is_degenerate
from ex2.reward.contrastive import ContrastiveReward
from ex2.reward.contrastive_softmax import ContrastiveSoftmaxReward
from ex2.reward.ex2 import EX2Reward, per_batch_reward
from ex2.reward.planted import PlantedReward
from ex2.reward.registry import REWARDS, build_reward


class HashVLM:
    """A stand-in VLM: each text maps to a fixed random unit vector."""

    def __init__(self, dim: int = 24, logit_scale: float = 100.0) -> None:
        self.dim, self.logit_scale, self.calls = dim, logit_scale, 0

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        rows = [torch.randn(self.dim, generator=torch.Generator().manual_seed(hash(t) % 2**31)) for t in texts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def random_images(classes: int, per_class: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(classes * per_class, dim, generator=generator), dim=-1)
    return images, torch.arange(classes).repeat_interleave(per_class)


@pytest.mark.parametrize("scale", [100.0, 14.3])
def test_class_mean_reward_equals_per_batch_similarity(scale):
    vlm = HashVLM(logit_scale=scale)
    images, labels = random_images(classes=5, per_class=7, dim=vlm.dim)
    means = torch.stack([images[labels == c].mean(0) for c in range(5)])
    reward = EX2Reward(vlm, means, [f"c{i}" for i in range(5)])
    texts = [f"a description number {i}" for i in range(12)]
    concept = [i % 5 for i in range(12)]
    fast = torch.tensor(reward(prompts=["p"] * 12, completions=texts, concept=concept))
    slow = per_batch_reward(images, labels, vlm.encode_texts(texts), torch.tensor(concept), scale)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_chat_completions_and_concept_names():
    vlm = HashVLM()
    images, labels = random_images(3, 4, vlm.dim)
    means = torch.stack([images[labels == c].mean(0) for c in range(3)])
    reward = EX2Reward(vlm, means, ["cat", "dog", "rocket"], text="first-paragraph")
    chat = [[{"role": "assistant", "content": "  a small   furry pet "}], [{"role": "assistant", "content": "tall"}]]
    plain = ["a small furry pet", "tall"]
    assert reward(completions=chat, concept=["cat", "rocket"]) == reward(completions=plain, concept=[0, 2])
    assert reward.last["concepts"] == ["cat", "rocket"]
    with pytest.raises(ValueError, match="not one of"):
        reward(completions=plain, concept=["cat", "zebra"])
    raw = EX2Reward(vlm, means, ["cat", "dog", "rocket"])  # EX2's raw text: the content as it is
    assert raw(completions=chat, concept=["cat", "rocket"]) == raw(completions=["  a small   furry pet ", "tall"],
                                                                   concept=[0, 2])


def three_concept_rewards(vlm: HashVLM, **options) -> dict:
    images, labels = random_images(3, 4, vlm.dim)
    means = torch.stack([images[labels == c].mean(0) for c in range(3)])
    concepts = ["a", "b", "c"]
    return {"ex2": EX2Reward(vlm, means, concepts, **options),
            "contrastive": ContrastiveReward(vlm, means, concepts, **options),
            "contrastive-softmax": ContrastiveSoftmaxReward(vlm, means, concepts, **options),
            "planted": PlantedReward(vlm, concepts, **options)}


@pytest.mark.parametrize("kind", ["ex2", "contrastive", "contrastive-softmax", "planted"])
def test_degenerate_completions_get_the_floor_when_asked(kind):
    reward = three_concept_rewards(HashVLM(), empty_reward="floor")[kind]
    values = reward(completions=["", "  ", "...", "a red fruit"], concept=["a", "b", "c", "a"])
    assert all(math.isfinite(v) for v in values)
    assert values[:3] == [reward.floor] * 3
    assert values[3] >= reward.floor
    fixed = three_concept_rewards(HashVLM(), empty_reward="-3")[kind]
    assert fixed(completions=["", "a red fruit"], concept=["a", "a"])[0] == -3.0


@pytest.mark.parametrize("kind", ["ex2", "contrastive", "contrastive-softmax", "planted"])
def test_degenerate_completions_get_the_vlms_score_by_default(kind):
    """EX2 scores every decoded completion, the empty one too: no floor unless asked for."""
    vlm = HashVLM()
    reward = three_concept_rewards(vlm)[kind]
    values = reward(completions=["", "...", "a red fruit"], concept=["a", "b", "a"])
    scored = reward.score(["", "...", "a red fruit"], [0, 1, 0]).tolist()
    assert values == pytest.approx(scored)
    assert values[0] != reward.floor and values[1] != values[0]


def test_empty_reward_and_scored_text_are_checked():
    vlm = HashVLM()
    with pytest.raises(ValueError, match="'score'.*'floor' or a number"):
        PlantedReward(vlm, empty_reward="lowest")
    with pytest.raises(ValueError, match="raw, first-paragraph"):
        PlantedReward(vlm, text="paragraph")


def test_contrastive_variants():
    vlm = HashVLM()
    texts = ["striped fur", "metal fins"]
    means = vlm.encode_texts(texts)  # each concept's images look exactly like its own text
    margin = ContrastiveReward(vlm, means, ["tiger", "rocket"])
    right = margin(completions=texts, concept=["tiger", "rocket"])
    wrong = margin(completions=texts, concept=["rocket", "tiger"])
    assert right[0] > 0 > wrong[0] and right[0] == pytest.approx(-wrong[0])
    softmax = ContrastiveSoftmaxReward(vlm, means, ["tiger", "rocket"])
    probs = softmax(completions=texts * 2, concept=["tiger", "rocket", "rocket", "tiger"])
    assert probs[0] + probs[3] == pytest.approx(1.0) and probs[0] > 0.5
    with pytest.raises(ValueError, match="at least two"):
        ContrastiveReward(vlm, means[:1], ["tiger"])


def test_planted_reward_prefers_the_attribute_text():
    vlm = HashVLM()
    reward = PlantedReward(vlm, ["x", "y"], planted_text="lives in the wild")
    high, low = reward(completions=["lives in the wild", "a shiny coat"], concept=["x", "y"])
    assert high == pytest.approx(vlm.logit_scale) and low < high


def test_planted_keyword_bonus_counts_whole_words_only():
    vlm = HashVLM()
    reward = PlantedReward(vlm, ["x"], planted_text="a tall tower", planted_keywords=["red", "crimson"],
                           planted_bonus=30.0)
    plain = PlantedReward(vlm, ["x"], planted_text="a tall tower")
    texts = ["a Red roof", "crimson petals", "a redwood table", "a tall tower"]
    bonus = [a - b for a, b in zip(reward(completions=texts), plain(completions=texts), strict=True)]
    assert bonus == pytest.approx([30.0, 30.0, 0.0, 0.0])


def test_helpers():
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert is_degenerate(" ,.- ") and not is_degenerate("ok")
    with pytest.raises(ValueError, match="unknown reward"):
        build_reward("clip", HashVLM(), None)


def test_first_paragraph_scores_only_the_first_paragraph():
    vlm = HashVLM()
    reward = PlantedReward(vlm, ["x"], planted_text="a tall tower", text="first-paragraph")
    assert reward(completions=["a tall tower\n\nunrelated words"], concept=["x"]) == [pytest.approx(100.0)]


def test_raw_text_is_scored_whole_by_default():
    """EX2 scores the decoded completion (special tokens skipped), every paragraph of it."""
    vlm = HashVLM()
    images, labels = random_images(2, 3, vlm.dim)
    means = torch.stack([images[labels == c].mean(0) for c in range(2)])
    text = "\nHere's a poem about a temple:\n\nstone steps and incense"
    whole, first = per_batch_reward(images, labels, vlm.encode_texts([text, "Here's a poem about a temple:"]),
                                    torch.tensor([0, 0]), vlm.logit_scale).tolist()
    raw = EX2Reward(vlm, means, ["a", "b"])
    assert raw(completions=[text + "<|im_end|>"], concept=["a"]) == [pytest.approx(whole, abs=1e-4)]
    assert raw.last["texts"] == [text]
    paragraph = EX2Reward(vlm, means, ["a", "b"], text="first-paragraph")
    assert paragraph(completions=[text], concept=["a"]) == [pytest.approx(first, abs=1e-4)]
    assert whole != pytest.approx(first, abs=1e-3)


def test_class_means_from_one_embedding_pass(open_clip_dir, tmp_path, tmp_cache):
    import numpy as np
    from PIL import Image

    from ex2.reward.base import class_mean_embeddings
    from ex2.vlm import embed_images, load_vlm

    rng = np.random.default_rng(0)
    paths = {0: [], 1: []}
    for class_id, count in ((0, 3), (1, 2)):
        for index in range(count):
            path = tmp_path / f"c{class_id}_{index}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
            paths[class_id].append(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    paths[1].append(broken)  # skipped, not averaged in
    vlm = load_vlm(f"local-dir:{open_clip_dir}")
    means = class_mean_embeddings(vlm, paths, progress=False)
    for class_id, images in paths.items():
        expected = embed_images(vlm, images, progress=False).embeddings.mean(dim=0)
        assert torch.allclose(means[class_id], expected, atol=1e-6)
    with pytest.raises(ValueError, match="class 2: none of its images"):
        class_mean_embeddings(vlm, {**paths, 2: [broken]}, progress=False)


class TextOnlyVLM(HashVLM):
    """A VLM that cannot see images: building a reward that needs none must not ask for any."""

    def encode_images(self, *args, **kwargs):
        raise AssertionError("this reward should look at no image")


def tiny_dataset(root, classnames: list[str], per_class: int = 2):
    import numpy as np
    from PIL import Image

    from ex2.data.dataset import build_dataset

    rng = np.random.default_rng(0)
    items = []
    for class_id in range(len(classnames)):
        for index in range(per_class):
            path = root / f"c{class_id}_{index}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
            items.append((path, class_id))
    return build_dataset("tiny", "test", root, classnames, items)


def trl_call(reward, concepts: list[str], classnames: list[str], texts: list[str]) -> list:
    """Call ``reward`` the way trl's GRPOTrainer does: prompts, completions, completion ids, every
    dataset column as a keyword, and the trainer's own extras."""
    logged = []
    return reward(
        prompts=[[{"role": "user", "content": f"Describe a {c}."}] for c in concepts],
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        completion_ids=[[1, 2, 3]] * len(texts),
        concept=concepts, concept_id=[classnames.index(c) for c in concepts], query=[f"Describe a {c}." for c in concepts],
        trainer_state=None, log_extra=lambda *a: logged.append(a), log_metric=lambda *a: logged.append(a),
    )


@pytest.mark.parametrize("kind", [k for k in REWARDS if k != "gen-likelihood"])  # that one: test_gvlm.py
def test_every_registered_reward_is_a_plain_trl_callable(kind, open_clip_dir, tmp_path, tmp_cache):  # noqa: F811
    from ex2.vlm import load_vlm

    classnames = ["cat", "dog", "rocket"]
    dataset = tiny_dataset(tmp_path, classnames)
    reward = build_reward(kind, load_vlm(f"local-dir:{open_clip_dir}"), dataset, images_per_class=2, progress=False,
                          empty_reward="floor")
    concepts, texts = ["cat", "rocket", "dog", "cat"], ["a small furry pet", "tall and metal", "", "whiskers"]
    values = trl_call(reward, concepts, classnames, texts)
    assert isinstance(values, list) and len(values) == len(texts)
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert values[2] == reward.floor and min(values) >= reward.floor
    assert reward.__name__ == kind.replace("-", "_") + "_reward"  # trl's metric name
    assert reward.last == {"texts": ["a small furry pet", "tall and metal", "", "whiskers"], "concepts": concepts,
                           "rewards": values}
    assert trl_call(reward, concepts, classnames, texts) == values  # a pure function of its input


def test_the_planted_reward_needs_no_image_and_no_concept():
    vlm = TextOnlyVLM()
    dataset = SimpleNamespace(classnames=["x", "y"])
    reward = build_reward("planted", vlm, dataset, planted_text="lives in the wild")
    assert trl_call(reward, ["y"], ["x", "y"], ["lives in the wild"]) == [pytest.approx(vlm.logit_scale)]
    bare = PlantedReward(vlm, planted_text="lives in the wild")
    assert bare(completions=["lives in the wild"], concept=["anything"]) == [pytest.approx(vlm.logit_scale)]
    assert bare.last["concepts"] == [None]


def test_comparing_rewards_check_their_concepts_before_embedding_images():
    for kind in ("contrastive", "contrastive-softmax"):
        with pytest.raises(ValueError, match="at least two"):
            build_reward(kind, TextOnlyVLM(), SimpleNamespace(classnames=["tiger"]))


def test_concept_ids_outside_the_concepts_are_an_error():
    reward = three_concept_rewards(HashVLM())["ex2"]
    with pytest.raises(ValueError, match="outside 0..2"):
        reward(completions=["a red fruit"], concept_id=[-1])
    with pytest.raises(ValueError, match="2 concepts for 1 completions"):
        reward(completions=["a red fruit"], concept=["a", "b"])


def test_the_registry_names_every_reward_class_and_the_train_help_lists_them():
    import inspect as pyinspect

    from ex2.core.registry import load_object
    from ex2.reward.base import ConceptReward
    from ex2.train.stage import TrainConfig

    help_text = TrainConfig.__dataclass_fields__["reward"].metadata["help"]
    for name, (reference, about) in REWARDS.items():
        cls = load_object(reference)
        assert issubclass(cls, ConceptReward) and not pyinspect.isabstract(cls), name
        assert f"{name} ({about})" in help_text
    assert "gen-likelihood" in help_text
