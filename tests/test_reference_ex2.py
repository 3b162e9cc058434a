"""ex2 against EX2's own files (its template file, class-name lists and the shape of its outputs).

The files live outside the project, in ``$EX2_REFERENCE_DIR/ex2-paper`` (default
``../shared/reference`` beside the checkout); every test here skips, saying why, without them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ex2.cli import main
from ex2.core.io import read_jsonl
from ex2.data import load_classnames, load_templates
from ex2.generate.stage import clean_description, plan_jobs
from ex2.llm.models import format_prompt

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ex2_files() -> Path:
    root = Path(os.environ.get("EX2_REFERENCE_DIR", REPO.parent / "shared" / "reference")) / "ex2-paper"
    if not (root / "mult_template_v1.json").is_file():
        pytest.skip(f"EX2's reference files are not in {root} (set EX2_REFERENCE_DIR)")
    return root


def test_legacy_round_trip_is_exact_and_labels_each_template(ex2_files, tmp_path):
    source = ex2_files / "inference_output_pets.json"
    templates, names = ex2_files / "mult_template_v1.json", ex2_files / "pets_class_names.json"
    out, back = tmp_path / "pets.jsonl", tmp_path / "pets.json"
    assert main(["generate", "--from-legacy", str(source), "--templates", str(templates), "--classnames",
                 str(names), "--output", str(out), "--legacy-json", str(back)]) == 0
    assert json.loads(back.read_text()) == json.loads(source.read_text())
    records, completions = read_jsonl(out), json.loads(source.read_text())
    ex2_templates, ex2_names = json.loads(templates.read_text()), json.loads(names.read_text())
    assert len(records) == len(ex2_names) * len(ex2_templates) == 925
    expected = [(name, c, template, raw) for c, name in enumerate(ex2_names)
                for template, raw in zip(ex2_templates, completions[c], strict=True)]
    assert [(r["concept"], r["class_id"], r["template"], r["raw"]) for r in records] == expected
    assert all(r["description"] == clean_description(r["raw"]) for r in records)


def test_prompts_from_ex2_files_are_ex2s(ex2_files):
    templates = load_templates(str(ex2_files / "mult_template_v1.json"))
    assert templates == json.loads((ex2_files / "mult_template_v1.json").read_text())
    files = sorted(ex2_files.glob("*_class_names.json"))
    assert len(files) == 6
    for path in files:
        listed = json.loads(path.read_text())
        names = load_classnames(path, len(listed), path.stem)
        assert names == listed
        prompts = [format_prompt(None, job.query, "base") for job in plan_jobs(names, templates)]
        assert prompts == [template.format(name) + "\n\n" for name in listed for template in templates]


def test_ex2_answers_parallel_to_ex2_output_import(ex2_files, tmp_path):
    out = tmp_path / "pets.jsonl"
    assert main(["generate", "--from-legacy", str(ex2_files / "inference_output_pets.json"), "--templates",
                 str(ex2_files / "mult_template_v1.json"), "--classnames", str(ex2_files / "pets_class_names.json"),
                 "--output", str(out)]) == 0
    shape = json.loads((ex2_files / "inference_output_pets.json").read_text())
    no = json.dumps({"choices": [{"message": {"content": '{"explanation": "e", "increases_knowledge": "No"}'}}]})
    answers = [[no] * len(completions) for completions in shape]
    converted = read_jsonl(out)
    texts = [r["description"] for r in converted if r["class_id"] == 3]
    position = next(n for n, text in enumerate(texts) if texts.count(text) == 1)  # repeats share one answer
    answers[3][position] = "{}"
    answers_file = tmp_path / "answers.json"
    answers_file.write_text(json.dumps(answers))
    output = tmp_path / "categories.jsonl"
    assert main(["inspect", "--backend", "openai", "--model", "judge", "--base-url", "http://127.0.0.1:9/v1",
                 "--input", str(out), "--output", str(output), "--from-ex2-answers", str(answers_file),
                 "--no-report"]) == 0
    records = read_jsonl(output)
    assert len(records) == 925
    unparsed = [(r["concept"], r["template"]) for r in records if r["category"] == "unparsed"]
    assert unparsed == [("basset hound", converted[3 * 25 + position]["template"])]
    assert sum(r["category"] == "spurious" for r in records) == 924


@pytest.fixture
def in_ex2_clone(ex2_files, tmp_path, monkeypatch) -> Path:
    """A working folder laid out as a clone of EX2's repository: its data_files/ beside us."""
    (tmp_path / "data_files").symlink_to(ex2_files, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_ex2_pets_config_is_ex2s_setup_and_budget(in_ex2_clone, ex2_files):
    from ex2.train.stage import parse_args, training_budget

    config, args = parse_args(["--config", str(REPO / "configs" / "train_ex2_pets.yaml")])
    assert load_templates(config.templates) == json.loads((ex2_files / "mult_template_v1.json").read_text())
    names = json.loads((ex2_files / "pets_class_names.json").read_text())
    assert load_classnames(config.classnames, 37, "pets") == names
    assert (config.reward_text, config.empty_reward, config.prompt_format) == ("raw", "score", "base")
    assert training_budget(args) == {"updates": 16_000, "generations": 1_000, "completions": 32_000}
    assert args.num_iterations == 4 and args.per_device_train_batch_size == 1


def test_ex2_files_missing_say_where_to_get_them(tmp_path, monkeypatch):
    from ex2.train.stage import parse_args

    monkeypatch.chdir(tmp_path)
    config, _ = parse_args(["--config", str(REPO / "configs" / "train_ex2_pets.yaml")])
    with pytest.raises(ValueError, match="BatsResearch/ex2 .*data_files/mult_template_v1.json"):
        load_templates(config.templates)
    with pytest.raises(FileNotFoundError, match="BatsResearch/ex2 .*data_files/pets_class_names.json"):
        load_classnames(config.classnames)


def test_ex2s_class_names_against_another_dataset_name_both_counts(ex2_files, tmp_path, capsys):
    names = str(ex2_files / "pets_class_names.json")
    assert main(["classify", "--dataset", "samples", "--classnames", names, "--output", str(tmp_path / "c")]) == 1
    assert "holds 37 class names but dataset samples" in capsys.readouterr().err
