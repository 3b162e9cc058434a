"""Figures of a classification run: the confusion matrix, per-class accuracy, and explanations.

An explanation follows DCLIP's figure: the image beside bars of its similarity to the top
texts (descriptors) of the predicted class and, when the prediction is wrong, of the true class.
Everything here reads tensors already computed by :mod:`ex2.classify.stage`; nothing is re-encoded.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from ex2.core.plotting import pyplot, save_png


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    return save_png(fig, path, dpi=110, bbox_inches="tight")


def plot_confusion(confusion: torch.Tensor, classnames: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (true classes down, predictions across)."""
    plt = pyplot()
    n = len(classnames)
    rows = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    size = min(4 + 0.35 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), classnames, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classnames, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return save_figure(fig, path)


def plot_per_class(recall: torch.Tensor, classnames: list[str], path: Path) -> Path:
    """Horizontal bars of per-class accuracy, worst first."""
    plt = pyplot()
    order = torch.argsort(recall.nan_to_num(0.0)).tolist()[:60]
    fig, ax = plt.subplots(figsize=(6, 1 + 0.25 * len(order)))
    ax.barh(range(len(order)), [recall[i].nan_to_num(0.0).item() for i in order], color="tab:blue")
    ax.set_yticks(range(len(order)), [classnames[i] for i in order], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (worst 60 classes shown)" if len(classnames) > 60 else "accuracy")
    return save_figure(fig, path)


def top_texts(image_embedding: torch.Tensor, texts: list[str], text_embeddings: torch.Tensor,
              top: int) -> list[tuple[str, float]]:
    """A class's texts most similar to the image, with their cosine similarities."""
    scores = text_embeddings @ image_embedding
    best = scores.topk(min(top, len(texts))).indices.tolist()
    return [(texts[i], scores[i].item()) for i in best]


def _bars(ax, title: str, scored: list[tuple[str, float]], color: str) -> None:
    labels = [textwrap.shorten(text, 70) for text, _ in scored][::-1]
    ax.barh(range(len(scored)), [s for _, s in scored][::-1], color=color)
    ax.set_yticks(range(len(scored)), ["\n".join(textwrap.wrap(t, 38)) for t in labels], fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("cosine similarity", fontsize=8)


def explain_image(path: Path, image: torch.Tensor, classes: dict[str, list[tuple[str, float]]],
                  true_name: str, pred_name: str, out: Path) -> Path:
    """One figure: the image, then bars of top texts for each class in ``classes``."""
    from ex2.data import load_image

    plt = pyplot()
    fig, axes = plt.subplots(1, 1 + len(classes), figsize=(4 + 4.5 * len(classes), 3.6),
                             gridspec_kw={"width_ratios": [1] + [1.2] * len(classes)})
    for ax in axes[2:]:
        ax.sharex(axes[1])  # bars of both classes on one scale
    picture = load_image(path)
    if picture is not None:
        axes[0].imshow(picture)
    axes[0].axis("off")
    verdict = "correct" if true_name == pred_name else "wrong"
    axes[0].set_title(f"true: {true_name}\npredicted: {pred_name} ({verdict})", fontsize=9)
    colors = {"predicted": "tab:green" if verdict == "correct" else "tab:red", "true": "tab:green"}
    for ax, (title, scored) in zip(axes[1:], classes.items(), strict=True):
        _bars(ax, title, scored, colors["predicted" if title.startswith("predicted") else "true"])
    fig.tight_layout()
    return save_figure(fig, out)


def choose_images(predictions: torch.Tensor, labels: torch.Tensor, count: int, misclassified: bool) -> list[int]:
    """Indices to explain: misclassified ones, or images spread round-robin over classes."""
    if misclassified:
        wrong = (predictions != labels).nonzero().flatten().tolist()
        return wrong[: count or 20]
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        by_class.setdefault(label, []).append(i)
    chosen, depth = [], 0
    while len(chosen) < count and any(depth < len(v) for v in by_class.values()):
        chosen += [v[depth] for v in by_class.values() if depth < len(v)]
        depth += 1
    return chosen[:count]


def explain_run(folder: Path, classnames: list[str], result, images, labels: torch.Tensor, count: int,
                misclassified: bool, top: int = 5, progress: bool = True) -> list[Path]:
    """Write one explanation PNG per chosen image into ``folder``; returns their paths."""
    from tqdm.auto import tqdm

    from ex2.classify.zeroshot import owners_of

    owners = owners_of(result.texts)
    predictions = result.logits.argmax(1)
    written = []
    chosen = choose_images(predictions, labels, count, misclassified)
    for i in tqdm(chosen, desc="explanations", unit="img", disable=not progress):
        true_id, pred_id = labels[i].item(), predictions[i].item()
        class_score = images.embeddings[i] @ result.weights  # the pooled score the prediction used
        shown = {f"predicted: {classnames[pred_id]} (class score {class_score[pred_id]:.3f})": pred_id}
        if true_id != pred_id:
            shown[f"true: {classnames[true_id]} (class score {class_score[true_id]:.3f})"] = true_id
        classes = {title: top_texts(images.embeddings[i], result.texts[c], result.text_embeddings[owners == c], top)
                   for title, c in shown.items()}
        name = f"{i:05d}_{Path(images.paths[i]).stem[:40]}.png"
        written.append(explain_image(images.paths[i], images.embeddings[i], classes, classnames[true_id],
                                     classnames[pred_id], folder / name))
    return written
