"""Zero-shot classification with class names or descriptions: ``ex2 classify``.

    ex2 classify --dataset samples --vlm conse --method clip --output runs/clip
    ex2 classify --method clip --templates clip_ensemble --output runs/ens
    ex2 classify --method dclip --descriptions descriptors_cub.json --dataset cub --data-root DIR ...
    ex2 classify --method ex2 --descriptions runs/gen/descriptions.jsonl --categories visual ...
    ex2 classify --method waffle --waffle-kind words --waffle-seeds 8 --output runs/waffle

Image embeddings come from the on-disk cache (:func:`ex2.vlm.embed_images`); every class and
description text is encoded once; the classifier is a ``[D, C]`` matrix built by the pure
functions of :mod:`ex2.zeroshot`, and scoring is one matrix product. The run folder holds
``metrics.json`` (fixed keys, rolled up by ``ex2 report``), per-class accuracy and the confusion
matrix as CSV and PNG, ``predictions.csv``, ``class_texts.json``, the resolved ``config.yaml``
and, with ``--explain``, one figure per explained image.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import torch

from ex2 import zeroshot
from ex2.config import option, save_config
from ex2.io import atomic_open, read_jsonl, write_json

METHODS = ("clip", "dclip", "ex2", "waffle", "coder")
CATEGORIES = ("spurious", "visual", "non_visual", "informative")
DEFAULT_AGGREGATE = {"clip": "mean_embedding", "dclip": "mean_score", "ex2": "mean_score", "waffle": "mean_score",
                     "coder": "mean_score"}


@dataclass
class ClassifyConfig:
    """Zero-shot classification with class names (CLIP) or descriptions (DCLIP, EX2, WaffleCLIP)."""

    dataset: str = option("samples", "dataset name (see `ex2 ls`)")
    data_root: str | None = option(None, "folder holding the dataset (not needed for samples)")
    split: str | None = option(None, "dataset split; default: the dataset's evaluation split")
    vlm: str = option("conse", "VLM that scores images against texts (see `ex2 ls`)")
    device: str | None = option(None, "torch device; default: CUDA when available")
    precision: str = option("auto", "fp32, fp16, bf16 or auto (fp16 on CUDA)")
    method: Literal["clip", "dclip", "ex2", "waffle", "coder"] = option("clip", "how each class's texts are made")
    templates: str = option("clip", "class-name templates for clip: clip, clip_ensemble or a file")
    descriptions: str | None = option(
        None, "dclip/ex2: descriptions.jsonl or categories.jsonl (ours), or a JSON {class: [descriptors]}"
    )
    categories: list[str] = option(
        [], "ex2: keep only descriptions of these inspection categories (spurious, visual, non_visual, "
        "informative; several allowed, comma-separated too); read from categories.jsonl"
    )
    description_format: str = option(
        "{description}", "ex2: text made of each description ({description} and {class} are filled in)"
    )
    aggregate: Literal["mean_score", "mean_embedding"] | None = option(
        None, "pool a class's texts: mean of scores (DCLIP) or normalised mean embedding; "
        "default mean_embedding for clip, mean_score otherwise"
    )
    allow_missing: bool = option(False, "a class left without descriptions falls back to its name alone")
    waffle_kind: Literal["words", "chars", "both"] = option("both", "waffle: random words, characters or both")
    waffle_count: int = option(15, "waffle: random descriptors of each kind per class")
    waffle_seeds: int = option(8, "waffle: seeds to average accuracy over")
    waffle_words: str | None = option(None, "waffle: word list file (one word a line); default: shipped list")
    seed: int = option(0, "first waffle seed")
    strict: bool = option(False, "stop at an unreadable image instead of skipping it")
    batch_size: int = option(32, "images per forward pass")
    cache: bool = option(True, "reuse and fill the on-disk image-embedding cache")
    explain: int = option(0, "write explanation figures for this many images (0: none)")
    explain_misclassified: bool = option(False, "explain misclassified images (up to --explain, default 20)")
    explain_top: int = option(5, "descriptors shown per class in an explanation")
    progress: bool = option(True, "show progress bars")
    output: str = option("runs/classify", "run folder to write")
    knowledge: str | None = option(None, "coder: knowledge.jsonl written by `ex2 knowledge`")
    kinds: list[str] = option(["attributes", "analogous", "synonyms"],
                              "coder: knowledge kinds in the class texts (attributes, analogous, synonyms)")
    ovo_gap: float = option(0.0, "coder: re-rank with one-vs-one texts where the top-2 softmax gap is below this")
    ovo_top: int = option(5, "coder: classes re-ranked by one-vs-one texts")
    shots: int = option(0, "coder: labelled images per class for Tip-Adapter over neighbor vectors (0: zero-shot)")
    val_shots: int | None = option(None, "coder: validation images per class for alpha/beta (default min(shots, 4))")
    support_split: str | None = option(None, "coder: split the shots come from; default: carved from the "
                                             "evaluated split and left out of the test images")
    augment_views: int = option(10, "coder: random crop/flip views averaged per support image")

    def __post_init__(self) -> None:
        self.categories = [c.strip() for item in self.categories for c in item.split(",") if c.strip()]
        unknown = sorted(set(self.categories) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categories {', '.join(unknown)}; choose from {', '.join(CATEGORIES)}")
        if self.method in ("dclip", "ex2") and not self.descriptions:
            raise ValueError(f"--method {self.method} needs --descriptions FILE (descriptions.jsonl or JSON)")
        if self.categories and self.method != "ex2":
            raise ValueError("--categories filters generated descriptions; use it with --method ex2")
        for name in ("waffle_count", "waffle_seeds", "batch_size", "explain_top"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.explain < 0:
            raise ValueError(f"--explain must be 0 or more, got {self.explain}")
        if self.aggregate is None:
            self.aggregate = DEFAULT_AGGREGATE[self.method]
        from ex2.coder import check_config

        check_config(self)


# --- descriptions ------------------------------------------------------------------------------


@dataclass
class Descriptions:
    """Texts per concept as named in the file (filtered concepts keep an empty list)."""

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
            import yaml

            try:
                data = yaml.safe_load(config.read_text())
            except yaml.YAMLError:
                return None
            return data.get("vlm") if isinstance(data, dict) else None
    return None


def load_descriptions(path: str | Path, categories: list[str] | tuple = ()) -> Descriptions:
    """Descriptions per concept from our JSONL (optionally filtered by inspection category) or
    from DCLIP's JSON; empty and repeated texts are dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"descriptions file {path} does not exist (expected .jsonl or .json)")
    provenance: dict = {"path": str(path.resolve())}
    if path.suffix == ".json":
        if categories:
            raise ValueError(f"{path}: a JSON descriptor file has no inspection categories; pass categories.jsonl")
        by_concept = _read_descriptor_json(path)
        provenance.update(format="dclip_json", model=None, adapter=None)
    else:
        records = _category_records(path) if categories else read_jsonl(path, required=("concept", "description"))
        by_concept = {}
        for record in records:
            texts = by_concept.setdefault(str(record["concept"]), [])
            if (not categories or _keep(record, categories)) and str(record["description"]).strip():
                texts.append(str(record["description"]).strip())
        provenance.update(
            format="jsonl", n_records=len(records),
            model=_one_or_many([r.get("model") for r in records]),
            adapter=_one_or_many([r.get("adapter") for r in records]),
        )
        aligned = _one_or_many([r.get("vlm") or r.get("reward_vlm") for r in records])
        aligned = aligned or _one_or_many([adapter_vlm(r.get("adapter")) for r in records])
        if aligned:
            provenance["aligned_vlm"] = aligned
    return Descriptions({k: list(dict.fromkeys(v)) for k, v in by_concept.items()}, provenance)


