"""Files written so that a killed job never leaves half an output behind.

Outputs are checked before any work (:func:`check_output_path`), written atomically (temp file
beside the target, renamed over it), appended record by record for resumable logs, and held by
one run at a time (:func:`output_lock`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from ex2.core.errors import OutputError


def cache_dir() -> Path:
    """Where converted models, materialised datasets and embeddings live (``$EX2_CACHE``)."""
    return Path(os.environ.get("EX2_CACHE", Path.home() / ".cache" / "ex2")).expanduser()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


STALE_TEMP_SECONDS = 3600


def temp_folder_beside(target: Path) -> Path:
    """A fresh temp folder beside ``target``, to build it in and rename into place. Temp folders
    of the same target left by killed builds more than an hour ago are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if stale.is_dir() and time.time() - stale.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    folder.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    return folder


def materialise(folder: Path, build: Callable[[Path], None]) -> Path:
    """``folder``, made once by ``build(tmp)`` in a temp folder beside it and then renamed into
    place, so a killed build never leaves half a folder; later calls reuse it."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    tmp = temp_folder_beside(folder)
    try:
        build(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():  # else another process finished the same build first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def check_output_path(path: str | Path, kind: Literal["file", "folder"] = "file", flag: str = "--output") -> Path:
    """``path`` if a ``kind`` ("file" or "folder") can be written there, else an OutputError naming it.

    Call it before any model loads: it fails on an existing thing of the other kind, a parent that
    is a file, and a folder this user may not write in. It creates nothing.
    """
    path = Path(path).expanduser()
    if kind == "file" and path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; expected the path of a file to write")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is an existing file; expected a folder (created if missing)")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} {path}: no permission to write it")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{flag} {path}: {ancestor} is a file, so nothing can be written under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: no permission to write in {ancestor}")
    return path


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temp files :func:`atomic_open` left beside ``path`` when a run was killed mid-write.
    Call it only while holding :func:`output_lock` on ``path``: no other run is writing them then."""
    path = Path(path)
    removed = []
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        if temp.is_file():
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
                removed.append(temp)
    return removed


def lock_path(path: str | Path) -> Path:
    return Path(path).with_name(Path(path).name + ".lock")


def _holder(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text())
        return f"pid {info['pid']} on {info['host']}, since {info['since']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (who is unknown)"


