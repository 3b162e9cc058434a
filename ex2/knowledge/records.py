"""The knowledge file of ``ex2 knowledge``: one JSON record per item, ``{concept, class_id, kind,
text, other_concept, model, adapter, source}``; reading it back (:func:`load_knowledge`, what CoDer's
classifier reads) and knowledge a user already has (:func:`from_json`)."""

from __future__ import annotations

import json
from pathlib import Path

from ex2.core.io import read_jsonl
from ex2.core.text import normalise_name

KINDS = ("attributes", "analogous", "synonyms", "ovo")
RECORD_FIELDS = ("concept", "class_id", "kind", "text", "other_concept", "model", "adapter", "source")


def make_record(concept: str, class_id: int, kind: str, text: str, other: str | None, model: str | None,
                adapter: str | None, source: str) -> dict:
    """One item of knowledge, as written to the file."""
    return dict(zip(RECORD_FIELDS, (concept, class_id, kind, text, other, model, adapter, source), strict=True))


def from_json(path: str | Path, kind: str, concepts: list[str]) -> list[dict]:
    """Records from a user's JSON: {class: [items]} (ovo: {class: {other class: [items]}})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSON knowledge for --from-json {kind}=FILE)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    shape = "{class: {other class: [strings]}}" if kind == "ovo" else "{class: [strings]}"
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {shape}")
    index = {normalise_name(c): i for i, c in enumerate(concepts)}
    records = []
    for concept, value in data.items():
        if normalise_name(concept) not in index:
            raise ValueError(f"{path}: {concept!r} is no concept of the dataset ({', '.join(concepts[:10])} …)")
        entries = value.items() if kind == "ovo" and isinstance(value, dict) else [(None, value)]
        if kind == "ovo" and not isinstance(value, dict):
            raise ValueError(f"{path}: {concept!r} must map to {{other class: [strings]}}; expected {shape}")
        for other, items in entries:
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError(f"{path}: items of {concept!r} must be a list of strings; expected {shape}")
            for item in dict.fromkeys(i.strip() for i in items if i.strip()):
                records.append(make_record(concepts[index[normalise_name(concept)]], index[normalise_name(concept)],
                                       kind, item, other, None, None, f"json:{path}"))
    return records


def load_knowledge(path: str | Path) -> tuple[dict[str, dict], dict]:
    """Knowledge from our JSONL: ``{kind: {concept: [items]}}``, ovo as ``{(concept, other): [items]}``;
    and its provenance."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"knowledge file {path} does not exist (expected the JSONL of `ex2 knowledge`)")
    records = read_jsonl(path, required=("concept", "kind", "text"))
    out: dict[str, dict] = {kind: {} for kind in KINDS}
    for number, record in enumerate(records, start=1):
        kind = record["kind"]
        if kind not in KINDS:
            raise ValueError(f"{path}: record {number} has kind {kind!r}; expected one of {', '.join(KINDS)}")
        key = (record["concept"], record.get("other_concept")) if kind == "ovo" else record["concept"]
        if kind == "ovo" and not record.get("other_concept"):
            raise ValueError(f"{path}: ovo record {number} lacks other_concept")
        out[kind].setdefault(key, []).append(str(record["text"]))
    provenance = {"path": str(path.resolve()), "n_records": len(records),
                  "model": sorted({str(r.get("model")) for r in records if r.get("model")}) or None,
                  "adapter": sorted({str(r.get("adapter")) for r in records if r.get("adapter")}) or None}
    return out, provenance