def align_descriptions(
    classnames: list[str], descriptions: Descriptions, allow_missing: bool = False, source: str = "descriptions"
) -> tuple[list[list[str]], list[str]]:
    """Texts per class id, matching concepts to class names ignoring case, underscores and spacing.

    Concepts that are no class are an error listing them; a class without texts is an error, or
    with ``allow_missing`` gets an empty list (the caller substitutes the class name).
    Returns (texts per class, names of classes without descriptions).
    """
    index = {zeroshot.normalise_name(name): i for i, name in enumerate(classnames)}
    per_class: list[list[str]] = [[] for _ in classnames]
    unmatched = []
    for concept, texts in descriptions.by_concept.items():
        class_id = index.get(zeroshot.normalise_name(concept))
        if class_id is None:
            unmatched.append(concept)
        else:
            per_class[class_id] += [t for t in texts if t not in per_class[class_id]]
    if unmatched:
        shown = ", ".join(repr(c) for c in unmatched[:10]) + (" …" if len(unmatched) > 10 else "")
        raise ValueError(
            f"{source}: {len(unmatched)} concept(s) match no class of the dataset: {shown}; "
            f"classes: {', '.join(classnames[:20])}{' …' if len(classnames) > 20 else ''}"
        )
    missing = [classnames[i] for i, texts in enumerate(per_class) if not texts]
    if missing and not allow_missing:
        raise ValueError(
            f"{source}: {len(missing)} class(es) have no descriptions (after filtering): "
            f"{', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}; pass --allow-missing to "
            "use the class name alone for them"
        )
    return per_class, missing


