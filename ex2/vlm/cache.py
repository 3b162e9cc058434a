"""Image and text embeddings, computed in batches and cached on disk.

Image embeddings live in ``cache_dir()/embeddings/<model>-<hash>/``, text embeddings in
``cache_dir()/text-embeddings/<model>-<hash>/``, one folder per (VLM identity, forward dtype).
Each batch of new embeddings is one ``.npz`` shard written atomically (temp file, then rename), so
a killed job leaves only whole shards and concurrent jobs never collide; an unreadable shard is
named in a warning and its embeddings are computed again. A shard maps keys to float32 rows: for
an image the SHA-1 of (absolute path, file size, mtime_ns), so an edited or replaced image gets a
new key and is embedded again; for a text the SHA-1 of its exact UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import sys
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from tqdm.auto import tqdm

from ex2.core.io import atomic_open, cache_dir, write_json
from ex2.data.images import quiet_worker
from ex2.vlm.base import VLM


@dataclass
class ImageEmbeddings:
    """Embeddings of the images that could be read, in input order, and the ones skipped."""

    paths: list[Path]  # images actually embedded, in input order
    embeddings: torch.Tensor  # [len(paths), D], float32, L2-normalised
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)


def file_key(path: Path) -> str:
    """A cache key for the file's current contents: absolute path, size and mtime_ns."""
    path = path.resolve()
    stat = path.stat()
    raw = f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode("utf-8", "surrogateescape")
    return hashlib.sha1(raw).hexdigest()


UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)  # a damaged shard


