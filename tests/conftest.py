"""Shared fixtures: every test gets its own EX2 cache unless it asks for the shared one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Models embedded in packages are converted once per machine; keep that cache between tests.
SHARED_CACHE = Path(os.environ.get("EX2_TEST_CACHE", Path.home() / ".cache" / "ex2-test"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def shared_cache(monkeypatch) -> Path:
    """The long-lived cache holding converted embedded models and materialised samples."""
    monkeypatch.setenv("EX2_CACHE", str(SHARED_CACHE))
    return SHARED_CACHE


@pytest.fixture
def tmp_cache(monkeypatch, tmp_path) -> Path:
    """A fresh, empty cache for tests that check what gets written there."""
    cache = tmp_path / "ex2-cache"
    monkeypatch.setenv("EX2_CACHE", str(cache))
    return cache
