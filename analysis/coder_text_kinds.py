"""Which of CoDer's knowledge kinds carry its accuracy? Each kind alone (with the class name, CoDer's
anchor), all kinds, leave-one-out, and the attributes split by ``ex2 inspect``'s categories::

    python analysis/coder_text_kinds.py --knowledge runs/knowledge.jsonl --dataset samples --vlm conse \\
        --output runs/coder_kinds.json

Image embeddings come from the on-disk cache; the attribute categories from the embedded (offline)
inspection judge, written to ``OUTPUT``'s folder as ``attributes.jsonl`` / ``attribute_categories.jsonl``.
Prints one line per variant (acc1, texts per class) and writes them as JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ex2.classify.coder import CLASS_KINDS, class_scores, coder_texts, neighbor_vectors
from ex2.classify.zeroshot import classification_metrics


def attribute_categories(knowledge: dict, folder: Path) -> dict[str, dict[str, list[str]]]:
    """Attributes per inspection category: {category: {concept: [attributes]}}."""
    from ex2.core.io import read_jsonl, write_jsonl
    from ex2.inspect.stage import InspectConfig
    from ex2.inspect.stage import run as inspect

    rows = [{"concept": c, "description": a} for c, items in knowledge["attributes"].items() for a in items]
    if not rows:
        return {}
    source, labelled = folder / "attributes.jsonl", folder / "attribute_categories.jsonl"
    write_jsonl(source, rows)
    inspect(InspectConfig(input=str(source), output=str(labelled), report=False))
    out: dict[str, dict[str, list[str]]] = {}
    for record in read_jsonl(labelled):
        out.setdefault(record["category"], {}).setdefault(record["concept"], []).append(record["description"])
    return out


def variants(knowledge: dict, categories: dict) -> dict[str, tuple[dict, list[str]]]:
    """name -> (knowledge, kinds) for every variant measured."""
    out = {"name only": (knowledge, [])}
    out.update({f"{kind} alone": (knowledge, [kind]) for kind in CLASS_KINDS})
    out["all"] = (knowledge, list(CLASS_KINDS))
    out.update({f"all but {kind}": (knowledge, [k for k in CLASS_KINDS if k != kind]) for kind in CLASS_KINDS})
    for category, attributes in sorted(categories.items()):
        out[f"attributes: {category}"] = ({**knowledge, "attributes": attributes}, ["attributes"])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--knowledge", required=True)
    parser.add_argument("--dataset", default="samples")
    parser.add_argument("--data-root")
    parser.add_argument("--vlm", default="conse")
    parser.add_argument("--template", default="a photo of a {}.")
    parser.add_argument("--output", default="runs/coder_kinds.json")
    args = parser.parse_args(argv)

    from ex2.classify.common import embed_dataset
    from ex2.classify.stage import ClassifyConfig
    from ex2.core.io import write_json
    from ex2.data import load_dataset
    from ex2.knowledge.records import load_knowledge
    from ex2.vlm import load_vlm

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    knowledge, _ = load_knowledge(args.knowledge)
    dataset = load_dataset(args.dataset, args.data_root)
    vlm = load_vlm(args.vlm)
    images, labels = embed_dataset(vlm, dataset, ClassifyConfig(dataset=args.dataset, vlm=args.vlm, progress=False))
    results = {}
    for name, (known, kinds) in variants(knowledge, attribute_categories(knowledge, out.parent)).items():
        texts = coder_texts(dataset.classnames, known, [args.template], kinds)
        neighbors = neighbor_vectors(images.embeddings, vlm.encode_texts(texts.texts))
        logits = class_scores(neighbors, texts.owners, texts.pooled_max, len(dataset.classnames))
        results[name] = {**classification_metrics(logits, labels),
                         "texts_per_class": len(texts.texts) / len(dataset.classnames)}
        print(f"{name:<28} acc1 {results[name]['acc1']:.3f}  texts/class {results[name]['texts_per_class']:.1f}")
    write_json(out, {"dataset": args.dataset, "vlm": args.vlm, "knowledge": args.knowledge, "variants": results})
    return results


if __name__ == "__main__":
    main()
