"""What the classification methods share, below them: datasets and images in, embeddings, scoring, the
run folder of a text classifier.

Image and text embeddings come from the on-disk caches (:func:`ex2.vlm.embed_images`,
:func:`ex2.vlm.embed_texts`; ``--no-cache`` turns both off), every distinct text encoded once; the
classifier is a ``[D, C]`` matrix built by the pure functions of :mod:`ex2.classify.zeroshot`, and
scoring is one matrix product.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ex2.classify import zeroshot
from ex2.classify.descriptions import listed
from ex2.classify.explain import explain_run
from ex2.classify.metrics import Evaluation, build_metrics, class_text_table, write_tables
from ex2.core.config import save_config
from ex2.core.io import check_output_path, write_csv, write_json
from ex2.data import load_dataset
from ex2.vlm import embed_images, embed_texts, load_vlm


def batched_encoder(vlm, progress: bool = True, cache: bool = True) -> zeroshot.Encode:
    """Texts -> embeddings with ``vlm``: from the disk cache where it holds them (unless ``cache``
    is off), else encoded in chunks under a progress bar (:func:`ex2.vlm.embed_texts`)."""
    def encode(texts: list[str]) -> torch.Tensor:
        return embed_texts(vlm, texts, cache=cache, progress=progress)

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
        results.append(Evaluation(texts, embeddings, weights, logits, zeroshot.classification_metrics(logits, labels),
                                  labels))
    return results


def embed_dataset(vlm, dataset, config):
    """Embeddings of the dataset's readable images and their labels."""
    label_of = {path: label for path, label in dataset.items}
    images = embed_images(vlm, [p for p, _ in dataset.items], cache=config.cache, batch_size=config.batch_size,
                          strict=config.strict, progress=config.progress)
    if not images.paths:
        raise ValueError(f"{dataset.name} ({dataset.split}, {dataset.root}): no readable images "
                         f"({len(images.skipped)} skipped)")
    labels = torch.tensor([label_of[p] for p in images.paths], dtype=torch.long)
    return images, labels


def unreadable_classes(dataset, labels: torch.Tensor, drop: bool, droppable: bool = True) -> list[int]:
    """Ids of the classes none of whose images could be read; an error naming them unless ``drop``
    (their recall would be missing from mean_per_class_recall without a word). ``droppable``: the
    method offers --drop-unreadable-classes, so the error mentions it."""
    seen = set(labels.tolist())
    lost = [i for i in range(len(dataset.classnames)) if i not in seen]
    if lost and not drop:
        names = listed([dataset.classnames[i] for i in lost])
        remedy = ", or pass --drop-unreadable-classes to score the other classes only" if droppable else ""
        raise ValueError(f"{dataset.name} ({dataset.split}, {dataset.root}): no readable image in "
                         f"{len(lost)} class(es): {names}; fix or remove those images{remedy}")
    return lost


def drop_classes(dataset, text_sets: list, labels: torch.Tensor, lost: list[int]):
    """The dataset, text sets and labels without the classes in ``lost`` (labels renumbered)."""
    if not lost:
        return dataset, text_sets, labels
    kept = [i for i in range(len(dataset.classnames)) if i not in set(lost)]
    new_id = {old: new for new, old in enumerate(kept)}
    smaller = replace(dataset, classnames=[dataset.classnames[i] for i in kept],
                                  items=[(p, new_id[y]) for p, y in dataset.items if y in new_id])
    texts = [[per_class[i] for i in kept] for per_class in text_sets]
    return smaller, texts, torch.tensor([new_id[y] for y in labels.tolist()], dtype=torch.long)


