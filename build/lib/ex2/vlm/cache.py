"""Image embeddings, computed in batches and cached on disk.

The cache lives in ``cache_dir()/embeddings/<model>-<hash>/``, one folder per (VLM identity,
forward dtype). Each batch of new embeddings is one ``.npz`` shard written atomically (temp file,
then rename), so a killed job leaves only whole shards and concurrent jobs never collide. A shard
maps keys, the SHA-1 of (absolute path, file size, mtime_ns), to float32 rows: an edited or
replaced image gets a new key and is embedded again.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ex2.io import atomic_open, cache_dir, write_json
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
                    f"ignoring unreadable embedding shard {self.folder / name}: {err}", stacklevel=2
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
                    f"ignoring unreadable embedding shard {self.folder / name}: {err}", stacklevel=2
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


def _prepare(vlm: VLM, path: Path, strict: bool) -> torch.Tensor | str:
    """The preprocessed image, or (unless ``strict``, which raises) why it cannot be read."""
    from ex2.data.images import load_image

    try:
        return vlm.preprocess(load_image(path, strict=True))
    except (OSError, ValueError, SyntaxError) as err:
        if strict:
            raise
        return str(err) or type(err).__name__


def _prepared_batches(
    vlm: VLM, paths: list[Path], batch_size: int, strict: bool, workers: int
) -> Iterator[list[tuple[Path, torch.Tensor | str]]]:
    """Batches of (path, pixels or reason), decoded by ``workers`` threads one batch ahead, so
    decoding the next batch overlaps the forward pass of this one."""
    batches = [paths[start : start + batch_size] for start in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(batch: list[Path] | None) -> list:
            return [(path, pool.submit(_prepare, vlm, path, strict)) for path in batch or []]

        pending = submit(batches[0] if batches else None)
        for following in [*batches[1:], None]:
            current, pending = pending, submit(following)
            yield [(path, future.result()) for path, future in current]


def _encode_batches(vlm: VLM, batches, keys: dict[Path, str], store: EmbeddingCache | None, bar):
    """Encode each batch and write it to ``store``; returns (key -> embedding, skipped)."""
    done, skipped = {}, []
    for batch in batches:
        skipped += [(path, item) for path, item in batch if isinstance(item, str)]
        good = [(keys[path], item) for path, item in batch if not isinstance(item, str)]
        if good:
            embeddings = vlm.encode_images(torch.stack([pixels for _, pixels in good]))
            done.update(zip([key for key, _ in good], embeddings, strict=True))
            if store is not None:
                store.put([key for key, _ in good], embeddings)
        bar.update(len(batch))
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
    ``workers`` threads decode and preprocess images (default: up to 4).
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
        batches = _prepared_batches(vlm, todo, batch_size, strict, workers or min(4, os.cpu_count() or 1))
        computed, unreadable = _encode_batches(vlm, batches, keys, store, bar)
    found.update(computed)
    skipped += unreadable
    kept = [p for p in paths if p in keys and keys[p] in found]
    rows = [found[keys[p]] for p in kept]
    embeddings = torch.stack(rows) if rows else torch.empty(0, vlm.embedding_dim())
    return ImageEmbeddings(kept, embeddings, skipped)
