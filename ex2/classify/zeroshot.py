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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ex2.core.intervals import classification_intervals
from ex2.core.text import normalise_name

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
    """DCLIP's "which (is/has/...)" clause (their ``make_descriptor_sentence``), on the raw string.

    A descriptor starting with "a" (so also "an", "antlers") gets "which is", one starting with
    "has", "often", "typically", "may" or "can" gets "which", one starting with "used" gets
    "which is", any other "which has". Their rule tests string prefixes, case-sensitively, and
    changes nothing else: "is struck by" becomes "which has is struck by", "" becomes "which has ".
    Kept as is so that their texts, and so their numbers, reproduce.
    """
    if descriptor.startswith("a"):
        return f"which is {descriptor}"
    if descriptor.startswith(("has", "often", "typically", "may", "can")):
        return f"which {descriptor}"
    if descriptor.startswith("used"):
        return f"which is {descriptor}"
    return f"which has {descriptor}"


def dclip_name(key: str) -> str:
    """The class name DCLIP and WaffleCLIP write for a descriptor-file key (their ``wordify``)."""
    return key.replace("_", " ")


def dclip_texts(
    classnames: Sequence[str], descriptors: Sequence[Sequence[str]], suffix: str = ""
) -> list[list[str]]:
    """Menon & Vondrick's prompts: "{class}, which (is/has) {descriptor}{suffix}" per descriptor.

    ``suffix`` is their ``after_text``: "." on ImageNet, empty on their other datasets. A class
    with an empty descriptor list gets one empty descriptor, as their loader does.
    """
    return [
        [f"{name}, {descriptor_sentence(d)}{suffix}" for d in (list(class_descriptors) or [""])]
        for name, class_descriptors in zip(classnames, descriptors, strict=True)
    ]


def cupl_texts(
    classnames: Sequence[str], prompts: Sequence[Sequence[str]], templates: Sequence[str] = ()
) -> list[list[str]]:
    """Pratt et al.'s CuPL texts: each class's prompts as written, repeats kept (a repeated
    prompt weighs more in the mean); with ``templates`` ("both"), the class name in every
    template first, pooled with the prompts in one mean as their ``use_both`` does."""
    named = template_texts(classnames, templates) if templates else [[] for _ in classnames]
    return [[*t, *list(p)] for t, p in zip(named, prompts, strict=True)]


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
    classnames: Sequence[str], kind: str, count: int, seed: int, vocabulary: Sequence[str],
    prefix: str = "A photo of a ",
) -> list[list[str]]:
    """ex2's own random-descriptor prompts (see :func:`waffle_descriptors`):
    "{prefix}{class}, which (is/has) {random descriptor}."."""
    shared = waffle_descriptors(classnames, kind, count, seed, vocabulary)
    return [[f"{prefix}{name}, {descriptor_sentence(d)}." for d in shared] for name in classnames]


# --- WaffleCLIP (Roth et al.), as its waffle_tools.py draws them ---------------------------------


def waffleclip_alphabet(descriptors: Iterable[str]) -> list[str]:
    """WaffleCLIP's characters: every character of the descriptor file's texts except the
    space, "," and ".", sorted (their ``character_list``)."""
    return sorted(set("".join(descriptors)) - {" ", ",", "."})


