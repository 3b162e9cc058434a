"""Open an image file as RGB, whatever its mode; skip (or refuse) files that cannot be read."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import PIL.Image

WHITE = (255, 255, 255)
_OPEN_LOCK = threading.Lock()


class ImageError(ValueError):
    """An image that cannot be used: unreadable (when strict) or over the decompression-bomb limit."""


def _to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """16-bit and 32-bit greyscale (``I;16``, ``I``, ``F``) scaled to 8-bit ``L``."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values / 257.0  # 0..65535 -> 0..255
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0  # floats in 0..1
    return PIL.Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode as RGB; transparency is composited on white."""
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA"):
        background = PIL.Image.new("RGB", image.size, WHITE)
        background.paste(image.convert("RGBA"), mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _refuse_bomb(path: Path, err: Exception) -> ImageError:
    return ImageError(
        f"{path}: refusing an image over PIL's decompression-bomb limit of "
        f"{PIL.Image.MAX_IMAGE_PIXELS} pixels ({err}); raise PIL.Image.MAX_IMAGE_PIXELS if it is trusted"
    )


def _open(path: Path) -> PIL.Image.Image:
    """``PIL.Image.open`` with its decompression-bomb warning raised as an error. The warning filter
    is process-wide, so threads take turns here; decoding (``load``) happens outside the lock."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        return PIL.Image.open(path)


def load_image(path: Path, strict: bool = False) -> PIL.Image.Image | None:
    """The image at ``path`` as RGB; a corrupt or truncated file gives None and a warning (an
    :class:`ImageError` when ``strict``). Decompression bombs are always an ImageError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with _open(path) as image:
            image.load()
            return to_rgb(image)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
        raise _refuse_bomb(path, err) from err
    except (OSError, SyntaxError, ValueError) as err:  # unidentified, truncated or corrupt data
        if strict:
            raise ImageError(f"{path}: cannot read the image ({err})") from err
        warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)
        return None


PARENT_GONE = (ConnectionError, EOFError)  # what a worker's pipes raise once the main process is gone


def quiet_worker(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of ex2's image loaders: a worker leaves Ctrl-C to the main process (which stops
    the workers and prints its one line), and a broken connection to a dead or interrupted main process
    ends the worker without a traceback. Other errors in a worker still print."""
    import multiprocessing.queues
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    default_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not issubclass(args.exc_type, PARENT_GONE):
            default_hook(args)

    threading.excepthook = hook  # the resource-sharing thread that hands tensors over
    feeder_error = multiprocessing.queues.Queue._on_queue_feeder_error

    def on_feeder_error(err: Exception, obj: object) -> None:
        if not isinstance(err, PARENT_GONE):
            feeder_error(err, obj)

    multiprocessing.queues.Queue._on_queue_feeder_error = staticmethod(on_feeder_error)
