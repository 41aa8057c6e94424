"""The one image decoding policy: every reader of a dataset image (sources, data/raw, data/lr) goes through it.

* **Modes**: 8-bit RGB is taken as it is; grey (``L``), bilevel (``1``), palette (``P``), ``CMYK`` and
  ``YCbCr`` are converted to RGB by Pillow; 16-bit grey (``I;16*``, e.g. a 16-bit grey PNG) is *scaled*
  to 8 bit (``round(v / 257)``: 65535 -> 255, 257 * k -> k), never clipped; 16-bit RGB(A) PNGs arrive from
  Pillow already reduced to 8 bit (high byte). 32-bit integer (``I``) and float (``F``) pixels have no
  defined 8-bit scale and are refused by name, as is any other mode.
* **Alpha** (``RGBA``, ``LA``, ``PA``, a palette or grey image with a transparent colour): an alpha that is
  opaque everywhere is dropped (the common case: nothing changes); otherwise the colour is multiplied by
  the alpha, i.e. composited over black, so what is hidden under a transparent pixel never shows.
* **Pixel limit**: ``max_pixels`` (``data.max_pixels`` for the source images) is checked from the file's
  header, before any pixel is decoded: a 12000x12000 PNG of 450 KB (a decompression bomb) is refused by
  name instead of taking 2.25 GB. Where no ``max_pixels`` is given, Pillow's bomb *warning* threshold
  (``MAX_PIXELS``) is the refusal limit; its warning is silenced (this check replaces it).
* **Symbolic links** out of a dataset folder are refused by name (``check_inside``): the converted
  dataset must depend on the folder it names, nothing else.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.errors import DataError

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_CONVERTED = ("L", "1", "P", "CMYK", "YCbCr", "RGBX")  # Pillow's conversion to RGB is exact for these
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_REFUSED = {"I": "32-bit integer pixels", "F": "32-bit float pixels"}
# Where no limit is given (data/raw, data/lr: written by the pipeline itself), Pillow's warning threshold
# becomes a refusal: above it Pillow would only warn and decode, however large.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageError(DataError):
    """An image the policy cannot turn into 8-bit RGB: ``problem`` is the message without the path."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def open_checked(path: Path, max_pixels: int | None = None) -> Image.Image:
    """The opened image (header read, no pixels decoded yet); a clear error when it is missing, empty,
    unreadable or above ``max_pixels``. The caller closes it."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(path, "cannot decode image (empty file, 0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image missing") from None
    except Image.DecompressionBombError as err:
        raise ImageError(path, f"image refused before decoding: {err}") from None
    except _DECODE_ERRORS as err:
        raise ImageError(path, f"cannot decode image (truncated or corrupt: {err})") from None
    width, height = im.size
    limit = max_pixels if max_pixels is not None else MAX_PIXELS
    if width * height > limit:
        im.close()
        what = f"data.max_pixels ({limit:,})" if max_pixels is not None else f"Pillow's decompression-bomb limit ({limit:,})"
        raise ImageError(path, f"image is {width}x{height} = {width * height:,} pixels, above {what}: refused "
                               "before decoding (a decompression bomb?)")
    return im


def to_rgb8(im: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of a loaded image, by the mode policy of this module."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im)
    if mode in _SIXTEEN_BIT:
        grey = np.rint(np.asarray(im, dtype=np.uint16).astype(np.float32) / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in _ALPHA or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[..., 3:]
        if (alpha == 255).all():
            return np.ascontiguousarray(rgba[..., :3])
        return np.rint(rgba[..., :3].astype(np.float32) * (alpha.astype(np.float32) / 255.0)).astype(np.uint8)
    if mode in _CONVERTED:
        return np.array(im.convert("RGB"))
    what = _REFUSED.get(mode, "a mode this pipeline does not read")
    raise ImageError(path, f"image mode {mode} ({what}) is not supported: save it as 8- or 16-bit grey, palette, "
                           "RGB or RGBA")


def decode_rgb(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image that decodes completely (a truncated stream is an error)."""
    path = Path(path)
    with open_checked(path, max_pixels) as im:
        try:
            im.load()
        except _DECODE_ERRORS as err:
            raise ImageError(path, f"cannot decode image (truncated or corrupt: {err})") from None
        return to_rgb8(im, path)


def header_size(path: Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from the header alone, with the checks of ``open_checked``."""
    with open_checked(path, max_pixels) as im:
        return im.size


def check_inside(path: Path, root: Path) -> None:
    """A DataError naming ``path`` when it (or a folder on its way) is a symbolic link leading outside ``root``."""
    path, root = Path(path), Path(root)
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"{path}: a symbolic link to {target}, outside the dataset folder {root}; copy the file "
                        "into the folder instead (the converted dataset must depend on that folder alone)")
