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
from ex2.data import load_classnames, load_templates
from ex2.generate import clean_description, plan_jobs
from ex2.io import read_jsonl
from ex2.llm import format_prompt

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