# --- class texts per method --------------------------------------------------------------------


def waffle_vocabulary(path: str | Path | None = None) -> list[str]:
    """Words for WaffleCLIP's random descriptors: a file (one word a line) or the shipped list."""
    if path is None:
        text = resources.files("ex2.resources").joinpath("waffle_words.txt").read_text(encoding="utf-8")
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"waffle word list {path} does not exist (expected one word a line)")
        text = path.read_text(encoding="utf-8")
    words = [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]
    if not words:
        raise ValueError(f"waffle word list {path or 'waffle_words.txt'} holds no words")
    return words


def _description_texts(config: ClassifyConfig, classnames: list[str]) -> tuple[list[list[str]], dict]:
    descriptions = load_descriptions(config.descriptions, config.categories)
    per_class, missing = align_descriptions(classnames, descriptions, config.allow_missing, config.descriptions)
    if config.method == "dclip":
        texts = zeroshot.dclip_texts(classnames, per_class)
    else:
        texts = [
            [config.description_format.format(**{"description": d, "class": name}) for d in class_texts]
            for name, class_texts in zip(classnames, per_class, strict=True)
        ]
    texts = [t if t else [name] for t, name in zip(texts, classnames, strict=True)]
    info = {"descriptions": descriptions.provenance, "classes_without_descriptions": missing}
    return texts, info


def class_text_sets(config: ClassifyConfig, classnames: list[str]) -> tuple[list[list[list[str]]], dict]:
    """The texts of every class, once per seed (waffle) or once; and what they came from."""
    if config.method == "clip":
        from ex2.data import load_templates

        templates = load_templates(config.templates)
        return [zeroshot.template_texts(classnames, templates)], {"templates": config.templates}
    if config.method == "waffle":
        words = waffle_vocabulary(config.waffle_words)
        seeds = range(config.seed, config.seed + config.waffle_seeds)
        sets = [zeroshot.waffle_texts(classnames, config.waffle_kind, config.waffle_count, s, words) for s in seeds]
        return sets, {"waffle": {"kind": config.waffle_kind, "count": config.waffle_count, "seeds": list(seeds)}}
    texts, info = _description_texts(config, classnames)
    return [texts], info


