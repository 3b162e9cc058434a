"""Description files: ours (descriptions.jsonl, categories.jsonl) and the peers' JSON ``{class: [texts]}``,
read and matched to a dataset's classes.

A description file's keys match the classes by name (case, spaces, hyphens and underscores
ignored) or, for a JSON file in the dataset's class order, by position as DCLIP does; keys of
classes the dataset lacks are reported and left unused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ex2.classify import zeroshot
from ex2.core.io import read_jsonl
from ex2.core.text import record_text, resolve_text_field


@dataclass
class Descriptions:
    """Texts per concept as named in the file, in its order (filtered concepts keep an empty list).

    A JSON file's lists are kept exactly as written (repeats and empty strings included: CuPL
    weighs repeated prompts, DCLIP scores an empty list); our JSONL's texts are stripped and
    deduplicated. ``--method ex2`` drops repeats of either when it builds its texts.
    """

    by_concept: dict[str, list[str]]
    provenance: dict = field(default_factory=dict)  # source file, its model(s), adapter(s)


def _one_or_many(values: list) -> object:
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    return distinct[0] if len(distinct) == 1 else (distinct or None)


def _read_descriptor_json(path: Path) -> dict[str, list[str]]:
    """DCLIP's form: ``{class: [descriptor, ...]}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected {{class: [descriptor, ...]}}") from err
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(d, str) for d in v) for v in data.values()
    ):
        raise ValueError(f"{path}: expected a JSON object mapping each class to a list of descriptor strings")
    return {str(k): list(v) for k, v in data.items()}


def _category_records(path: Path) -> list[dict]:
    """Records carrying inspection labels: ``path`` itself or its sibling categories.jsonl."""
    records = read_jsonl(path, required=("concept", "description"))
    if all("category" in r for r in records):
        return records
    sibling = path.with_name("categories.jsonl")
    if sibling != path and sibling.is_file():
        return read_jsonl(sibling, required=("concept", "description", "category"))
    raise ValueError(
        f"{path}: records lack the 'category' field needed by --categories; pass the categories.jsonl "
        "written by `ex2 inspect` as --descriptions"
    )


def _keep(record: dict, categories: list[str]) -> bool:
    wanted = set(categories)
    return record.get("category") in wanted or ("informative" in wanted and bool(record.get("informative")))


def adapter_vlm(adapter: str | None) -> str | None:
    """The VLM an adapter was aligned against, from the config.yaml of its training run (the
    adapter folder or one of its two parents); None when unknown."""
    if not adapter:
        return None
    folder = Path(adapter)
    for candidate in (folder, *list(folder.parents)[:2]):
        config = candidate / "config.yaml"
        if config.is_file():
            try:
                data = yaml.safe_load(config.read_text())
            except yaml.YAMLError:
                return None
            return data.get("vlm") if isinstance(data, dict) else None
    return None


def load_descriptions(path: str | Path, categories: list[str] | tuple = (),
                      text_field: str = "auto") -> Descriptions:
    """Descriptions per concept from our JSONL (optionally filtered by inspection category; the
    records' ``text_field``: raw, description or auto, :func:`ex2.core.text.resolve_text_field`) or from a
    JSON ``{class: [texts]}`` (DCLIP's, CuPL's, WaffleCLIP's), kept as written."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"descriptions file {path} does not exist (expected .jsonl or .json)")
    provenance: dict = {"path": str(path.resolve())}
    if path.suffix == ".json":
        if categories:
            raise ValueError(f"{path}: a JSON descriptor file has no inspection categories; pass categories.jsonl")
        if text_field == "raw":
            raise ValueError(f"{path}: a JSON descriptor file has no raw completions; use --text-field description")
        by_concept = _read_descriptor_json(path)
        provenance.update(format="dclip_json", model=None, adapter=None, text_field="description")
    else:
        records = _category_records(path) if categories else read_jsonl(path, required=("concept", "description"))
        text_field = resolve_text_field(records, text_field, path)
        by_concept = {}
        for record in records:
            texts = by_concept.setdefault(str(record["concept"]), [])
            text = record_text(record, text_field, path)
            if (not categories or _keep(record, categories)) and text:
                texts.append(text)
        provenance.update(
            format="jsonl", n_records=len(records), text_field=text_field,
            model=_one_or_many([r.get("model") for r in records]),
            adapter=_one_or_many([r.get("adapter") for r in records]),
        )
        aligned = _one_or_many([r.get("vlm") or r.get("reward_vlm") for r in records])
        aligned = aligned or _one_or_many([adapter_vlm(r.get("adapter")) for r in records])
        if aligned:
            provenance["aligned_vlm"] = aligned
        by_concept = {k: list(dict.fromkeys(v)) for k, v in by_concept.items()}
    return Descriptions(by_concept, provenance)


@dataclass
class Alignment:
    """A description file's texts per dataset class, and how its keys were matched."""

    texts: list[list[str]]  # per class: the texts of its key(s), as the file has them
    keys: list[str | None]  # per class: the file's key that named it (None: no key did)
    unused: list[str]  # keys that name no class of the dataset
    by_position: bool  # matched in the dataset's class order, as DCLIP does
    source: str = "descriptions"
    renamed: list[tuple[str, int]] = field(default_factory=list)  # (key, class id) whose names differ
    n_keys: int = 0  # keys in the file


