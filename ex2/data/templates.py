"""Query templates as data: the questions asked about each concept, and class-name prompts.

A template holds exactly one ``{}`` for the concept name. ex2's own 25 questions (``describe25``)
ship as a text file beside this module (one template a line); they are not EX2's: EX2's 25 are its
``data_files/mult_template_v1.json`` (github.com/BatsResearch/ex2), which loads as is, as does any
user file (a text file or a JSON list of strings). CLIP's class-name prompts come from open_clip
(``open_clip.zero_shot_metadata``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from ex2.core.io import read_text

TEMPLATE_SETS: dict[str, str] = {
    "describe25": "ex2's own 25 questions about a concept: descriptive, visual, caption, critique, story and "
                  "poem (not EX2's: EX2's are its data_files/mult_template_v1.json)",
    "clip": 'one class-name prompt, "a photo of a {}."',
    "clip_ensemble": "CLIP's 7-prompt ImageNet ensemble of class-name prompts (open_clip's)",
    "clip_80": "CLIP's 80 ImageNet class-name prompts (open_clip's OPENAI_IMAGENET_TEMPLATES)",
}


class TemplateError(ValueError):
    """A template file that cannot be used; the message names the file and line."""


def _check(template: str, where: str) -> str:
    """``template`` if it holds exactly one ``{}`` and formats cleanly, else a TemplateError."""
    count = template.count("{}")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        count = -1  # stray braces such as "{0}" or "{name}"
    if count != 1:
        raise TemplateError(f"{where}: template {template!r} must hold exactly one {{}} for the concept")
    return template


def parse_templates(text: str, source: str) -> list[str]:
    """Templates from a JSON list of strings, or one a line (blank and ``#`` lines skipped)."""
    if text.lstrip().startswith("[") or source.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise TemplateError(f"{source}: not a valid JSON list of strings ({err})") from err
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise TemplateError(f"{source}: expected a JSON list of strings")
        templates = [_check(item, f"{source}: item {i}") for i, item in enumerate(data, start=1)]
    else:
        lines = enumerate(text.splitlines(), start=1)
        templates = [
            _check(line.strip(), f"{source}:{n}")
            for n, line in lines
            if line.strip() and not line.lstrip().startswith("#")
        ]
    if not templates:
        raise TemplateError(f"{source}: no templates found; expected one template with {{}} a line")
    return templates


def open_clip_templates(name: str) -> list[str]:
    """One of open_clip's template tuples (``lambda c: f"a photo of a {c}."``) as ``{}`` templates."""
    from open_clip import zero_shot_metadata

    templates: tuple[Callable[[str], str], ...] = getattr(zero_shot_metadata, name)
    return [template("{}") for template in templates]


def _template_set(name: str) -> list[str]:
    if name == "describe25":
        return parse_templates(
            resources.files("ex2.data").joinpath("templates_describe25.txt").read_text(encoding="utf-8"),
            "template set describe25",
        )
    if name == "clip":
        return ["a photo of a {}."]
    source = {"clip_ensemble": "SIMPLE_IMAGENET_TEMPLATES", "clip_80": "OPENAI_IMAGENET_TEMPLATES"}[name]
    return open_clip_templates(source)


EX2_REPOSITORY = "https://github.com/BatsResearch/ex2"
EX2_FILES = ("mult_template_v1.json",) + tuple(
    f"{name}_class_names.json" for name in ("cub", "fgvc_aircraft", "flowers", "pets", "stanford_cars", "stanford_dogs"))


def ex2_file_hint(path: str | Path) -> str:
    """Where to get one of EX2's data files (``"; ..."``), or "" for any other file."""
    path = Path(path)
    if path.name in EX2_FILES or path.parent.name == "data_files":
        return (f"; it is one of EX2's files: clone {EX2_REPOSITORY} and give the path to its "
                f"data_files/{path.name} (or run from a folder holding that data_files/)")
    return ""


def load_templates(name_or_path: str = "describe25") -> list[str]:
    """A template set (see ``TEMPLATE_SETS``) or a user file of templates."""
    if name_or_path in TEMPLATE_SETS:
        return _template_set(name_or_path)
    if name_or_path == "ex2":
        raise TemplateError(
            "there is no template set 'ex2': ex2's own 25 questions are 'describe25'; EX2's own 25 are "
            f"its data_files/mult_template_v1.json ({EX2_REPOSITORY}): give that file's path")
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise TemplateError(
            f"unknown template set or file {name_or_path!r}; sets: {', '.join(TEMPLATE_SETS)}, "
            f"or a file with one template a line (or a JSON list){ex2_file_hint(path)}"
        )
    return parse_templates(read_text(path, "one template a line, or a JSON list"), str(path))