def split_per_class(dataset, fraction: float, seed: int, part: str = "held out"):
    """``(held, rest)``: ``fraction`` of each class's images (at least one, leaving at least one),
    drawn with a generator seeded per class, as two datasets over the same classes."""
    held, rest = [], []
    for class_id, name in enumerate(dataset.classnames):
        paths = dataset.paths_of(class_id)
        if len(paths) < 2:
            raise ValueError(f"{dataset.name} ({dataset.split}): class {name!r} has {len(paths)} image(s); "
                             f"at least two are needed to hold some out as {part}")
        shuffled = random.Random(f"{seed}:{class_id}").sample(paths, len(paths))
        count = min(len(paths) - 1, max(1, round(fraction * len(paths))))
        held += [(p, class_id) for p in sorted(shuffled[:count])]
        rest += [(p, class_id) for p in sorted(shuffled[count:])]
    return (replace(dataset, split=f"{dataset.split}[{part}]", items=held),
            replace(dataset, split=f"{dataset.split}[rest]", items=rest))


# a text classifier's texts: (config, class names) -> (text sets, what they came from, log lines)
ClassTexts = Callable[[Any, list[str]], tuple[list[list[list[str]]], dict, list[str]]]


def text_classifier(class_texts: ClassTexts) -> Callable[..., Path]:
    """The ``run(config, vlm=None, dataset=None)`` of a method whose texts ``class_texts`` makes:
    inputs are read and checked before the VLM loads, the folder written once there are results."""

    def run(config, vlm=None, dataset=None) -> Path:
        out = check_output_path(config.output, "folder")
        dataset = dataset or load_dataset(config.dataset, config.data_root, config.split, config.classnames)
        text_sets, info, lines = class_texts(config, dataset.classnames)  # bad inputs fail before any model loads
        return run_text_classifier(config, text_sets, info, lines, out, dataset, vlm)

    return run


def run_text_classifier(config, text_sets: list[list[list[str]]], info: dict, lines: list[str], out: Path,
                        dataset, vlm=None) -> Path:
    """Score the dataset's images against each class-text set (one per seed, or one) and write the
    run folder ``out``: the pipeline of clip, dclip, cupl, ex2 and waffle once their texts are made."""
    for line in lines:
        print(line, flush=True)
    vlm = vlm or load_vlm(config.vlm, config.device, config.precision)
    images, labels = embed_dataset(vlm, dataset, config)
    lost = unreadable_classes(dataset, labels, config.drop_unreadable_classes)
    if lost:
        info["dropped_classes"] = [dataset.classnames[i] for i in lost]
        print(f"dropped {len(lost)} class(es) without a readable image: {listed(info['dropped_classes'])}")
    dataset, text_sets, labels = drop_classes(dataset, text_sets, labels, lost)
    results = evaluate(batched_encoder(vlm, config.progress, config.cache), text_sets, images.embeddings, labels,
                       config.aggregate, vlm.logit_scale, vlm.logit_bias)
    out.mkdir(parents=True, exist_ok=True)  # nothing is written before the run has its results
    save_config(config, out)
    write_json(out / "class_texts.json", class_text_table(dataset.classnames, results[0].texts))
    write_tables(out, dataset.classnames, results[0], labels, images.paths)
    write_skipped(out, images.skipped)
    if config.explain or config.explain_misclassified:
        explain_run(out / "explanations", dataset.classnames, results[0], images, labels,
                    config.explain, config.explain_misclassified, config.explain_top, config.progress)
    metrics = build_metrics(config, dataset, vlm, results, info, images)
    write_json(out / "metrics.json", metrics)
    report(config, metrics, out)
    return out


def write_skipped(out: Path, skipped: list) -> None:
    """skipped_images.csv, when images were skipped as unreadable, and a line saying so."""
    if skipped:
        write_csv(out / "skipped_images.csv", ["path", "reason"], [[str(p), r] for p, r in skipped])
        print(f"{len(skipped)} image(s) skipped as unreadable (see {out / 'skipped_images.csv'})")


def report(config, metrics: dict, out: Path) -> None:
    """The run's one closing line: method, dataset, VLM, accuracy, where metrics.json is."""
    acc5 = "" if metrics["acc5"] is None else f", top-5 {metrics['acc5']:.1%}"
    print(f"{config.method} on {config.dataset} with {config.vlm}: top-1 {metrics['acc1']:.1%}{acc5} "
          f"({metrics['n_images']} images) -> {out / 'metrics.json'}")
