"""What every classification run writes: the scored classifier, metrics.json's fixed keys, the tables.

``metrics.json`` starts with fixed keys (dataset, split, vlm, method, descriptions, categories, acc1,
acc5, mean_per_class_recall, n_images, n_classes, n_skipped_images), rolled up by ``ex2 report``; a
method's own entries follow. ``per_class.csv``, ``confusion.csv`` and ``predictions.csv`` (with their
figures) come from one :class:`Evaluation`, written by :func:`ex2.core.io.write_csv`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ex2.classify import zeroshot
from ex2.classify.explain import plot_confusion, plot_per_class
from ex2.core.intervals import classification_intervals, mean_std
from ex2.core.io import write_csv


@dataclass
class Evaluation:
    """One scored classifier: logits of the embedded images and the metrics they give."""

    texts: list[list[str]]  # per class
    text_embeddings: torch.Tensor  # [N_texts, D], flattened in class order
    weights: torch.Tensor  # [D, C]
    logits: torch.Tensor  # [N_images, C]
    metrics: dict[str, float]
    labels: torch.Tensor | None = None  # [N_images], for the interval of a mean over seeds


def summarise(results: list[Evaluation]) -> dict:
    """Metrics of one evaluation, or their mean over seeds with the spread (population standard
    deviation, numpy's default ddof 0, as WaffleCLIP reports it), the mean's 95 % intervals (images
    resampled, :func:`ex2.core.intervals.classification_intervals`) and per-seed values."""
    keys = ("acc1", "acc5", "mean_per_class_recall")
    if len(results) == 1:
        return dict(results[0].metrics)
    out = {}
    for key in keys:
        out[key], out[f"{key}_std"] = mean_std([r.metrics[key] for r in results])
    labels = results[0].labels
    if labels is not None:
        hits = [[zeroshot.topk_hits(r.logits, labels, k).numpy() for r in results] for k in (1, 5)]
        out.update(classification_intervals(hits[0], labels.numpy(), hits[1]))
    out["per_seed"] = [r.metrics for r in results]
    return out


def write_tables(out: Path, classnames: list[str], result: Evaluation, labels: torch.Tensor, paths: list[Path]) -> None:
    """per_class.csv, confusion.csv, predictions.csv and their figures."""
    n = len(classnames)
    predictions = result.logits.argmax(1)
    confusion = zeroshot.confusion_matrix(predictions, labels, n)
    recall = zeroshot.per_class_recall(confusion)
    counts = [len(t) for t in result.texts]
    write_csv(out / "per_class.csv", ["class_id", "class", "n_images", "accuracy", "n_texts"],
               [[i, classnames[i], int(confusion[i].sum()), f"{recall[i].item():.6f}", counts[i]] for i in range(n)])
    write_csv(out / "confusion.csv", ["true \\ predicted", *classnames],
               [[classnames[i], *confusion[i].tolist()] for i in range(n)])
    top = result.logits.topk(min(5, n), dim=1).indices
    write_csv(out / "predictions.csv", ["path", "label", "prediction", "correct", "top5"],
               [[str(p), classnames[y], classnames[k], int(y == k), "|".join(classnames[j] for j in t)]
                for p, y, k, t in zip(paths, labels.tolist(), predictions.tolist(), top.tolist(), strict=True)])
    plot_confusion(confusion, classnames, out / "confusion.png")
    plot_per_class(recall, classnames, out / "per_class.png")


def class_text_table(classnames: list[str], texts: list[list[str]]) -> dict[str, list[str]]:
    """class_texts.json: texts by class name; a name several classes share (ImageNet's two
    "missile" classes) gets its class id, "missile #657", so no class is lost."""
    shared = {n for n, count in Counter(classnames).items() if count > 1}
    return {(f"{n} #{i}" if n in shared else n): t for i, (n, t) in enumerate(zip(classnames, texts, strict=True))}


def build_metrics(config, dataset, vlm, results: list[Evaluation], info: dict, images) -> dict:
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
