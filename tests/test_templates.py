"""Query templates: the shipped sets and user files (line-per-template or a JSON list)."""

from __future__ import annotations

import json

import pytest

from ex2.data import TEMPLATE_SETS, TemplateError, load_templates


def test_describe25_set_has_25_distinct_templates_with_one_slot():
    templates = load_templates()
    assert templates == load_templates("describe25")
    assert len(templates) == 25 and len(set(templates)) == 25
    assert templates[0] == "Describe a photo of a {}."
    assert all(t.count("{}") == 1 and t.format("sea otter") != t for t in templates)
    assert "Write a short poem about a {}." in templates


def test_no_set_is_named_after_ex2():
    """ex2's own questions are not EX2's: the name 'ex2' points to EX2's file instead."""
    with pytest.raises(TemplateError, match="describe25.*mult_template_v1.json.*BatsResearch/ex2"):
        load_templates("ex2")
    assert all("ex2" not in name for name in TEMPLATE_SETS)


def test_a_missing_ex2_file_says_where_to_get_it(tmp_path):
    with pytest.raises(TemplateError, match="BatsResearch/ex2.*data_files/mult_template_v1.json"):
        load_templates(str(tmp_path / "data_files" / "mult_template_v1.json"))
    with pytest.raises(TemplateError) as err:
        load_templates(str(tmp_path / "mine.txt"))
    assert "BatsResearch" not in str(err.value)


def test_class_name_sets_for_the_classifier():
    assert load_templates("clip") == ["a photo of a {}."]
    ensemble = load_templates("clip_ensemble")
    assert len(ensemble) == 7 and "itap of a {}." in ensemble
    assert set(TEMPLATE_SETS) == {"describe25", "clip", "clip_ensemble", "clip_80"}
    assert all(load_templates(name) for name in TEMPLATE_SETS)


@pytest.mark.parametrize(
    ("name", "source", "count"),
    [("clip_ensemble", "SIMPLE_IMAGENET_TEMPLATES", 7), ("clip_80", "OPENAI_IMAGENET_TEMPLATES", 80)],
)
def test_clip_sets_are_open_clips_templates(name, source, count):
    from open_clip import zero_shot_metadata

    templates = load_templates(name)
    assert len(templates) == count and all(t.count("{}") == 1 for t in templates)
    expected = [template("sea otter") for template in getattr(zero_shot_metadata, source)]
    assert [t.format("sea otter") for t in templates] == expected
    assert load_templates("clip_80")[0] == "a bad photo of a {}."


def test_line_file_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my questions\nWhat colour is a {}?\n\n  Draw a {}.  \n")
    assert load_templates(str(path)) == ["What colour is a {}?", "Draw a {}."]


def test_json_list_file_loads_as_is(tmp_path):
    path = tmp_path / "ex2_templates.json"
    path.write_text(json.dumps(["Describe the {}.", "What does the {} look like?"]))
    assert load_templates(str(path)) == ["Describe the {}.", "What does the {} look like?"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "two.txt",
            "Describe a {}.\nCompare a {} with a {}.\n",
            r"two.txt:2: template 'Compare a {} with a {}.'",
        ),
        (
            "none.txt",
            "Describe a photo.\n",
            r"none.txt:1: template 'Describe a photo.' must hold exactly one",
        ),
        ("named.txt", "ok {}\nDescribe a {name} and {}.\n", r"named.txt:2: template"),
        ("list.json", '["ok {}", "no slot"]', r"list.json: item 2: template 'no slot'"),
        ("dict.json", '{"a": "b {}"}', r"dict.json: expected a JSON list of strings"),
        ("broken.json", '["a {}",', r"broken.json: not a valid JSON list"),
        ("empty.txt", "# nothing\n\n", r"empty.txt: no templates found"),
    ],
)
def test_bad_template_files_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TemplateError, match=message):
        load_templates(str(path))


def test_unknown_set_lists_the_valid_ones():
    with pytest.raises(
        TemplateError, match=r"unknown template set or file 'menon'; sets: describe25, clip, clip_ensemble"
    ):
        load_templates("menon")