def waffleclip_shape(keys: Sequence[str]) -> dict[str, int]:
    """WaffleCLIP's sizes, from the descriptor file's class keys.

    ``words``/``word_length``: random words per descriptor (mean word count of the names,
    rounded, at least 1) and the length they are cut to (mean word length, rounded);
    ``groups``/``group_length``: a character descriptor is ``groups`` groups of ``group_length``
    random characters joined by ", ", where ``groups`` is the mean space count of the keys
    (rounded) plus one and the characters are the mean longest-word length (rounded up), raised
    to the next multiple of ``groups`` (always raised: a multiple gains a whole ``groups``).
    Rounding is numpy's (half to even), as theirs.
    """
    if not keys:
        raise ValueError("WaffleCLIP's descriptor shape needs at least one class key")
    names = [dclip_name(k).split(" ") for k in keys]
    words = int(max(np.round(np.mean([len(n) for n in names])), 1))
    word_length = int(np.round(np.mean([np.mean([len(w) for w in n]) for n in names])))
    groups = int(np.round(np.mean([k.count(" ") for k in keys]))) + 1
    chars = int(np.ceil(np.mean([max(len(w) for w in k.split(" ")) for k in keys])))
    chars += groups - chars % groups
    return {"words": words, "word_length": word_length, "groups": groups, "group_length": chars // groups}


def waffleclip_texts(
    keys: Sequence[str], descriptors: Iterable[str], words: Sequence[str], count: int, seed: int,
    kind: str = "both", prefix: str = "A photo of a ", suffix: str = ".",
) -> tuple[list[str], str]:
    """WaffleCLIP's shared random descriptors for one seed: (the texts of the class they were
    drawn for, that class's name); another class's texts replace that name by its own.

    Draws follow their ``waffle`` mode (``kind="both"``: per key, ``count`` pairs of a random
    word descriptor and a random character descriptor) or ``waffle_characters`` (``"chars"``),
    from numpy's legacy generator seeded with ``seed`` as their ``seed_everything``: every key
    of the file draws in file order, then one key is chosen whose texts all classes share, so
    a seed gives their very texts. ``words`` is their word list in order, cut to the shape's
    word length; characters come from ``descriptors`` (:func:`waffleclip_alphabet`).
    """
    if kind not in ("both", "chars"):
        raise ValueError(f"WaffleCLIP draws words and characters (both) or characters (chars), not {kind!r}")
    if count < 1:
        raise ValueError(f"waffle count must be at least 1, got {count}")
    shape = waffleclip_shape(keys)
    alphabet = np.array(waffleclip_alphabet(descriptors))
    if not len(alphabet):
        raise ValueError("the descriptor texts hold no characters to draw WaffleCLIP's descriptors from")
    vocabulary = np.array([w[: shape["word_length"]] for w in words])
    if kind == "both" and not len(vocabulary):
        raise ValueError("the WaffleCLIP word list is empty")
    rng = np.random.RandomState(seed)

    def draw(pool: np.ndarray) -> str:
        return str(rng.choice(pool, 1, replace=False)[0])  # a permutation per draw, as theirs

    drawn = []
    for _ in keys:
        descriptors_of_key = []
        for _ in range(count):
            if kind == "both":
                descriptors_of_key.append(" ".join(draw(vocabulary) for _ in range(shape["words"])))
            groups = ("".join(draw(alphabet) for _ in range(shape["group_length"])) for _ in range(shape["groups"]))
            descriptors_of_key.append(", ".join(groups))
        drawn.append(descriptors_of_key)
    chosen = int(rng.choice(len(keys)))
    name = dclip_name(keys[chosen])
    return [f"{prefix}{name}, {descriptor_sentence(d)}{suffix}" for d in drawn[chosen]], name


def waffleclip_class_texts(shared: Sequence[str], drawn_for: str, classnames: Sequence[str]) -> list[list[str]]:
    """Each class's copy of the shared texts: the name they were drawn for replaced by its own."""
    return [[t.replace(drawn_for, name) for t in shared] for name in classnames]


@dataclass(frozen=True)
class ClassMatch:
    """Which keys of a description file belong to which dataset class."""

    keys_of: tuple[tuple[int, ...], ...]  # per class: indices of its keys (empty: none)
    unused: tuple[int, ...]  # indices of keys that name no class
    by_position: bool  # keys taken in the dataset's class order, as DCLIP does


def _in_class_order(keys: Sequence[str], classes_named: dict[str, list[int]]) -> bool:
    """No key names a class other than the one at its own position."""
    return all(i in classes_named.get(normalise_name(k), [i]) for i, k in enumerate(keys))


def match_classes(classnames: Sequence[str], keys: Sequence[str], by_position: bool = False) -> ClassMatch:
    """Match description-file keys to class names after :func:`normalise_name`.

    With ``by_position``, a file with as many keys as classes, none of which names a class at
    another position, is matched key i to class i (DCLIP's rule: its key order is the dataset's
    class order), whatever the names say. Otherwise by name; a name shared by several classes
    (a clash, such as ImageNet's two "crane" synsets) goes to the class whose index is the key's
    position in the file when that is one of them, else to the first of them (by index) that no
    key took yet. Keys naming no class are returned as ``unused``.
    """
    classes_named: dict[str, list[int]] = {}
    for i, name in enumerate(classnames):
        classes_named.setdefault(normalise_name(name), []).append(i)
    if by_position and len(keys) == len(classnames) and _in_class_order(keys, classes_named):
        return ClassMatch(tuple((i,) for i in range(len(keys))), (), True)
    keys_of: list[list[int]] = [[] for _ in classnames]
    unused = []
    for position, key in enumerate(keys):
        candidates = classes_named.get(normalise_name(key), [])
        if not candidates:
            unused.append(position)
            continue
        free = [c for c in candidates if not keys_of[c]]
        target = position if position in free else (free or candidates)[0]
        keys_of[target].append(position)
    return ClassMatch(tuple(tuple(k) for k in keys_of), tuple(unused), False)


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


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """``[N]`` bool: the label is among the row's ``k`` best logits (``k`` capped at C)."""
    return (logits.topk(min(k, logits.shape[1]), dim=1).indices == labels[:, None]).any(1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` (CLIP_benchmark's keys), as fractions, each
    with its 95 % interval (``acc1_low``, ``acc1_high``, …; :func:`ex2.core.intervals.classification_intervals`)."""
    confusion = confusion_matrix(logits.argmax(1), labels, logits.shape[1])
    recall = per_class_recall(confusion)
    return {
        "acc1": topk_accuracy(logits, labels, 1),
        "acc5": topk_accuracy(logits, labels, 5),
        "mean_per_class_recall": recall.nanmean().item() if len(labels) else float("nan"),
        **classification_intervals(topk_hits(logits, labels, 1).numpy(), labels.numpy(),
                                   topk_hits(logits, labels, 5).numpy()),
    }