@contextlib.contextmanager
def output_lock(path: str | Path, command: str = "ex2") -> Iterator[None]:
    """Hold ``PATH.lock`` while writing ``path``, so two runs never append to one output.

    The holder's pid, host and start time go to ``PATH.lock.owner``; a second run fails at once
    with an OutputError saying who holds it. The lock is the operating system's (filelock), so a
    killed holder releases it.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    lock, owner = lock_path(path), path.with_name(path.name + ".lock.owner")
    path.parent.mkdir(parents=True, exist_ok=True)
    guard = FileLock(lock, timeout=0)
    try:
        guard.acquire()
    except Timeout:
        raise OutputError(f"{path} is being written by {_holder(owner)}; wait for that run to finish, "
                          "or give another --output") from None
    try:
        atomic_write_text(owner, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                             "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}) + "\n")
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            owner.unlink()
        guard.release()


def newest_intact(folders: list[Path], problem: Callable[[Path], str | None], remove: bool = True) -> Path | None:
    """The newest of ``folders`` (oldest first) that ``problem`` finds nothing wrong with. Each newer one
    is skipped with a printed reason and (``remove``) deleted: a checkpoint torn by a kill is never one
    to keep, and left on disk it would look like one. The one rule for resuming every stage."""
    for folder in reversed(folders):
        reason = problem(folder)
        if reason is None:
            return folder
        if remove:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"skipping {folder}: {reason} (written when a run was stopped?); "
              f"{'removed it, ' if remove else ''}falling back to the checkpoint before it")
    return None


def file_problem(path: Path) -> str | None:
    """Why a checkpoint file cannot be read back (empty, or a torn safetensors or torch zip file), or None.
    It reads headers and checksums, not tensors."""
    import zipfile

    if path.stat().st_size == 0:
        return "is empty"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt"):
                return None
        except (SafetensorError, OSError) as err:
            return f"is torn ({err})"
    if path.suffix in (".bin", ".pt", ".pth") and zipfile.is_zipfile(path):
        try:
            return None if zipfile.ZipFile(path).testzip() is None else "is torn (a bad checksum)"
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            return f"is torn ({err})"
    return None


def input_fingerprints(**files: str | Path | None) -> dict[str, str]:
    """``{NAME_sha256: digest}`` of each input file given: what a resumable run records beside its settings,
    so a rerun after an input changed starts over instead of mixing old and new records."""
    return {f"{name}_sha256": file_digest(path) for name, path in files.items() if path}


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_text(path: str | Path, expected: str = "UTF-8 text") -> str:
    """The text of a file the user gave; bytes that are not UTF-8 raise a ValueError naming the file,
    where the byte is, and what was ``expected``."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not UTF-8 (byte {data[err.start]:#04x}); expected {expected} "
                         "(re-save the file as UTF-8)") from None


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record and flush it to disk, so a kill loses nothing already appended."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(
    path: str | Path, required: Iterable[str] = (), tolerate_torn_tail: bool = False
) -> list[dict]:
    """Read a JSONL file; errors name the file, the line and what was expected.

    ``tolerate_torn_tail`` drops an unterminated last line, as left by a job killed mid-write.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSON Lines, one record per line)")
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = tolerate_torn_tail and not data.endswith(b"\n") and lines[-1].strip()
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if torn and number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                             f"{err.start + 1}); expected JSON Lines in UTF-8") from err
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if torn and number == len(lines):
                break
            raise ValueError(
                f"{path}:{number}: not valid JSON ({err.msg}); expected one JSON object per line"
            ) from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        missing = [key for key in required if key not in record]
        if missing:
            raise ValueError(f"{path}:{number}: record lacks field(s) {', '.join(missing)}")
        records.append(record)
    return records


def repair_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict]:
    """The records of a JSONL file that a killed job may have left mid-line, so appending can go on.

    A torn last line is dropped and a last line without its newline is completed; the file is then
    rewritten atomically. Any other bad line raises ValueError naming the file and line.
    """
    path = Path(path)
    records = read_jsonl(path, required, tolerate_torn_tail=True)
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(-1, os.SEEK_END)
        complete = not size or handle.read(1) == b"\n"
    if not complete:
        write_jsonl(path, records)
    return records


PARTIAL_SETTINGS = "ex2_partial_settings"


def partial_path(output: str | Path) -> Path:
    """``OUTPUT.partial``: where a resumable stage appends finished work before ``output`` is written."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def resume_partial(path: str | Path, settings: dict, what: str = "partial", required: Iterable[str] = (),
                   header: str = PARTIAL_SETTINGS) -> list[dict]:
    """The records an interrupted run appended to ``path`` after its settings line (``{header:
    settings}``), so appending can go on after them. A torn last line is dropped; a file holding
    records of a run with other ``settings`` is a ValueError saying what changed; with no records
    the file is (re)started with ``settings`` as its first line. ``what`` names the file in errors."""
    path = Path(path)
    records: list[dict] = []
    if path.is_file():
        rows = repair_jsonl(path)
        if not rows or header not in rows[0]:
            raise ValueError(f"{path}: expected a {what} file starting with its settings; delete it to start over")
        records, saved = rows[1:], rows[0][header]
        changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
        if records and changed:
            raise ValueError(f"{path}: left by an interrupted run with other settings ({'; '.join(changed)}); "
                             "rerun with those settings to resume, or delete the file to start over")
        for number, record in enumerate(records, start=2):
            missing = [key for key in required if key not in record]
            if missing:
                raise ValueError(f"{path}:{number}: record lacks field(s) {', '.join(missing)}")
    if not records:
        write_jsonl(path, [{header: settings}])
    return records


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """A CSV file, written atomically: ``header``, then one line per row (values as :mod:`csv` writes them)."""
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)
