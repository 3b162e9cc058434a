"""Linear probes on a VLM's image features: ``ex2 probe``.

    ex2 probe --dataset samples --vlm conse --output runs/probe/conse
    ex2 probe --dataset pets --data-root DIR --vlm ViT-B-32:openai --train-split trainval --test-split test
    ex2 probe --dataset cub --data-root DIR --vlm gen:llava-hf/llava-1.5-7b-hf --pool last --layer -1

Features come from any ex2 VLM: a dual encoder's image tower (:func:`ex2.vlm.embed_images`, with
its disk cache) or a generative VLM's hidden states (:meth:`ex2.gvlm.GenerativeVLM.features`,
the prompt ``--question`` about the image; ``--layer`` and ``--pool last|mean``), as in Zhang et
al.'s probes. Two solvers (``--solver``):

``logreg`` (ours)
    A multinomial logistic regression (scikit-learn, on standardised features) fitted on the train
    images for every ``--c`` in the grid; the ``C`` with the best validation accuracy is refitted on
    train + validation and reported on the test images.
``adam`` (VLMClassifier's ``feature_analysis/probe.py``)
    An unstandardised ``torch.nn.Linear`` trained on the train images with Adam (``--lr`` 1e-3),
    cross-entropy, batches of ``--probe-batch`` 512 in one seeded shuffled order, ``--epochs`` 500,
    evaluated after every epoch. ``acc1`` is the last epoch's; ``acc1_best_epoch`` the best epoch's
    test accuracy, the number their script prints, **chosen on the test set**;
    ``acc1_val_epoch`` the test accuracy of the epoch best on validation.

Splits: ``--train-split``/``--val-split``/``--test-split`` name dataset splits; a missing one is
carved out of the split before it, per class and seeded (``--val-fraction``, ``--test-fraction``),
so a dataset with one split (``samples``) gives three disjoint parts. The run folder holds
``metrics.json`` (``acc1``, ``acc5``, ``mean_per_class_recall`` on test, the validation curve),
``predictions.csv`` and the resolved ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ex2.classify.common import split_per_class, unreadable_classes
from ex2.classify.generative import image_batches
from ex2.classify.zeroshot import classification_metrics, topk_accuracy
from ex2.core.config import option, save_config
from ex2.core.io import check_output_path, write_csv, write_json
from ex2.data import load_dataset
from ex2.gvlm import GenerativeVLM
from ex2.vlm import embed_images, load_vlm

__all__ = ["ProbeConfig", "choose_c", "fit_adam_probe", "fit_probe", "image_features", "probe_logits",
           "probe_splits", "run", "split_per_class"]

DEFAULT_CS = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]


@dataclass
class ProbeConfig:
    """Linear probe on a VLM's image features: fit on train, choose C on validation, report on test."""

    dataset: str = option("samples", "dataset name (see `ex2 ls`)")
    data_root: str | None = option(None, "folder holding the dataset (not needed for samples)")
    train_split: str | None = option(None, "split to fit on; default: the dataset's evaluation split, "
                                     "carved into train/val/test")
    val_split: str | None = option(None, "split to choose C on; default: --val-fraction of the train split")
    test_split: str | None = option(None, "split to report on; default: --test-fraction of the train split")
    val_fraction: float = option(0.25, "share of each class's train images held out for validation "
                                 "when --val-split is not given")
    test_fraction: float = option(0.25, "share of each class's train images held out for test "
                                  "when --test-split is not given")
    vlm: str = option("conse", "VLM whose image features are probed: a dual encoder or gen:… (see `ex2 ls`)")
    device: str | None = option(None, "torch device; default: CUDA when available")
    precision: str = option("auto", "fp32, fp16, bf16 or auto (fp16 on CUDA)")
    question: str = option("What type of object is in this photo?", "gen: the prompt about the image")
    prompt_format: str = option("auto", "gen: vlmclassifier (LLaVA-1.5's prompt as VLMClassifier's extract_feature.py), "
                                "chat (the chat template) or auto (vlmclassifier for llava models)")
    layer: int = option(-1, "gen: hidden-state index (0 = embeddings, -1 = last layer)")
    pool: str = option("last", "gen: last (the prompt's last token) or mean (over its tokens)")
    solver: Literal["logreg", "adam"] = option(
        "logreg", "logreg (ours: standardised logistic regression, C chosen on validation) or adam "
        "(VLMClassifier's probe.py: linear layer, Adam, last and best-on-test epoch reported)")
    c: list[float] = option(DEFAULT_CS, "inverse regularisation strengths to try (chosen on validation)")
    epochs: int = option(500, "adam: epochs (VLMClassifier: 500)")
    lr: float = option(1e-3, "adam: learning rate (VLMClassifier: 1e-3)")
    probe_batch: int = option(512, "adam: training batch size (VLMClassifier: 512)")
    max_iter: int = option(1000, "iterations of the logistic-regression solver")
    seed: int = option(0, "seed of the train/val/test carving and the solver")
    batch_size: int = option(32, "images per forward pass")
    cache: bool = option(True, "reuse and fill the on-disk image-embedding cache (dual encoders)")
    progress: bool = option(True, "show progress bars")
    output: str = option("runs/probe", "run folder to write")

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}")
        if not self.c or any(value <= 0 for value in self.c):
            raise ValueError(f"--c needs positive values, got {self.c}")
        from ex2.gvlm.backend import PROMPT_FORMATS

        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}, not {self.prompt_format!r}")
        if self.pool not in ("last", "mean"):
            raise ValueError(f"--pool must be last or mean, not {self.pool!r}")
        if self.solver not in ("logreg", "adam"):
            raise ValueError(f"--solver must be logreg or adam, not {self.solver!r}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        for name in ("max_iter", "batch_size", "epochs", "probe_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


# --- splits --------------------------------------------------------------------------------------


def probe_splits(config: ProbeConfig):
    """``(train, val, test)`` datasets per the config (see the module docstring)."""
    train = load_dataset(config.dataset, config.data_root, config.train_split)
    if config.test_split:
        test = load_dataset(config.dataset, config.data_root, config.test_split)
    else:
        test, train = split_per_class(train, config.test_fraction, config.seed, "test")
    if config.val_split:
        val = load_dataset(config.dataset, config.data_root, config.val_split)
    else:
        val, train = split_per_class(train, config.val_fraction / (1 - (0 if config.test_split else config.test_fraction)),
                                     config.seed + 1, "val")
    overlap = {p for p, _ in train.items} & ({p for p, _ in val.items} | {p for p, _ in test.items})
    if overlap or {p for p, _ in val.items} & {p for p, _ in test.items}:
        raise ValueError("the train, validation and test images overlap; name three different splits")
    return train, val, test


# --- features ------------------------------------------------------------------------------------


def image_features(model, dataset, config: ProbeConfig) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """``(features [N, D], labels [N], paths)`` of the dataset's readable images."""
    if isinstance(model, GenerativeVLM):
        prompt, rows, labels, paths = model.prompt(config.question, prompt_format=config.prompt_format), [], [], []
        for batch in image_batches(dataset.items, config.batch_size, [], progress=config.progress, desc="features"):
            rows.append(model.features([b[1] for b in batch], prompt, config.layer, config.pool, config.batch_size))
            labels += [b[2] for b in batch]
            paths += [b[3] for b in batch]
        features = torch.cat(rows) if rows else torch.empty(0, 0)
        return features, torch.tensor(labels, dtype=torch.long), paths
    label_of = dict(dataset.items)
    embedded = embed_images(model, [p for p, _ in dataset.items], cache=config.cache,
                            batch_size=config.batch_size, progress=config.progress)
    labels = torch.tensor([label_of[p] for p in embedded.paths], dtype=torch.long)
    return embedded.embeddings.float(), labels, list(embedded.paths)


# --- the probe -----------------------------------------------------------------------------------


def fit_probe(features: torch.Tensor, labels: torch.Tensor, c: float, max_iter: int = 1000, seed: int = 0):
    """A standardised multinomial logistic regression with inverse regularisation ``c``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    return probe.fit(features.numpy(), labels.numpy())


def probe_logits(probe, features: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``[N, C]`` decision scores over all dataset classes (classes unseen in training get -inf)."""
    classes = probe[-1].classes_
    scores = probe.decision_function(features.numpy())
    scores = scores[:, None] if scores.ndim == 1 else scores
    if len(classes) == 2:  # binary: one column, the score of classes[1]
        scores = torch.tensor(scores).float() * torch.tensor([[-0.5, 0.5]])
    out = torch.full((len(features), n_classes), float("-inf"))
    out[:, torch.as_tensor(classes, dtype=torch.long)] = torch.as_tensor(scores).float()
    return out


def choose_c(train, val, cs: list[float], n_classes: int, max_iter: int, seed: int) -> tuple[float, dict]:
    """The C with the best validation accuracy (the smallest among ties), and every C's accuracy."""
    curve = {}
    for c in cs:
        probe = fit_probe(*train, c, max_iter, seed)
        curve[c] = topk_accuracy(probe_logits(probe, val[0], n_classes), val[1], 1)
    best = max(sorted(cs), key=lambda c: curve[c])
    return best, curve


def fit_adam_probe(train: tuple[torch.Tensor, torch.Tensor], parts: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   n_classes: int, epochs: int = 500, lr: float = 1e-3, batch: int = 512, seed: int = 0):
    """VLMClassifier's linear probe: ``(layer, {part: [accuracy after each epoch]})`` (see the module
    docstring); the train features unstandardised, in one order shuffled with ``seed``."""
    features, labels = train
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = torch.nn.Linear(features.shape[1], n_classes)
        order = torch.randperm(len(labels))
    features, labels = features[order].float(), labels[order]
    optimiser = torch.optim.Adam(layer.parameters(), lr=lr)
    curves: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(epochs):
        for start in range(0, len(labels), batch):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(layer(features[start:start + batch]), labels[start:start + batch])
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            for name, (x, y) in parts.items():
                curves[name].append(topk_accuracy(layer(x.float()), y, 1))
    return layer, curves


def _adam_metrics(config: ProbeConfig, parts: dict, n_classes: int) -> tuple[torch.Tensor, dict]:
    """Test logits of the last epoch and the adam solver's metrics."""
    layer, curves = fit_adam_probe(parts["train"][:2], {"val": parts["val"][:2], "test": parts["test"][:2]},
                                   n_classes, config.epochs, config.lr, config.probe_batch, config.seed)
    with torch.no_grad():
        logits = layer(parts["test"][0].float())
    test, val = curves["test"], curves["val"]
    best, by_val = max(range(len(test)), key=test.__getitem__), max(range(len(val)), key=val.__getitem__)
    return logits, {**classification_metrics(logits, parts["test"][1]), "solver": "adam", "epochs": config.epochs,
                    "lr": config.lr, "probe_batch": config.probe_batch,
                    "acc1_best_epoch": test[best], "best_epoch": best + 1,
                    "best_epoch_chosen_on": "the test set (VLMClassifier's probe.py prints this maximum)",
                    "acc1_val_epoch": test[by_val], "val_epoch": by_val + 1, "val_acc1_curve": val,
                    "test_acc1_curve": test}


def run(config: ProbeConfig, model=None) -> Path:
    """Fit, choose and report a linear probe; write the run folder and return it."""
    out = check_output_path(config.output, "folder")
    train, val, test = probe_splits(config)  # bad splits fail before any model loads
    model = model or _load_model(config)
    n_classes = len(train.classnames)
    parts = {}
    for name, dataset in (("train", train), ("val", val), ("test", test)):
        parts[name] = image_features(model, dataset, config)
        if len(parts[name][1]) == 0:
            raise ValueError(f"{dataset.name} ({dataset.split}): no readable images for the {name} part")
        unreadable_classes(dataset, parts[name][1], drop=False, droppable=False)  # a class the probe never sees: refused
    if config.solver == "adam":
        logits, solved = _adam_metrics(config, parts, n_classes)
    else:
        best, curve = choose_c(parts["train"][:2], parts["val"][:2], config.c, n_classes, config.max_iter, config.seed)
        features = torch.cat([parts["train"][0], parts["val"][0]])
        labels = torch.cat([parts["train"][1], parts["val"][1]])
        probe = fit_probe(features, labels, best, config.max_iter, config.seed)
        logits = probe_logits(probe, parts["test"][0], n_classes)
        solved = {**classification_metrics(logits, parts["test"][1]), "solver": "logreg", "c": best,
                  "val_acc1": {str(c): acc for c, acc in curve.items()}}
    metrics = {
        "dataset": config.dataset, "split": test.split, "vlm": config.vlm, "vlm_identity": model.identity,
        "method": "linear_probe", **solved,
        "n_images": len(parts["test"][1]), "n_classes": n_classes,
        "n_train": len(parts["train"][1]), "n_val": len(parts["val"][1]),
        "feature_dim": int(parts["train"][0].shape[1]),
    }
    if isinstance(model, GenerativeVLM):
        metrics.update(layer=config.layer, pool=config.pool, question=config.question, prompt_format=config.prompt_format)
    out.mkdir(parents=True, exist_ok=True)  # nothing is written before the probe has its results
    save_config(config, out)
    _write_predictions(out / "predictions.csv", parts["test"][2], parts["test"][1], logits, train.classnames)
    write_json(out / "metrics.json", metrics)
    chosen = f"C={metrics['c']}" if config.solver == "logreg" else f"adam, {config.epochs} epochs"
    print(f"linear probe on {config.dataset} with {config.vlm} ({chosen}): top-1 {metrics['acc1']:.1%} "
          f"({metrics['n_images']} test images) -> {out / 'metrics.json'}")
    return out


def _load_model(config: ProbeConfig):
    return load_vlm(config.vlm, config.device, config.precision)


def _write_predictions(path: Path, paths: list[Path], labels: torch.Tensor, logits: torch.Tensor,
                       classnames: list[str]) -> None:
    write_csv(path, ["path", "label", "prediction", "correct"],
              [[str(p), classnames[y], classnames[k], int(y == k)]
               for p, y, k in zip(paths, labels.tolist(), logits.argmax(1).tolist(), strict=True)])
