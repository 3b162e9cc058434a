"""Zero-shot classifiers as pure functions: class texts in, a ``[D, C]`` weight matrix out.

A class-name classifier (CLIP) and a description classifier (DCLIP, EX2, WaffleCLIP) have the
same shape: each class owns a list of texts, their embeddings are pooled into one column, and
images are scored with one matrix product::

    texts = template_texts(["cat", "dog"], ["a photo of a {}."])
    weights = build_classifier(vlm.encode_texts, texts)       # [D, C]
    logits = vlm.logit_scale * images @ weights               # [N, C]
    metrics = classification_metrics(logits, labels)

Pooling (``aggregate``): ``mean_embedding`` averages the unit text embeddings and renormalises
(open_clip's template ensemble, DCLIP's "merged" variant); ``mean_score`` keeps the plain mean,
so ``image @ column`` equals the mean of the per-text cosine similarities (DCLIP's class score).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence

import torch

from ex2.text import normalise_name  # noqa: F401  (class-name matching, used with these classifiers)

AGGREGATES = ("mean_score", "mean_embedding")
Encode = Callable[[list[str]], torch.Tensor]


# --- class texts -------------------------------------------------------------------------------


def template_texts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Each class name in every template (``{}`` or ``{c}`` marks the name)."""
    if not templates:
        raise ValueError("no templates given; expected at least one, e.g. 'a photo of a {}.'")
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if bad:
        raise ValueError(f"template {bad[0]!r} has no '{{}}' where the class name goes")
    return [[t.replace("{c}", "{}").format(name) for t in templates] for name in classnames]


def descriptor_sentence(descriptor: str) -> str:
    """DCLIP's "which (is/has/etc)" clause, by their rule (``make_descriptor_sentence``): a
    descriptor starting with "a"/"used" gets "which is", one starting with "has", "often",
    "typically", "may" or "can" gets "which", any other "which has". Their rule tests string
    prefixes, so "antlers" becomes "which is antlers"; it is kept as is so that published numbers
    reproduce. Descriptors already starting with "which", "is" or "are" (not in their files) are
    completed without doubling the verb."""
    descriptor = descriptor.strip()
    first = descriptor.split(" ", 1)[0].lower()
    if first in ("which", "that"):
        return descriptor
    if first in ("is", "are"):
        return f"which {descriptor}"
    if descriptor.startswith(("a", "used")):
        return f"which is {descriptor}"
    if descriptor.startswith(("has", "often", "typically", "may", "can")):
        return f"which {descriptor}"
    return f"which has {descriptor}"


def dclip_texts(classnames: Sequence[str], descriptors: Sequence[Sequence[str]]) -> list[list[str]]:
    """Menon & Vondrick's prompts: "{class}, which (is/has) {descriptor}" per descriptor."""
    return [
        [f"{name}, {descriptor_sentence(d)}" for d in class_descriptors]
        for name, class_descriptors in zip(classnames, descriptors, strict=True)
    ]


def waffle_descriptors(
    classnames: Sequence[str], kind: str, count: int, seed: int, vocabulary: Sequence[str]
) -> list[str]:
    """WaffleCLIP's random descriptors, one set shared by all classes.

    ``words``: as many random words as class names have on average, each cut to the average
    class-name word length; ``chars``: random characters in the same shape, words joined by
    ", "; ``both``: ``count`` of each (WaffleCLIP's default pairs).
    """
    if kind not in ("words", "chars", "both"):
        raise ValueError(f"waffle kind must be words, chars or both, not {kind!r}")
    if count < 1:
        raise ValueError(f"waffle count must be at least 1, got {count}")
    words = [w.split() for w in classnames] or [["object"]]
    n_words = max(1, round(sum(len(w) for w in words) / len(words)))
    word_len = max(2, round(sum(sum(map(len, w)) / len(w) for w in words) / len(words)))
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if kind in ("words", "both"):
            if not vocabulary:
                raise ValueError("the waffle word vocabulary is empty")
            out.append(" ".join(rng.choice(vocabulary)[:word_len] for _ in range(n_words)))
        if kind in ("chars", "both"):
            alphabet = string.ascii_letters + string.digits
            out.append(", ".join("".join(rng.choices(alphabet, k=word_len)) for _ in range(n_words)))
    return out


