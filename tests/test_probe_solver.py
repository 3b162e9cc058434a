"""``ex2 probe --solver adam``: VLMClassifier's probe (feature_analysis/probe.py) against a
transcription of its training loop, and through the CLI beside ours."""

from __future__ import annotations

import json

import pytest
import torch

from ex2.cli import main
from ex2.probe.stage import fit_adam_probe


def loop_probe(layer, train_features, train_labels, test_features, test_labels, n_epochs, bsz=512):
    """probe.py's loop: Adam lr 1e-3 on cross-entropy, batches in order, test accuracy per epoch."""
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.001)
    criterion = torch.nn.CrossEntropyLoss()
    accs = []
    for _ in range(n_epochs):
        for i in range(0, len(train_features), bsz):
            optimizer.zero_grad()
            loss = criterion(layer(train_features[i: i + bsz]), train_labels[i: i + bsz])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accs.append((layer(test_features).argmax(dim=1) == test_labels).float().mean().item())
    return accs


def test_adam_probe_equals_the_published_loop():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(700, 12, generator=generator) * 5 + 3, torch.randint(0, 4, (700,), generator=generator)
    test_x, test_y = torch.randn(90, 12, generator=generator) * 5 + 3, torch.randint(0, 4, (90,), generator=generator)
    _, curves = fit_adam_probe((x, y), {"test": (test_x, test_y)}, 4, epochs=6, seed=3)
    with torch.random.fork_rng():  # the same first weights and order as the seeded fit
        torch.manual_seed(3)
        layer = torch.nn.Linear(12, 4)
        order = torch.randperm(700)
    theirs = loop_probe(layer, x[order], y[order], test_x, test_y, 6)
    assert curves["test"] == pytest.approx(theirs, abs=1e-6)  # theirs averages in float32


def test_probe_solvers_side_by_side(shared_cache, tmp_path):
    base = ["probe", "--dataset", "samples", "--vlm", "conse", "--device", "cpu", "--no-progress"]
    assert main([*base, "--solver", "adam", "--epochs", "30", "--output", str(tmp_path / "adam")]) == 0
    adam = json.loads((tmp_path / "adam" / "metrics.json").read_text())
    assert adam["solver"] == "adam" and len(adam["test_acc1_curve"]) == 30
    assert adam["acc1"] == adam["test_acc1_curve"][-1] and adam["acc1_best_epoch"] == max(adam["test_acc1_curve"])
    assert "test set" in adam["best_epoch_chosen_on"]
    assert adam["acc1_val_epoch"] == adam["test_acc1_curve"][adam["val_epoch"] - 1]
    assert main([*base, "--c", "1", "--output", str(tmp_path / "logreg")]) == 0
    assert json.loads((tmp_path / "logreg" / "metrics.json").read_text())["solver"] == "logreg"
