"""Reading image files and turning PIL images of any mode into RGB pixels in [0, 1].

`PIL.Image.convert("RGB")` is only right for 8-bit modes: a 16-bit PNG (`I;16`) or a 32-bit `I`/`F` image is
clipped to 255, so every non-zero pixel saturates, and the alpha of `RGBa`/`La` is dropped without compositing.
`pil_to_rgb_array` scales each mode by its own range instead:

| mode | values | scaled by |
| --- | --- | --- |
| `1`, `L`, `P`, `RGB`, `RGBX`, `CMYK`, `YCbCr`, `HSV`, `LAB` | 8-bit | converted to RGB by PIL, then 1/255 |
| `LA`, `La`, `PA`, `RGBA`, `RGBa`, or a `transparency` key | 8-bit + alpha | composited on `background`, then 1/255 |
| `I;16`, `I;16L`, `I;16B`, `I;16N` | 16-bit unsigned | 1/65535 |
| `I` (32-bit signed) | must lie in [0, 65535] | 1/65535 (how PIL reads 16-bit PNG/TIFF data into `I`) |
| `F` (32-bit float) | must lie in [0, 1] | as is |

Grey modes are repeated over the three channels. An `I` image outside [0, 65535], or an `F` image outside [0, 1]
or with NaN/inf, raises a ValueError instead of being clipped: its range cannot be guessed.

This module depends on numpy and PIL alone, so it is copied next to `image_processing_mage.py` in saved folders.
"""

from __future__ import annotations

import os
import re
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps

# PIL's own default decompression-bomb threshold (`PIL.Image.MAX_IMAGE_PIXELS`): about 0.25 GiB of 24-bit RGB,
# e.g. 9459x9459. Larger files raise unless `open_image(..., max_pixels=None)` or a larger limit is passed.
DEFAULT_MAX_PIXELS = 89_478_485

# The usual choice for compositing transparent pixels (also transformers' `convert_to_rgb`).
DEFAULT_BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_SIXTEEN_BIT_MAX = 65535
_PREMULTIPLIED_TO_STRAIGHT = {"La": "LA", "RGBa": "RGBA"}


def _check_background(background) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in background)
        exact = all(int(v) == v for v in background)
    except (TypeError, ValueError):
        values, exact = (), False
    if isinstance(background, str) or len(values) != 3 or not exact or any(v < 0 or v > 255 for v in values):
        raise ValueError(f"`background` must be three integers in [0, 255] (R, G, B), got {background!r}")
    return values


def _has_transparency(image: Image.Image) -> bool:
    if image.info.get("transparency") is not None:
        return True
    # LAB's "A" band is a colour axis, not alpha.
    return image.mode != "LAB" and any(band in ("A", "a") for band in image.getbands())


def _high_bit_depth_grey(image: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1] from an `I;16*`, `I` or `F` image."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all():
            raise ValueError("a mode 'F' image must hold finite values in [0, 1], got NaN or inf pixels")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            raise ValueError(f"a mode 'F' image must hold values in [0, 1], got values in [{low:g}, {high:g}]")
        return values.astype(np.float32, copy=False)
    if image.mode == "I" and values.size:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > _SIXTEEN_BIT_MAX:
            raise ValueError(
                f"a mode 'I' image is read as 16-bit data and must hold values in [0, {_SIXTEEN_BIT_MAX}], "
                f"got values in [{low}, {high}]"
            )
    return values.astype(np.float32) / _SIXTEEN_BIT_MAX


def _transparency_key_alpha(image: Image.Image) -> np.ndarray | None:
    """Alpha (H, W) in {0, 1} for a high-bit-depth grey image with a `transparency` colour key, else None."""
    key = image.info.get("transparency")
    if key is None or not isinstance(key, (int, float)):
        return None
    return (np.asarray(image) != key).astype(np.float32)


