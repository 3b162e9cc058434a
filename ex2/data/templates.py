"""Query templates as data: the questions asked about each concept, and class-name prompts.

A template holds exactly one ``{}`` for the concept name. EX2's questions ship as a text file
beside this module (one template a line); CLIP's class-name prompts come from open_clip
(``open_clip.zero_shot_metadata``). A user file may be a text file or a JSON list of strings, so
EX2's original template file loads as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

TEMPLATE_SETS: dict[str, str] = {
    "ex2": "25 questions about a concept: descriptive, visual, caption, critique, story and poem",
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
    if name == "ex2":
        return parse_templates(
            resources.files("ex2.data").joinpath("templates_ex2.txt").read_text(encoding="utf-8"),
            "template set ex2",
        )
    if name == "clip":
        return ["a photo of a {}."]
    source = {"clip_ensemble": "SIMPLE_IMAGENET_TEMPLATES", "clip_80": "OPENAI_IMAGENET_TEMPLATES"}[name]
    return open_clip_templates(source)


def load_templates(name_or_path: str = "ex2") -> list[str]:
    """A template set (see ``TEMPLATE_SETS``) or a user file of templates."""
    if name_or_path in TEMPLATE_SETS:
        return _template_set(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise TemplateError(
            f"unknown template set or file {name_or_path!r}; sets: {', '.join(TEMPLATE_SETS)}, "
            "or a file with one template a line (or a JSON list)"
        )
    return parse_templates(path.read_text(encoding="utf-8"), str(path))