# --- evaluation --------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """One scored classifier: logits of the embedded images and the metrics they give."""

    texts: list[list[str]]  # per class
    text_embeddings: torch.Tensor  # [N_texts, D], flattened in class order
    weights: torch.Tensor  # [D, C]
    logits: torch.Tensor  # [N_images, C]
    metrics: dict[str, float]


def batched_encoder(vlm, progress: bool = True, chunk: int = 1024) -> zeroshot.Encode:
    """``vlm.encode_texts`` in chunks under a progress bar."""
    from tqdm.auto import tqdm

    def encode(texts: list[str]) -> torch.Tensor:
        starts = range(0, len(texts), chunk)
        bar = tqdm(starts, desc=f"encoding texts ({vlm.identity})", unit="chunk",
                   disable=not progress or len(starts) < 2)
        return torch.cat([vlm.encode_texts(texts[s : s + chunk]) for s in bar])

    return encode


def evaluate(
    encode: zeroshot.Encode, text_sets: list[list[list[str]]], images: torch.Tensor, labels: torch.Tensor,
    aggregate: str, logit_scale: float = 100.0, logit_bias: float = 0.0,
) -> list[Evaluation]:
    """Score ``images [N, D]`` against each class-text set (all texts encoded in one call)."""
    results = []
    for texts, embeddings in zip(text_sets, zeroshot.encode_text_sets(encode, text_sets), strict=True):
        weights = zeroshot.pool_classifier(embeddings, zeroshot.owners_of(texts), len(texts), aggregate)
        logits = zeroshot.score(images, weights, logit_scale, logit_bias)
        results.append(Evaluation(texts, embeddings, weights, logits, zeroshot.classification_metrics(logits, labels)))
    return results


def summarise(results: list[Evaluation]) -> dict:
    """Metrics of one evaluation, or their mean over seeds with the spread and per-seed values."""
    keys = ("acc1", "acc5", "mean_per_class_recall")
    if len(results) == 1:
        return dict(results[0].metrics)
    values = torch.tensor([[r.metrics[k] for k in keys] for r in results], dtype=torch.float64)
    out = {k: values[:, i].mean().item() for i, k in enumerate(keys)}
    out.update({f"{k}_std": values[:, i].std().item() for i, k in enumerate(keys)})
    out["per_seed"] = [r.metrics for r in results]
    return out


def embed_dataset(vlm, dataset, config: ClassifyConfig):
    """Embeddings of the dataset's readable images and their labels."""
    from ex2.vlm import embed_images

    label_of = {path: label for path, label in dataset.items}
    images = embed_images(vlm, [p for p, _ in dataset.items], cache=config.cache, batch_size=config.batch_size,
                          strict=config.strict, progress=config.progress)
    if not images.paths:
        raise ValueError(f"{dataset.name} ({dataset.split}, {dataset.root}): no readable images "
                         f"({len(images.skipped)} skipped)")
    labels = torch.tensor([label_of[p] for p in images.paths], dtype=torch.long)
    return images, labels


# --- outputs -----------------------------------------------------------------------------------


def _write_csv(path: Path, header: list, rows: list[list]) -> None:
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_tables(out: Path, classnames: list[str], result: Evaluation, labels: torch.Tensor, paths: list[Path]) -> None:
    """per_class.csv, confusion.csv, predictions.csv and their figures."""
    from ex2.explain import plot_confusion, plot_per_class

    n = len(classnames)
    predictions = result.logits.argmax(1)
    confusion = zeroshot.confusion_matrix(predictions, labels, n)
    recall = zeroshot.per_class_recall(confusion)
    counts = [len(t) for t in result.texts]
    _write_csv(out / "per_class.csv", ["class_id", "class", "n_images", "accuracy", "n_texts"],
               [[i, classnames[i], int(confusion[i].sum()), f"{recall[i].item():.6f}", counts[i]] for i in range(n)])
    _write_csv(out / "confusion.csv", ["true \\ predicted", *classnames],
               [[classnames[i], *confusion[i].tolist()] for i in range(n)])
    top = result.logits.topk(min(5, n), dim=1).indices
    _write_csv(out / "predictions.csv", ["path", "label", "prediction", "correct", "top5"],
               [[str(p), classnames[y], classnames[k], int(y == k), "|".join(classnames[j] for j in t)]
                for p, y, k, t in zip(paths, labels.tolist(), predictions.tolist(), top.tolist(), strict=True)])
    plot_confusion(confusion, classnames, out / "confusion.png")
    plot_per_class(recall, classnames, out / "per_class.png")


