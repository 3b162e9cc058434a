"""Class-name files: JSON lists or one name a line, in class-id order, checked against the dataset."""

from __future__ import annotations

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
