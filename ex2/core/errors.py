"""The failures ``ex2`` reports as one line instead of a traceback, in one place.

Bad input raises ``ValueError`` or ``FileNotFoundError`` (``ConfigError``, ``DatasetError``, ...)
whose message names the file and what was expected. Failures that come from outside ex2's own
checks get a type of their own here, raised where the cause is known:

``ServiceError``        a server ex2 talks to (an OpenAI-compatible judge) cannot be reached, gives
                        no answer in time, or refuses the request; the message names its URL
``OutputError``         an output path that cannot be written, or that another run is writing
``ModelNotFoundError``  a model name that is neither a local path nor in the Hugging Face cache

:func:`describe` turns any of these (and an ``OSError`` naming a file, such as a full disk) into the
line ``ex2 <stage>`` prints before exiting 1; anything else is a bug and keeps its traceback. Ctrl-C
prints ``interrupted; rerun to resume`` and exits 130 (:data:`INTERRUPTED_EXIT`).
"""

from __future__ import annotations


class ServiceError(RuntimeError):
    """A server that cannot be reached, answers too slowly, or refuses; the message names its URL."""


class OutputError(ValueError):
    """An output path that cannot be written (or is held by another run); the message names it."""


class ModelNotFoundError(FileNotFoundError):
    """A model that is neither a local file or folder nor in the Hugging Face cache."""


REPORTED = (ValueError, FileNotFoundError, ServiceError)
INTERRUPTED_EXIT = 130  # the shell's code for a job ended by SIGINT


def describe(err: BaseException) -> str | None:
    """The one line that reports ``err``, or None when it is a bug that deserves its traceback."""
    if isinstance(err, REPORTED):
        return str(err)
    if isinstance(err, OSError) and err.filename is not None:
        what = err.strerror or type(err).__name__
        return f"{err.filename}: {what}"
    return None