def build_metrics(config: ClassifyConfig, dataset, vlm, results: list[Evaluation], info: dict, images) -> dict:
    """metrics.json: fixed keys first, then what this method adds."""
    metrics = {
        "dataset": config.dataset, "split": dataset.split, "vlm": config.vlm, "vlm_identity": vlm.identity,
        "method": config.method, "descriptions": info.get("descriptions"),
        "categories": config.categories or None, **summarise(results),
        "n_images": len(images.paths), "n_classes": len(dataset.classnames),
        "n_skipped_images": len(images.skipped),
    }
    aligned = (info.get("descriptions") or {}).get("aligned_vlm")
    if isinstance(aligned, str):
        metrics["cross_vlm"] = aligned != config.vlm  # descriptions aligned against another VLM
    if info.get("classes_without_descriptions"):
        metrics["classes_without_descriptions"] = info["classes_without_descriptions"]
    texts = [len(t) for t in results[0].texts]
    metrics.update(aggregate=config.aggregate, texts_per_class=sum(texts) / len(texts),
                   logit_scale=vlm.logit_scale)
    metrics.update({k: v for k, v in info.items() if k not in ("descriptions", "classes_without_descriptions")})
    if len(results) > 1:
        metrics["tables_from_seed"] = config.seed
    return metrics


def run(config: ClassifyConfig, vlm=None, dataset=None) -> Path:
    """Classify the dataset's images; write the run folder and return it.

    ``vlm`` and ``dataset`` (already loaded) let one script evaluate many description files
    without loading the model again; by default both are loaded from the config.
    """
    from ex2.data import load_dataset
    from ex2.vlm import load_vlm

    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out)
    dataset = dataset or load_dataset(config.dataset, config.data_root, config.split)
    if config.method == "coder":
        from ex2.coder import run_classify

        return run_classify(config, out, dataset, vlm or load_vlm(config.vlm, config.device, config.precision))
    text_sets, info = class_text_sets(config, dataset.classnames)  # bad descriptions fail before any model loads
    vlm = vlm or load_vlm(config.vlm, config.device, config.precision)
    images, labels = embed_dataset(vlm, dataset, config)
    results = evaluate(batched_encoder(vlm, config.progress), text_sets, images.embeddings, labels,
                       config.aggregate, vlm.logit_scale, vlm.logit_bias)
    write_json(out / "class_texts.json", dict(zip(dataset.classnames, results[0].texts, strict=True)))
    write_tables(out, dataset.classnames, results[0], labels, images.paths)
    if images.skipped:
        _write_csv(out / "skipped_images.csv", ["path", "reason"], [[str(p), r] for p, r in images.skipped])
    if config.explain or config.explain_misclassified:
        from ex2.explain import explain_run

        explain_run(out / "explanations", dataset.classnames, results[0], images, labels,
                    config.explain, config.explain_misclassified, config.explain_top, config.progress)
    metrics = build_metrics(config, dataset, vlm, results, info, images)
    write_json(out / "metrics.json", metrics)
    print(f"{config.method} on {config.dataset} with {config.vlm}: top-1 {metrics['acc1']:.1%}, "
          f"top-5 {metrics['acc5']:.1%} ({metrics['n_images']} images) -> {out / 'metrics.json'}")
    return out
