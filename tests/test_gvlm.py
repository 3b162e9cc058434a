"""Generative VLMs: a tiny random-init LLaVA built here, loaded as ``gen:local-dir:PATH``."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import PIL.Image
import pytest
import torch

from ex2.classify import generative as gc
from ex2.cli import main
from ex2.core.names import ModelNameError, parse_gvlm_name, parse_vlm_name
from ex2.gvlm import GenerativeVLM, load_gvlm

SHARED_CACHE = os.environ.get("EX2_TEST_CACHE", os.path.expanduser("~/.cache/ex2-test"))


@pytest.fixture(scope="module")
def gvlm_dir(tmp_path_factory):
    from ex2.gvlm.testing import build_tiny_llava

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EX2_CACHE", SHARED_CACHE)  # the converted smollm2 tokenizer
        return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def gvlm(gvlm_dir) -> GenerativeVLM:
    return load_gvlm(f"gen:local-dir:{gvlm_dir}", device="cpu")


def noise_image(seed: int, size: tuple[int, int] = (40, 48)) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


# --- names and loading --------------------------------------------------------------------------


def test_gen_names_parse_to_the_generative_backend(gvlm_dir):
    assert parse_gvlm_name("gen:llava-hf/llava-1.5-7b-hf").model == "llava-hf/llava-1.5-7b-hf"
    assert parse_vlm_name(f"gen:local-dir:{gvlm_dir}").backend == "generative"
    assert parse_vlm_name("ViT-B-32:openai").backend == "open_clip"  # unchanged
    for bad in ("gen:", "gen:not a name", f"gen:local-dir:{gvlm_dir}/missing", "llava-hf/llava"):
        with pytest.raises(ModelNameError, match="gen:|generative VLM"):
            parse_gvlm_name(bad)


def test_load_vlm_returns_a_generative_vlm_for_gen_names(gvlm_dir):
    from ex2.vlm import load_vlm

    vlm = load_vlm(f"gen:local-dir:{gvlm_dir}", device="cpu")
    assert isinstance(vlm, GenerativeVLM) and vlm.identity == f"gen:{gvlm_dir}"
    with pytest.raises(TypeError, match="generative VLM"):
        vlm.encode_texts(["a cat"])


def test_a_hub_id_missing_from_the_cache_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("EX2_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError, match="EX2_ALLOW_DOWNLOAD"):
        load_gvlm("gen:nobody/no-such-vlm", device="cpu")


# --- generation, log-probabilities, features ------------------------------------------------------


def test_batched_generation_matches_one_image_at_a_time(gvlm):
    images = [noise_image(i) for i in range(3)]
    prompts = [gvlm.prompt(q) for q in ("What is this?", "What type of object is in this photo, exactly?", "Name it.")]
    batched = gvlm.generate(images, prompts, max_new_tokens=6, batch_size=3)
    single = [gvlm.generate([image], [prompt], max_new_tokens=6)[0] for image, prompt in zip(images, prompts, strict=True)]
    assert batched == single and all(batched)
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        gvlm.generate(images, prompts[:2])


def test_cached_continuation_logprobs_equal_full_forwards(gvlm):
    image = noise_image(0)
    prompt = gvlm.prompt("What type of object is in this photo?", answer_prefix="This is a photo of a")
    assert prompt.endswith("ASSISTANT: This is a photo of a") and "<image>\n" in prompt
    candidates = [" cat", " dahlia flower", " espresso cup on a wooden table", " motorcycle", " x"]
    for with_image in (image, None):
        text = prompt if with_image else gvlm.prompt("What type of object is in this photo?", image=False)
        state = gvlm.prefix(with_image, text)
        cached = gvlm.continuation_logprobs(state, candidates, batch_size=2)  # chunks of mixed lengths
        for candidate, values in zip(candidates, cached, strict=True):
            full = gvlm.full_logprobs(with_image, text, candidate)
            assert values.shape == (len(gvlm.token_ids(candidate)),)
            assert torch.allclose(values, full, atol=1e-4), candidate
            assert (values < 0).all()
    scores = gvlm.score_continuations([image, noise_image(1)], prompt, candidates, "sum")
    assert scores.shape == (2, len(candidates))
    assert torch.allclose(scores[0], torch.stack([gvlm.full_logprobs(image, prompt, c).sum() for c in candidates]),
                          atol=1e-4)


def test_features_pool_a_chosen_layer(gvlm):
    images = [noise_image(i) for i in range(3)]
    prompt = gvlm.prompt("What is this?")
    last = gvlm.features(images, prompt, layer=-1, pool="last", batch_size=2)
    mean = gvlm.features(images, prompt, layer=1, pool="mean")
    assert last.shape == mean.shape == (3, gvlm.model.config.text_config.hidden_size)
    assert not torch.allclose(last, mean) and not torch.allclose(last[0], last[1])  # the image matters
    with pytest.raises(ValueError, match="outside"):
        gvlm.features(images, prompt, layer=99)


# --- scoring rules ---------------------------------------------------------------------------------


NAMES = [["cat", "kitten"], ["tabby cat"], ["espresso", "coffee"], ["motorcycle", "motor bike"], ["dahlia"]]


@pytest.mark.parametrize(("answer", "label", "correct"), [
    ("The photo shows a small kitten on a sofa.", 0, True),  # a synonym
    ("Cats!", 0, True),  # case and plural
    ("It is a category of furniture.", 0, False),  # whole words only
    ("A tabby cat.", 1, True),
    ("A tabby cat.", 0, False),  # "cat" inside the longer "tabby cat" names only the tabby
    ("A cup of coffee next to a motor-bike", 3, True),  # hyphen between words
    ("A cup of coffee next to a motor-bike", 2, True),  # open: naming the true class suffices
    ("I cannot tell.", 4, False),
])
def test_open_answers_by_the_matching_rule(answer, label, correct):
    assert gc.open_correct(answer, label, NAMES) is correct


def test_closed_answers_must_name_only_the_true_choice():
    assert gc.closed_correct("Espresso.", 2, [2, 4, 0], NAMES)
    assert not gc.closed_correct("espresso or dahlia", 2, [2, 4, 0], NAMES)  # two listed choices
    assert gc.closed_correct("espresso, not a motorcycle", 2, [2, 4, 0], NAMES)  # motorcycle is no choice
    assert not gc.closed_correct("a dahlia", 2, [2, 4, 0], NAMES)
    assert gc.named_classes("a dahlia and a kitten", NAMES) == [4, 0]


def test_choices_are_seeded_and_hold_the_true_class():
    labels, names = [0, 3, 3, 1, 4], ["e", "d", "c", "b", "a"]
    first = gc.draw_choices(labels, names, 3, seed=7)
    assert first == gc.draw_choices(labels, names, 3, seed=7) != gc.draw_choices(labels, names, 3, seed=8)
    assert all(len(set(c)) == 3 and y in c for c, y in zip(first, labels, strict=True))
    assert gc.draw_choices(labels, names, None, 0, "fixed")[0] == [0, 1, 2, 3, 4]
    every = gc.draw_choices(labels, names, None, 0)
    assert all(sorted(c) == [0, 1, 2, 3, 4] for c in every) and len({tuple(c) for c in every}) > 1
    assert gc.closed_question("What is it?", ["cat", "dog"]) == 'What is it? Choose one from "cat, dog".'
    assert gc.parse_n_choices("all") is None and gc.parse_n_choices("4", 8) == 4
    for bad in ("1", "many", "9"):
        with pytest.raises(ValueError, match="n-choices"):
            gc.parse_n_choices(bad, 8)


def test_synonym_files(tmp_path):
    (tmp_path / "names.txt").write_text("# class, synonyms\ncat, kitten, kitty\ndahlia\n")
    (tmp_path / "names.json").write_text(json.dumps({"Cat": ["kitten"]}))
    assert gc.read_synonyms(tmp_path / "names.txt", ["cat", "dahlia", "rocket"]) == [
        ["cat", "kitten", "kitty"], ["dahlia"], ["rocket"]]
    assert gc.read_synonyms(tmp_path / "names.json", ["cat"]) == [["cat", "kitten"]]
    (tmp_path / "bad.json").write_text(json.dumps({"unicorn": []}))
    with pytest.raises(ValueError, match="bad.json.*unicorn"):
        gc.read_synonyms(tmp_path / "bad.json", ["cat"])


def test_calibration_divides_out_the_prior():
    scores = torch.tensor([[2.0, 0.0], [3.0, 2.5], [1.0, 0.9]])  # the model always leans to class 0
    prior = gc.class_prior(scores[1:])
    assert prior[0] > prior[1] and torch.isclose(prior.sum(), torch.tensor(1.0))
    calibrated = gc.calibrate(scores, prior)
    assert calibrated[2].argmax() == 1 and scores[2].argmax() == 0


def test_open_metrics_keep_clips_keys():
    metrics = gc.answer_metrics([True, False, True, False], [0, 0, 1, 1], [0, 2, 1, 1], 2)  # a wrong answer
    # counts as wrong even when the class passed as its prediction is the label
    assert metrics["acc1"] == 0.5 and metrics["acc5"] is None and metrics["mean_per_class_recall"] == 0.5


# --- the stages ------------------------------------------------------------------------------------


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_likelihood_classification_end_to_end_on_samples(gvlm_dir, shared_cache, tmp_path):
    out = tmp_path / "like"
    argv = ["classify", "--dataset", "samples", "--vlm", f"gen:local-dir:{gvlm_dir}", "--device", "cpu",
            "--method", "likelihood", "--length-norm", "sum", "--no-progress", "--output", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(metrics)
    assert metrics["method"] == "likelihood" and metrics["n_images"] == 80 and metrics["n_classes"] == 8
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 80 and math.isclose(metrics["acc1"], sum(int(r["correct"]) for r in rows) / 80)
    assert (out / "confusion.csv").is_file() and (out / "config.yaml").is_file()

    calibrated = tmp_path / "calibrated"
    assert main([*argv[:-1], str(calibrated), "--calibrate", "--calibration-fraction", "0.2"]) == 0
    metrics = json.loads((calibrated / "metrics.json").read_text())
    assert metrics["calibrated"] and metrics["n_calibration_images"] == 16 and metrics["n_images"] == 64
    held_out = {r["path"] for r in read_csv(calibrated / "predictions.csv")}
    assert len(held_out) == 64  # the 16 prior images are not among the scored ones
    assert math.isclose(sum(metrics["class_prior"].values()), 1.0, rel_tol=1e-5)


class ScriptedVLM:
    """Answers from a script (by the image's size), so the scoring pipeline is checked exactly."""

    identity = "scripted"

    def __init__(self, answers):
        self.answers, self.questions = answers, []

    def prompt(self, question, image=True, answer_prefix="", prompt_format="chat"):
        self.questions.append(question)
        return question

    def generate(self, images, prompts, max_new_tokens=64, batch_size=8):
        return [self.answers[i % len(self.answers)] for i in range(len(images))]


def test_open_and_closed_runs_score_answers(shared_cache, tmp_path):
    from ex2.classify.stage import ClassifyConfig
    from ex2.data import load_dataset

    dataset = load_dataset("samples")
    (tmp_path / "names.txt").write_text("cat, kitten\n")
    # samples lists 10 views per class in class order: a cat answer for every image
    vlm = ScriptedVLM(["A kitten on a rug.", "Probably a cat or a rocket."])
    config = ClassifyConfig(vlm="gen:org/model", method="open", synonyms=str(tmp_path / "names.txt"),
                            answer_match="words", output=str(tmp_path / "open"), progress=False)
    metrics = json.loads((gc.run(config, vlm, dataset) / "metrics.json").read_text())
    # every cat image is right (one answer by a synonym); the rocket images answered "cat or rocket" too
    assert metrics["acc1"] == pytest.approx(15 / 80) and metrics["acc5"] is None
    assert metrics["mean_per_class_recall"] == pytest.approx(1.5 / 8)
    records = [json.loads(line) for line in (tmp_path / "open" / "answers.jsonl").read_text().splitlines()]
    assert records[0]["named"] == ["cat"] and records[1]["named"] == ["cat", "rocket"] and records[1]["correct"]

    config = ClassifyConfig(vlm="gen:org/model", method="closed", n_choices="3", seed=3, answer_match="words",
                            output=str(tmp_path / "closed"), progress=False)
    vlm = ScriptedVLM(["A kitten on a rug.", "Probably a cat or a rocket."])
    metrics = json.loads((gc.run(config, vlm, dataset) / "metrics.json").read_text())
    assert all(q.count(",") == 2 and "Choose one from" in q for q in vlm.questions)
    records = [json.loads(line) for line in (tmp_path / "closed" / "answers.jsonl").read_text().splitlines()]
    for record in records:
        assert len(record["choices"]) == 3 and record["label"] in record["choices"]
        named = [c for c in ("cat", "rocket") if c in record["choices"]] if "rocket" in record["answer"] else []
        assert record["correct"] == (named == [record["label"]])  # "kitten" names no class without synonyms
    assert metrics["acc1"] == pytest.approx(sum(r["correct"] for r in records) / 80) and metrics["n_choices"] == "3"
    assert 0 < metrics["acc1"] < 10 / 80


def test_config_pairs_methods_with_the_right_kind_of_vlm():
    from ex2.classify.stage import ClassifyConfig

    with pytest.raises(ValueError, match="needs a generative VLM"):
        ClassifyConfig(vlm="conse", method="likelihood")
    with pytest.raises(ValueError, match="is a generative VLM"):
        ClassifyConfig(vlm="gen:org/model", method="clip")
    with pytest.raises(ValueError, match="n-choices"):
        ClassifyConfig(vlm="gen:org/model", method="closed", n_choices="one")
    assert ClassifyConfig().method == "clip"  # dual encoders unchanged


def test_the_vllm_backend_names_its_extra(shared_cache, tmp_path, capsys):
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    argv = ["classify", "--vlm", "gen:org/model", "--method", "open", "--gen-backend", "vllm",
            "--output", str(tmp_path / "v")]
    assert main(argv) == 1  # a clear error, printed by the CLI, before any image is read
    assert "pip install 'ex2[vllm]'" in capsys.readouterr().err


@pytest.mark.gpu
def test_cached_logprobs_on_cuda(gvlm_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    vlm = load_gvlm(f"gen:local-dir:{gvlm_dir}", device="cuda", precision="fp32")
    prompt = vlm.prompt("What is this?")
    cached = vlm.continuation_logprobs(vlm.prefix(noise_image(0), prompt), [" a cat", " rocket"])
    for values, candidate in zip(cached, [" a cat", " rocket"], strict=True):
        assert torch.allclose(values, vlm.full_logprobs(noise_image(0), prompt, candidate), atol=1e-3)


def test_probe_on_conse_features_of_samples(shared_cache, tmp_path):
    out = tmp_path / "probe"
    assert main(["probe", "--dataset", "samples", "--vlm", "conse", "--device", "cpu", "--no-progress",
                 "--c", "0.01", "1", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_images"] == 80
    assert metrics["n_images"] == 16 and metrics["n_val"] == 24  # 2 and 3 of each class's 10
    assert set(metrics["val_acc1"]) == {"0.01", "1.0"} and metrics["c"] in (0.01, 1.0)
    assert metrics["acc1"] >= 0.75  # eight photos' augmented views: far above chance (1/8)
    assert {"acc5", "mean_per_class_recall"} <= set(metrics)
    test_paths = {r["path"] for r in read_csv(out / "predictions.csv")}
    assert len(test_paths) == 16


def test_probe_on_generative_hidden_states(gvlm, shared_cache, tmp_path):
    from ex2.probe.stage import ProbeConfig, run

    config = ProbeConfig(vlm="gen:tiny", pool="mean", layer=1, c=[1.0], progress=False, output=str(tmp_path / "p"))
    metrics = json.loads((run(config, gvlm) / "metrics.json").read_text())
    assert metrics["feature_dim"] == 32 and metrics["pool"] == "mean" and metrics["layer"] == 1
    assert 0 <= metrics["acc1"] <= 1


def test_split_per_class_is_disjoint_and_seeded(shared_cache):
    from ex2.data import load_dataset
    from ex2.probe.stage import split_per_class

    dataset = load_dataset("samples")
    held, rest = split_per_class(dataset, 0.3, seed=1)
    assert len(held) == 24 and len(rest) == 56 and not {p for p, _ in held.items} & {p for p, _ in rest.items}
    assert split_per_class(dataset, 0.3, seed=1)[0].items == held.items != split_per_class(dataset, 0.3, 2)[0].items


# --- the reward ------------------------------------------------------------------------------------


def test_gen_likelihood_reward_is_a_trl_callable(gvlm, tmp_path, tmp_cache):
    from test_reward import tiny_dataset, trl_call

    from ex2.reward.registry import build_reward

    classnames = ["cat", "dog", "rocket"]
    dataset = tiny_dataset(tmp_path, classnames)
    reward = build_reward("gen-likelihood", gvlm, dataset, images_per_class=2, progress=False)
    concepts, texts = ["cat", "rocket", "dog", "cat"], ["a small furry pet", "tall and metal", "", "whiskers"]
    values = trl_call(reward, concepts, classnames, texts)
    assert len(values) == 4 and all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert reward.floor == -math.log(len(gvlm.tokenizer)) and min(values) >= reward.floor
    floored = build_reward("gen-likelihood", gvlm, dataset, images_per_class=2, progress=False, empty_reward="floor")
    assert trl_call(floored, concepts, classnames, texts)[2] == reward.floor  # the empty text, when a floor is asked
    assert reward.__name__ == "gen_likelihood_reward"
    assert trl_call(reward, concepts, classnames, texts) == values  # the cached prefixes give the same values

    from ex2.data import load_image

    question = "Describe what a cat looks like."
    with_image, without = gvlm.prompt(question), gvlm.prompt(question, image=False)
    images = [load_image(p) for p in dataset.paths_of(0)]
    expected = (sum(gvlm.full_logprobs(im, with_image, " whiskers").mean() for im in images) / 2
                - gvlm.full_logprobs(None, without, " whiskers").mean())
    assert values[3] == pytest.approx(expected.item(), abs=1e-4)
    assert len(reward._prefixes) == 9  # cat, dog (its empty text is scored too) and rocket x (2 images + no image), each once

    with pytest.raises(ValueError, match="needs a generative VLM"):
        build_reward("gen-likelihood", object(), dataset)
    with pytest.raises(ValueError, match="generative VLM: it has no text embeddings"):
        build_reward("ex2", gvlm, dataset, images_per_class=1, progress=False)  # a dual encoder's reward