class EmbeddingCache:
    """The shards of one VLM; an index of key -> (shard, row) is kept per process."""

    _indexes: dict[Path, dict[str, tuple[str, int]]] = {}  # folder -> key -> (shard, row)
    _seen: dict[Path, set[str]] = {}  # folder -> shard names already indexed

    def __init__(self, vlm: VLM, root: Path | None = None) -> None:
        tag = f"{vlm.identity}|{str(vlm.dtype).removeprefix('torch.')}"
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", vlm.identity)[-60:].strip("_")
        digest = hashlib.sha1(tag.encode()).hexdigest()[:12]
        self.folder = (root or cache_dir() / "embeddings") / f"{slug}-{digest}"
        self.meta = {"identity": vlm.identity, "dtype": str(vlm.dtype)}
        self.index = self._indexes.setdefault(self.folder, {})
        self.seen = self._seen.setdefault(self.folder, set())
        self.writable = True

    def _refresh(self) -> None:
        """Index shards written since the last look (by this or another process)."""
        if not self.folder.is_dir():
            return
        for name in sorted(set(os.listdir(self.folder)) - self.seen):
            if not name.endswith(".npz") or name.startswith("."):
                continue
            self.seen.add(name)
            try:
                with np.load(self.folder / name) as shard:
                    keys = shard["keys"].tolist()
            except UNREADABLE as err:
                warnings.warn(
                    f"ignoring unreadable embedding shard {self.folder / name} ({err}); "
                    "what it held is embedded again", stacklevel=2
                )
                continue
            self.index.update((key, (name, row)) for row, key in enumerate(keys))

    def get(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The cached embeddings among ``keys``."""
        self._refresh()
        by_shard: dict[str, list[str]] = {}
        for key in keys:
            if key in self.index:
                by_shard.setdefault(self.index[key][0], []).append(key)
        found = {}
        for name, wanted in by_shard.items():
            try:
                with np.load(self.folder / name) as shard:
                    rows = shard["emb"][[self.index[key][1] for key in wanted]]
            except UNREADABLE as err:
                warnings.warn(
                    f"ignoring unreadable embedding shard {self.folder / name} ({err}); "
                    "what it held is embedded again", stacklevel=2
                )
                continue
            found.update(zip(wanted, torch.from_numpy(rows), strict=True))
        return found

    def put(self, keys: list[str], embeddings: torch.Tensor) -> None:
        """Write one shard atomically; a read-only cache only warns."""
        if not self.writable or not keys:
            return
        name = f"{uuid.uuid4().hex}.npz"
        try:
            if not (self.folder / "meta.json").is_file():
                write_json(self.folder / "meta.json", self.meta)
            with atomic_open(self.folder / name, "wb") as handle:
                np.savez(handle, keys=np.array(keys), emb=embeddings.float().numpy())
        except OSError as err:
            self.writable = False
            warnings.warn(
                f"cannot write the embedding cache {self.folder} ({err}); going on without it",
                stacklevel=2,
            )
            return
        self.seen.add(name)
        self.index.update((key, (name, row)) for row, key in enumerate(keys))


class _ImageFiles(torch.utils.data.Dataset):
    """Decoded, preprocessed images by index; a file that cannot be read gives its error instead."""

    def __init__(self, preprocess, paths: list[Path]) -> None:
        self.preprocess, self.paths = preprocess, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Path, torch.Tensor | Exception]:
        from ex2.data.images import load_image

        path = self.paths[index]
        try:
            return path, self.preprocess(load_image(path, strict=True))
        except (OSError, ValueError, SyntaxError) as err:
            return path, err


@dataclass
class _Batch:
    paths: list[Path]  # the images in ``pixels``, in order
    pixels: torch.Tensor | None  # [B, 3, H, W], None when no image of the batch could be read
    failed: list[tuple[Path, Exception]]

    def pin_memory(self) -> _Batch:
        """Called by DataLoader's pinning thread when feeding an accelerator."""
        return replace(self, pixels=self.pixels.pin_memory()) if self.pixels is not None else self


def _collate(items: list[tuple[Path, torch.Tensor | Exception]]) -> _Batch:
    """Stack the readable images of a batch (in the worker, so one tensor crosses over)."""
    good = [(path, item) for path, item in items if isinstance(item, torch.Tensor)]
    pixels = torch.stack([item for _, item in good]) if good else None
    return _Batch([path for path, _ in good], pixels, [(p, e) for p, e in items if isinstance(e, Exception)])


def _loader_workers(requested: int | None, n_images: int, batch_size: int, device: torch.device) -> int:
    """Worker processes decoding ahead of the forward pass: none for a single batch (nothing to
    overlap) or where processes cannot be forked safely (the model is not pickled over to a
    worker; macOS offers fork, but its system libraries are not fork-safe). By default two on CPU,
    where the forward pass wants every core and decoding is a few percent of its work, and up to
    eight to feed an accelerator."""
    if n_images <= batch_size or sys.platform == "darwin" or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    if requested is not None:
        return requested
    return min(os.cpu_count() or 1, 2 if device.type == "cpu" else 8)


def _image_batches(vlm: VLM, paths: list[Path], batch_size: int, workers: int) -> Iterator[_Batch]:
    """Batches of preprocessed images. Worker processes (forked, one torch thread each, as
    DataLoader sets) decode and preprocess the next batches while this one runs forward."""
    return iter(torch.utils.data.DataLoader(
        _ImageFiles(vlm.preprocess, paths), batch_size=batch_size, collate_fn=_collate, num_workers=workers,
        multiprocessing_context="fork" if workers else None, pin_memory=vlm.device.type == "cuda",
        worker_init_fn=quiet_worker,
    ))


def _encode_batches(vlm: VLM, batches: Iterator[_Batch], keys: dict[Path, str], store: EmbeddingCache | None,
                    strict: bool, bar) -> tuple[dict[str, torch.Tensor], list[tuple[Path, str]]]:
    """Encode each batch and write it to ``store``; returns (key -> embedding, skipped)."""
    done, skipped = {}, []
    for batch in batches:
        if strict and batch.failed:
            raise batch.failed[0][1]
        skipped += [(path, str(err) or type(err).__name__) for path, err in batch.failed]
        if batch.pixels is not None:
            embeddings = vlm.encode_images(batch.pixels)
            batch_keys = [keys[path] for path in batch.paths]
            done.update(zip(batch_keys, embeddings, strict=True))
            if store is not None:
                store.put(batch_keys, embeddings)
        bar.update(len(batch.paths) + len(batch.failed))
    return done, skipped


def _keys(paths: list[Path], strict: bool) -> tuple[dict[Path, str], list[tuple[Path, str]]]:
    keys, skipped = {}, []
    for path in dict.fromkeys(paths):
        try:
            keys[path] = file_key(path)
        except OSError as err:
            if strict:
                raise FileNotFoundError(f"{path}: cannot read image file ({err.strerror})") from err
            skipped.append((path, f"cannot read file: {err.strerror}"))
    return keys, skipped


def embed_images(
    vlm: VLM,
    paths: Sequence[str | Path],
    *,
    cache: bool = True,
    batch_size: int = 32,
    strict: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> ImageEmbeddings:
    """Embed image files with ``vlm``, reusing and filling the disk cache.

    Unreadable images are skipped (listed in ``.skipped``) unless ``strict``, which raises.
    ``workers`` processes decode and preprocess images ahead of the forward pass (default: 2 on
    CPU, up to 8 otherwise; 0 decodes in this process).
    """
    paths = [Path(p) for p in paths]
    keys, skipped = _keys(paths, strict)
    store = EmbeddingCache(vlm) if cache else None
    found = store.get(list(keys.values())) if store else {}
    todo = list(dict.fromkeys(p for p, key in keys.items() if key not in found))
    bar = tqdm(
        total=len(todo),
        desc=f"embedding images ({vlm.identity})",
        unit="img",
        disable=not progress or not todo,
    )
    with bar:
        batches = _image_batches(vlm, todo, batch_size, _loader_workers(workers, len(todo), batch_size, vlm.device))
        computed, unreadable = _encode_batches(vlm, batches, keys, store, strict, bar)
    found.update(computed)
    skipped += unreadable
    kept = [p for p in paths if p in keys and keys[p] in found]
    rows = [found[keys[p]] for p in kept]
    embeddings = torch.stack(rows) if rows else torch.empty(0, vlm.embedding_dim())
    return ImageEmbeddings(kept, embeddings, skipped)


def text_key(text: str) -> str:
    """A cache key for a text: the SHA-1 of its exact UTF-8 bytes."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def embed_texts(
    vlm: VLM, texts: Sequence[str], *, cache: bool = True, progress: bool = True, chunk: int = 1024
) -> torch.Tensor:
    """``vlm.encode_texts(texts)`` (``[N, D]`` float32, L2-normalised), reusing and filling the disk
    cache of text embeddings; texts it lacks are encoded ``chunk`` at a time under a progress bar."""
    if isinstance(texts, str):
        raise TypeError("embed_texts takes a list of strings, not one string")
    keys = {text: text_key(text) for text in texts}
    store = EmbeddingCache(vlm, cache_dir() / "text-embeddings") if cache else None
    found = store.get(list(keys.values())) if store else {}
    todo = [text for text, key in keys.items() if key not in found]
    starts = range(0, len(todo), chunk)
    bar = tqdm(starts, desc=f"encoding texts ({vlm.identity})", unit="chunk", disable=not progress or len(starts) < 2)
    for start in bar:
        batch = todo[start : start + chunk]
        embeddings = vlm.encode_texts(batch)
        found.update(zip([keys[text] for text in batch], embeddings, strict=True))
        if store is not None:
            store.put([keys[text] for text in batch], embeddings)
    if not texts:
        return torch.empty(0, vlm.embedding_dim())
    return torch.stack([found[keys[text]] for text in texts])