def _composite(rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Straight-alpha `rgb` (H, W, 3) and `alpha` (H, W), both in [0, 1], over an opaque `background`."""
    fill = np.asarray(background, dtype=np.float32) / 255
    alpha = alpha[..., None]
    return rgb * alpha + fill * (1 - alpha)


def _rgb_uint8_or_float(image: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 3): uint8 for an 8-bit image without transparency (PIL's own conversion, exact), otherwise
    float32 in [0, 1]."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        grey = _high_bit_depth_grey(image)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        alpha = _transparency_key_alpha(image)
        return rgb if alpha is None else _composite(rgb, alpha, background)
    if not _has_transparency(image):
        return np.asarray(image.convert("RGB"))
    straight = image.convert(_PREMULTIPLIED_TO_STRAIGHT.get(image.mode, image.mode))
    rgba = np.asarray(straight.convert("RGBA"), dtype=np.float32) / 255
    return _composite(rgba[..., :3], rgba[..., 3], background)


def pil_to_rgb_array(image: Image.Image, background=DEFAULT_BACKGROUND) -> np.ndarray:
    """A PIL image of any mode -> float32 RGB pixels (H, W, 3) in [0, 1] (see the module docstring for how each
    mode is scaled).

    Args:
        image: a `PIL.Image.Image`.
        background: the (R, G, B) colour, 0-255, that transparent pixels are composited on (white by default).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"`image` must be a PIL.Image.Image, got {type(image).__name__}")
    pixels = _rgb_uint8_or_float(image, _check_background(background))
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255
    return np.clip(pixels, 0.0, 1.0).astype(np.float32, copy=False)


def pil_to_rgb_uint8(image: Image.Image, background=DEFAULT_BACKGROUND) -> np.ndarray:
    """Like `pil_to_rgb_array`, but uint8 (H, W, 3) in [0, 255] (rounded); 8-bit RGB images are returned unchanged."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"`image` must be a PIL.Image.Image, got {type(image).__name__}")
    pixels = _rgb_uint8_or_float(image, _check_background(background))
    if pixels.dtype == np.uint8:
        return pixels
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def _check_max_pixels(max_pixels) -> None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0):
        raise ValueError(f"`max_pixels` must be a positive integer or None (no limit), got {max_pixels!r}")


def _too_large(name: str, pixels: int | None, max_pixels: int | None) -> ValueError:
    """The one-line error for an image over `max_pixels`, or over PIL's global limit where that is stricter."""
    if max_pixels is not None and (pixels is None or pixels > max_pixels):
        limit = f"the limit of {max_pixels:,} pixels (`max_pixels`)"
        advice = "pass a larger `max_pixels` (or None) if the file is trusted"
    else:
        limit = f"PIL's limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels (twice `PIL.Image.MAX_IMAGE_PIXELS`)"
        advice = "raise `PIL.Image.MAX_IMAGE_PIXELS` too if the file is trusted"
    count = f"{pixels:,} pixels" if pixels is not None else "the image"
    return ValueError(f"{name}: {count} exceeds {limit}, a guard against decompression bombs; {advice}")


def _pixels_in_pil_error(error: Exception) -> int | None:
    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found.group(1)) if found else None


def open_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully load an image file (its first frame), apply its EXIF orientation, then close the file (no
    handle is kept open).

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (width * height) before decoding them, a guard
            against decompression bombs (default `DEFAULT_MAX_PIXELS`, PIL's own default); `None` lifts it.
            PIL's global guard, which raises above twice `PIL.Image.MAX_IMAGE_PIXELS`, still applies on top
            unless that is raised or set to None as well.

    Returns:
        The loaded `PIL.Image.Image`, in the file's own mode (see `pil_to_rgb_array` to get [0, 1] RGB pixels).

    Raises:
        ValueError: naming the file, when it is missing, unreadable, not an image, truncated or corrupt, or has
            more than `max_pixels` pixels.
    """
    _check_max_pixels(max_pixels)
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle, warnings.catch_warnings():
            # Our own limit decides below; PIL's warning would fire first for large images that it allows.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise _too_large(name, width * height, max_pixels)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
    except Image.DecompressionBombError as error:
        raise _too_large(name, _pixels_in_pil_error(error), max_pixels) from error
    except Image.UnidentifiedImageError as error:
        raise ValueError(f"{name}: not an image file that PIL can read") from error
    except (OSError, SyntaxError, EOFError, struct.error) as error:
        # OSError covers missing files and truncated data; some plugins raise the others on corrupt headers.
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
        raise ValueError(f"{name}: cannot read the image ({reason})") from error
    return image


__all__ = ["DEFAULT_BACKGROUND", "DEFAULT_MAX_PIXELS", "open_image", "pil_to_rgb_array", "pil_to_rgb_uint8"]
