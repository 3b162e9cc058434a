"""Class-name files: JSON lists or one name a line, in class-id order, checked against the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ex2.data import DatasetError, ImageDataset, apply_classnames, load_classnames


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_json_list_and_text_file_give_the_same_names(tmp_path):
    json_file = write(tmp_path / "names.json", '["Abyssinian", " american bulldog ", "Bengal"]')
    text_file = write(tmp_path / "names.txt", "# pets\nAbyssinian\n\namerican bulldog\nBengal\n")
    expected = ["Abyssinian", "american bulldog", "Bengal"]
    assert load_classnames(json_file, 3, "pets") == expected
    assert load_classnames(text_file, None, "pets") == expected
    assert load_classnames(write(tmp_path / "names", '["a_b"]')) == ["a_b"]  # JSON by content; kept as written


@pytest.mark.parametrize(("name", "text", "message"), [
    ("n.json", '{"0": "cat"}', "expected a JSON list of class names"),
    ("n.json", '["cat", 3]', "expected a JSON list of class names"),
    ("n.json", "[cat", "not valid JSON"),
    ("n.txt", "# only a comment\n", "no class names found"),
    ("n.json", '["cat", ""]', "class id 1 has an empty name"),
    ("n.txt", "cat\ndog\ncat\n", "listed twice: 'cat'"),
])
def test_bad_files_name_the_file_and_what_was_expected(tmp_path, name, text, message):
    path = write(tmp_path / name, text)
    with pytest.raises(ValueError, match=message) as err:
        load_classnames(path, None, "pets")
    assert str(path) in str(err.value)


def test_count_must_match_and_the_error_names_both_counts_and_the_file(tmp_path):
    path = write(tmp_path / "names.txt", "cat\ndog\n")
    with pytest.raises(ValueError) as err:
        load_classnames(path, 3, "dataset pets (test)")
    assert str(err.value).startswith(str(path)) and "holds 2 class names but dataset pets (test) has 3 classes" in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such class-name file"):
        load_classnames(tmp_path / "missing.json", 2, "pets")


def test_apply_classnames_renames_classes_and_keeps_the_items(tmp_path):
    items = [(tmp_path / "a.jpg", 0), (tmp_path / "b.jpg", 1)]
    dataset = ImageDataset("pets", "test", tmp_path, ["abyssinian", "bengal"], items)
    renamed = apply_classnames(dataset, write(tmp_path / "n.txt", "Abyssinian\nBengal\n"))
    assert renamed.classnames == ["Abyssinian", "Bengal"] and renamed.items == items
    assert dataset.classnames == ["abyssinian", "bengal"]  # the original is left alone
    with pytest.raises(DatasetError, match="holds 1 class names but dataset pets"):
        apply_classnames(dataset, write(tmp_path / "one.txt", "Abyssinian\n"))


def two_names(tmp_path: Path) -> Path:
    return write(tmp_path / "two.json", '["first class", "second class"]')


def samples_count() -> int:
    from ex2.data import SAMPLE_CONCEPTS

    return len(SAMPLE_CONCEPTS)


def test_load_dataset_applies_a_class_name_file(tmp_path):
    from ex2.data import load_dataset

    names = [f"name {i}" for i in range(samples_count())]
    path = write(tmp_path / "names.txt", "\n".join(names))
    assert load_dataset("samples", classnames=path).classnames == names
    with pytest.raises(DatasetError, match=rf"holds 2 class names but dataset samples .* has {samples_count()} classes"):
        load_dataset("samples", classnames=two_names(tmp_path))


def test_train_refuses_a_class_name_count_unlike_the_dataset_before_writing(tmp_path):
    from ex2.train.stage import TrainConfig, run, trainer_config

    config = TrainConfig(dataset="samples", classnames=str(two_names(tmp_path)))
    out = tmp_path / "run"
    with pytest.raises(DatasetError, match=rf"holds 2 class names but .* has {samples_count()} classes"):
        run(config, trainer_config(config, output_dir=str(out), max_steps=1))
    assert not out.exists()


def test_classify_refuses_a_class_name_count_unlike_the_dataset(tmp_path, capsys):
    from ex2.cli import main

    out = tmp_path / "cls"
    assert main(["classify", "--dataset", "samples", "--classnames", str(two_names(tmp_path)),
                 "--output", str(out), "--no-progress"]) == 1
    assert "holds 2 class names but dataset samples" in capsys.readouterr().err
    assert not out.exists()


def test_inspect_names_classes_from_a_file_and_refuses_another_count(tmp_path):
    from ex2.inspect.stage import InspectConfig, load_inputs, run

    source = tmp_path / "d.jsonl"
    records = [{"concept": c, "class_id": i, "description": f"text {n}"}
               for i, c in enumerate(["a", "b", "c"]) for n in range(2)]
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    three = write(tmp_path / "three.txt", "Abyssinian\nBengal\nBirman\n")
    named = load_inputs(InspectConfig(input=str(source), classnames=str(three)))
    assert [r["concept"] for r in named] == ["Abyssinian"] * 2 + ["Bengal"] * 2 + ["Birman"] * 2
    out = tmp_path / "cat.jsonl"
    with pytest.raises(ValueError, match=rf"holds 2 class names but {source} \(its descriptions\) has 3 classes"):
        run(InspectConfig(input=str(source), classnames=str(two_names(tmp_path)), output=str(out)))
    assert not out.exists()