def waffle_texts(
    classnames: Sequence[str], kind: str, count: int, seed: int, vocabulary: Sequence[str]
) -> list[list[str]]:
    """WaffleCLIP's prompts: "A photo of a {class}, which (is/has) {random descriptor}."."""
    shared = waffle_descriptors(classnames, kind, count, seed, vocabulary)
    return [[f"A photo of a {name}, {descriptor_sentence(d)}." for d in shared] for name in classnames]


# --- the classifier ----------------------------------------------------------------------------


def encode_text_sets(encode: Encode, text_sets: Sequence[Sequence[Sequence[str]]]) -> list[torch.Tensor]:
    """Encode every distinct text of several class-text sets in one call.

    Returns, per set, the embeddings of its texts flattened in class order ``[N_set, D]``.
    """
    unique = list(dict.fromkeys(t for texts in text_sets for class_texts in texts for t in class_texts))
    if not unique:
        raise ValueError("no texts to encode: every class has an empty text list")
    bank = encode(unique)
    row = {text: i for i, text in enumerate(unique)}
    return [bank[[row[t] for class_texts in texts for t in class_texts]] for texts in text_sets]


def owners_of(class_texts: Sequence[Sequence[str]]) -> torch.Tensor:
    """The class id of every text, flattened in class order."""
    return torch.tensor([c for c, texts in enumerate(class_texts) for _ in texts], dtype=torch.long)


def pool_classifier(
    text_embeddings: torch.Tensor, owners: torch.Tensor, n_classes: int, aggregate: str = "mean_embedding"
) -> torch.Tensor:
    """Pool unit text embeddings ``[N, D]`` owned by classes ``owners [N]`` into weights ``[D, C]``."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, not {aggregate!r}")
    counts = torch.bincount(owners, minlength=n_classes)
    if (counts == 0).any():
        empty = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"class id(s) {empty[:10]} have no texts; every class needs at least one")
    sums = torch.zeros(n_classes, text_embeddings.shape[1], dtype=torch.float32)
    sums.index_add_(0, owners, text_embeddings.float())
    means = sums / counts[:, None]
    if aggregate == "mean_embedding":
        means = torch.nn.functional.normalize(means, dim=-1)
    return means.T.contiguous()


def build_classifier(encode: Encode, class_texts: Sequence[Sequence[str]], aggregate: str = "mean_embedding") -> torch.Tensor:
    """Class texts -> ``[D, C]`` weights (each distinct text encoded once)."""
    (embeddings,) = encode_text_sets(encode, [class_texts])
    return pool_classifier(embeddings, owners_of(class_texts), len(class_texts), aggregate)


def score(image_embeddings: torch.Tensor, weights: torch.Tensor, logit_scale: float = 100.0,
          logit_bias: float = 0.0) -> torch.Tensor:
    """Logits ``[N, C]``: one matrix product."""
    return logit_scale * image_embeddings.float() @ weights + logit_bias


# --- metrics -----------------------------------------------------------------------------------


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts ``[C, C]``: rows are true classes, columns predicted ones."""
    flat = labels.long() * n_classes + predictions.long()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_recall(confusion: torch.Tensor) -> torch.Tensor:
    """Recall per true class; NaN for classes without images."""
    support = confusion.sum(1).double()
    return confusion.diag().double() / support.where(support > 0, torch.tensor(float("nan")))


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows whose label is among the ``k`` best logits (``k`` capped at C)."""
    if len(labels) == 0:
        return float("nan")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(1).double().mean().item()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` (CLIP_benchmark's keys), as fractions."""
    confusion = confusion_matrix(logits.argmax(1), labels, logits.shape[1])
    recall = per_class_recall(confusion)
    return {
        "acc1": topk_accuracy(logits, labels, 1),
        "acc5": topk_accuracy(logits, labels, 5),
        "mean_per_class_recall": recall.nanmean().item() if len(labels) else float("nan"),
    }
