"""ex2 knowledge: parsing answers, pairs, analogue filtering, resuming, --from-json, WordNet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ex2.cli import main
from ex2.core.io import partial_path, read_jsonl
from ex2.knowledge.answers import answer_text, parse_items
from ex2.knowledge.pairs import nearest_pairs
from ex2.knowledge.records import load_knowledge
from ex2.knowledge.stage import answers_path

CONCEPTS = ["red apple", "green leaf", "blue sky"]

MESSY = [
    ("Sure! Here are some features:\n\n1. **Round shape**\n2) Shiny, red skin.\n- a short stem\n"
     "Hope this helps!", "attributes", ["round shape", "shiny, red skin", "a short stem"]),
    ("* Tomato: also red and round\n* Cherry (smaller)\n* A red apple\n* Tomato", "analogous", ["tomato", "cherry"]),
    ("Tomatoes, cherries and plums.", "analogous", ["tomatoes", "cherries", "plums"]),
    ("A red apple in a photo looks like many other round fruits.\nPlum", "analogous", ["plum"]),
    ("Colours:\n- LED-like glow\n- 1.5 cm stem", "attributes", ["LED-like glow", "1.5 cm stem"]),
    ("   \n\n", "attributes", []),
    ("It is red. Its skin, which is thin and smooth, shines in the light of a sunny day. Small", "attributes",
     ["it is red", "its skin, which is thin and smooth, shines in the light of a sunny day", "small"]),
]


@pytest.mark.parametrize(("answer", "kind", "expected"), MESSY)
def test_messy_answers_become_single_items(answer, kind, expected):
    assert parse_items(answer, kind, concept="red apple") == expected


def test_answer_text_drops_echo_and_stops_at_special_tokens():
    assert answer_text("Q?\n\n- a<|im_end|>- b", prompt="Q?\n\n") == "- a"
    assert answer_text("<|im_start|>assistant- x</s>junk", special_tokens=["<|im_start|>assistant"]) == "- x"
    assert parse_items("- " + "word " * 30, "attributes") == []  # a rambling item is no feature
    assert len(parse_items("\n".join(f"- f{i}" for i in range(30)), "attributes", max_items=4)) == 4
    cut = "It is red. Its skin shines in the light of a sunny day. Small"
    assert parse_items(cut, "attributes", complete=False) == ["it is red", "its skin shines in the light of a sunny day"]
    assert parse_items("- round\n- shiny\n- a short st", "attributes", complete=False) == ["round", "shiny"]


def test_nearest_pairs_are_symmetric_and_skip_self():
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0]]), dim=-1)
    assert nearest_pairs(emb, 1) == [(0, 1), (1, 0), (1, 2), (2, 1)]


class FakeSampler:
    """Answers by question kind; counts what it was asked; can fail after some batches."""

    def __init__(self, tokenizer, fail_after: int | None = None):
        self.tokenizer, self.fail_after, self.asked = tokenizer, fail_after, []

    def generate(self, prompt_ids, seeds):
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise RuntimeError("killed")
        prompts = self.tokenizer.batch_decode(prompt_ids)
        self.asked += prompts
        return [self._answer(p) + self.tokenizer.eos_token for p in prompts]  # finished answers

    @staticmethod
    def _answer(prompt: str) -> str:
        if "but not" in prompt:
            return "- a ruby\n- a tomato"
        if "look a lot like" in prompt:
            return "- green leaf\n- a tomato"  # the first is another class of the dataset
        if "look different" in prompt:
            return "1. smooth skin\n2. curved outline"
        return "Here you go:\n- round shape\n- shiny skin"


class WordsVLM:
    """Bag-of-words text embeddings: the same words give similarity 1."""

    def encode_texts(self, texts):
        rows = torch.zeros(len(texts), 97)
        for i, text in enumerate(texts):
            for word in text.lower().strip(".").split():
                rows[i, sum(map(ord, word)) % 97] += 1
        return torch.nn.functional.normalize(rows, dim=-1)


def _knowledge(tiny_llm, open_clip_dir, out: Path, *extra: str) -> int:
    concepts = out.parent / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    return main(["knowledge", "--concepts", str(concepts), "--llm", str(tiny_llm), "--vlm",
                 f"local-dir:{open_clip_dir}", "--kinds", "attributes,analogous,ovo", "--pairs", "nearest:1",
                 "--analogous-max-similarity", "0.99", "--batch-size", "2", "--output", str(out), *extra])


def test_analogues_like_another_class_are_asked_again_and_runs_resume(tiny_llm, open_clip_dir, tmp_path, tmp_cache,
                                                                       monkeypatch):
    import ex2.knowledge.stage
    import ex2.llm.samplers
    from ex2.llm.models import load_tokenizer

    monkeypatch.setattr(ex2.knowledge.stage, "load_vlm", lambda *a, **k: WordsVLM())
    tokenizer = load_tokenizer(str(tiny_llm))
    killed = FakeSampler(tokenizer, fail_after=2)
    monkeypatch.setattr(ex2.llm.samplers, "load_sampler", lambda *a, **k: killed)
    out = tmp_path / "knowledge.jsonl"
    with pytest.raises(RuntimeError):
        _knowledge(tiny_llm, open_clip_dir, out)
    assert len(read_jsonl(partial_path(out))) == 1 + 2 and not out.exists()
    fresh = FakeSampler(tokenizer)
    monkeypatch.setattr(ex2.llm.samplers, "load_sampler", lambda *a, **k: fresh)
    assert _knowledge(tiny_llm, open_clip_dir, out) == 0
    assert len(killed.asked) == 2 and not any(p in killed.asked for p in fresh.asked)
    records = read_jsonl(out)
    by_kind = {k: [r for r in records if r["kind"] == k] for k in ("attributes", "analogous", "ovo")}
    assert {r["text"] for r in by_kind["attributes"]} == {"round shape", "shiny skin"}
    apple = [r["text"] for r in by_kind["analogous"] if r["concept"] == "red apple"]
    assert apple == ["a tomato", "a ruby"]  # "green leaf" dropped, then asked again avoiding it
    leaf = [r["text"] for r in by_kind["analogous"] if r["concept"] == "green leaf"]
    assert "green leaf" not in leaf
    assert sum("but not green leaf" in p for p in fresh.asked) >= 1
    pairs = {(r["concept"], r["other_concept"]) for r in by_kind["ovo"]}
    assert all((b, a) in pairs for a, b in pairs) and len(pairs) >= 2
    assert all(r["source"] == "llm" and r["model"] == str(tiny_llm) for r in records)
    assert not partial_path(out).exists() and len(read_jsonl(answers_path(out))) == 1 + len(fresh.asked) + 2
    knowledge, provenance = load_knowledge(out)
    assert knowledge["attributes"]["red apple"] == ["round shape", "shiny skin"] and provenance["n_records"] == len(records)


def test_from_json_asks_nothing_and_checks_its_input(tmp_path, tmp_cache, capsys):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    att, ovo = tmp_path / "att.json", tmp_path / "ovo.json"
    att.write_text(json.dumps({"Red_Apple": ["round", "round", " "], "blue sky": ["clouds"]}))
    ovo.write_text(json.dumps({"red apple": {"green leaf": ["red colour"]}}))
    out = tmp_path / "k.jsonl"
    assert main(["knowledge", "--concepts", str(concepts), "--kinds", "attributes,ovo", "--from-json",
                 f"attributes={att}", "--from-json", f"ovo={ovo}", "--output", str(out)]) == 0
    records = read_jsonl(out)
    assert [(r["concept"], r["kind"], r["text"], r["other_concept"]) for r in records] == [
        ("red apple", "attributes", "round", None), ("blue sky", "attributes", "clouds", None),
        ("red apple", "ovo", "red colour", "green leaf")]
    assert records[0]["source"] == f"json:{att}"
    att.write_text(json.dumps({"purple cow": ["spots"]}))
    assert main(["knowledge", "--concepts", str(concepts), "--kinds", "attributes", "--from-json",
                 f"attributes={att}", "--output", str(tmp_path / "bad.jsonl")]) == 1
    assert "'purple cow' is no concept" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["knowledge", "--from-json", "colours=x.json"])


def test_wordnet_synonyms_offline(tmp_cache):
    from ex2.knowledge.wordnet import wordnet, wordnet_synonyms

    try:
        reader = wordnet()
    except ValueError as err:
        pytest.skip(f"no WordNet data here: {err}")
    words = ["a photo of a motorcycle.", "a motor vehicle with two wheels and a strong frame"]

    def encode(texts):  # the gloss of the motor-vehicle sense is nearest the name
        return torch.nn.functional.normalize(torch.tensor([[1.0, 0.1] if t in words or "motor" in t
                                                           else [0.0, 1.0] for t in texts]), dim=-1)

    assert wordnet_synonyms(reader, "motorcycle", encode) == ["bike"]
    assert wordnet_synonyms(reader, "qwertyzzz", encode) == []
    flipped = wordnet_synonyms(reader, "rocket", lambda ts: torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0] if ("rocket" in t and "photo" in t) or "salad" in t else [0.0, 1.0]
                      for t in ts]), dim=-1))
    assert "arugula" in flipped  # the plant sense, chosen by its gloss


def test_a_second_knowledge_run_into_one_output_is_refused(tmp_path, capsys, lock_holder):
    out = tmp_path / "k.jsonl"
    pid = lock_holder(out, "ex2 knowledge")
    argv = ["knowledge", "--dataset", "samples", "--llm", "ex2-test-org/not-cached-llm", "--output", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{out} is being written by pid {pid}" in err and "ex2 knowledge" in err
    assert not out.exists() and not partial_path(out).exists()


def test_a_nan_temperature_is_refused_before_anything(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["knowledge", "--dataset", "samples", "--temperature", "nan", "--output", str(tmp_path / "k.jsonl")])
    assert "--temperature" in capsys.readouterr().err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("records, message", [
    ([], "no knowledge records"),
    ([{"concept": 3, "kind": "attributes", "text": "furry"}], "record 1 has concept 3; expected a non-empty string"),
    ([{"concept": "cat", "kind": "attributes", "text": ["furry", "small"]}], "record 1 has text ['furry', 'small']"),
    ([{"concept": "cat", "kind": "ovo", "text": "furry"}], "ovo record 1 lacks other_concept"),
    ([{"concept": "zebra", "kind": "attributes", "text": "striped"}], "none of its concepts is a class of the dataset"),
])
def test_knowledge_that_cannot_be_coders_is_refused_naming_the_file(tmp_path, records, message):
    from ex2.core.io import write_jsonl

    path = write_jsonl(tmp_path / "k.jsonl", records)
    with pytest.raises(ValueError) as err:
        load_knowledge(path, ["cat", "dog"])
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