def listed(items: list[str], limit: int = 10) -> str:
    return ", ".join(repr(c) for c in items[:limit]) + (" …" if len(items) > limit else "")


def align(
    classnames: list[str], descriptions: Descriptions, source: str = "descriptions", by_position: bool | None = None
) -> Alignment:
    """Texts per class id from the file's keys (:func:`ex2.classify.zeroshot.match_classes`): by name, or
    by position for a JSON file whose keys are in the dataset's class order (``by_position``
    None: only for JSON files, the peers' form)."""
    if by_position is None:
        by_position = descriptions.provenance.get("format") == "dclip_json"
    keys = list(descriptions.by_concept)
    match = zeroshot.match_classes(classnames, keys, by_position)
    texts = [[t for k in ks for t in descriptions.by_concept[keys[k]]] for ks in match.keys_of]
    names = [keys[ks[0]] if ks else None for ks in match.keys_of]
    renamed = [(k, i) for i, k in enumerate(names)
               if k is not None and zeroshot.normalise_name(k) != zeroshot.normalise_name(classnames[i])]
    return Alignment(texts, names, [keys[k] for k in match.unused], match.by_position, source, renamed, len(keys))


def check_coverage(alignment: Alignment, classnames: list[str], missing: list[int], allow_missing: bool) -> list[str]:
    """Names of the classes in ``missing``; an error unless ``allow_missing``, naming the keys
    that matched no class (often the same classes spelled otherwise)."""
    names = [classnames[i] for i in missing]
    if names and not allow_missing:
        unused = (f"; {len(alignment.unused)} concept(s) match no class of the dataset: {listed(alignment.unused)}"
                  if alignment.unused else "")
        raise ValueError(
            f"{alignment.source}: {len(names)} class(es) have no descriptions (after filtering): "
            f"{', '.join(names[:10])}{' …' if len(names) > 10 else ''}{unused}; pass --allow-missing to "
            "use the class name alone for them"
        )
    return names


def align_descriptions(
    classnames: list[str], descriptions: Descriptions, allow_missing: bool = False, source: str = "descriptions"
) -> tuple[list[list[str]], list[str]]:
    """Distinct texts per class id (concepts matched to class names ignoring case, spaces, hyphens
    and underscores; a JSON file in class order by position); keys of other classes are left.

    A class without texts is an error, or with ``allow_missing`` gets an empty list (the caller
    substitutes the class name). Returns (texts per class, names of classes without descriptions).
    """
    alignment = align(classnames, descriptions, source)
    texts = [list(dict.fromkeys(t)) for t in alignment.texts]
    missing = check_coverage(alignment, classnames, [i for i, t in enumerate(texts) if not t], allow_missing)
    return texts, missing


def describe_alignment(alignment: Alignment, classnames: list[str]) -> tuple[list[str], dict]:
    """What the matching did, as log lines and a metrics entry."""
    lines = []
    matched = sum(k is not None for k in alignment.keys)
    renamed = alignment.renamed
    if alignment.by_position:
        example = f", e.g. key {renamed[0][0]!r} for class {classnames[renamed[0][1]]!r}" if renamed else ""
        lines.append(f"{alignment.source}: its {matched} keys are in the dataset's class order: matched by "
                     f"position, as DCLIP does ({len(renamed)} named otherwise than the dataset{example})")
    if alignment.unused:
        lines.append(f"{alignment.source}: {len(alignment.unused)} of {alignment.n_keys} keys name "
                     f"no class of this dataset and are unused: {listed(alignment.unused, 5)}")
    info = {"matched_classes": matched, "unused_keys": len(alignment.unused), "by_position": alignment.by_position,
            "named_otherwise": len(renamed)}
    return lines, info


# class texts, method -> ([texts per class], classes without a text) from the file's alignment
MakeTexts = Callable[[object, list[str], Alignment, dict, list[str]], tuple[list[list[str]], list[str]]]


def description_texts(config, classnames: list[str], make: MakeTexts) -> tuple[list[list[str]], dict, list[str]]:
    """Texts per class from ``config.descriptions`` made by ``make`` (a class left without any gets
    its name alone); what they came from; log lines."""
    descriptions = load_descriptions(config.descriptions, config.categories, config.text_field)
    alignment = align(classnames, descriptions, config.descriptions)
    lines, match_info = describe_alignment(alignment, classnames)
    info: dict = {"descriptions": descriptions.provenance, "class_match": match_info}
    texts, missing = make(config, classnames, alignment, info, lines)
    texts = [t if t else [name] for t, name in zip(texts, classnames, strict=True)]
    info["classes_without_descriptions"] = missing
    return texts, info, lines


def needs_descriptions(config) -> None:
    """The check of the methods that read a description file."""
    if not config.descriptions:
        raise ValueError(f"--method {config.method} needs --descriptions FILE (descriptions.jsonl or JSON)")
