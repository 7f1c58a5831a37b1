"""Reading and writing images: anything a user has -> a ``float32`` ``(H, W)`` array in [0, 1].

Accepted: numpy arrays (2-D gray, or 3-D with 1, 3 or 4 channels last; bool, integer or float),
PIL images, and paths / ``bytes`` of any file Pillow reads (PNG, JPEG, TIFF, BMP, GIF, WebP ...).
Colour becomes luminance (ITU-R 601, Pillow's ``L``); alpha is composited onto white (what an
image viewer shows); 16-bit and 32-bit integers are scaled by their full range; float images are
kept if already in [0, 1] and min-max scaled otherwise. EXIF orientation is applied. Multi-frame
files (animated GIF, multi-page TIFF) give their first frame. Every failure is an
:class:`~regcore.errors.ImageError` with a one-line message.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

__all__ = ["MAX_PIXELS", "ImageLike", "load_image", "save_image", "to_uint8"]

ImageLike = Union[np.ndarray, Image.Image, str, os.PathLike, bytes]

#: Largest accepted image, in pixels (checked from the header, before decoding).
MAX_PIXELS = 4096 * 4096


def load_image(image: ImageLike, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load ``image`` as a ``float32`` ``(H, W)`` array in [0, 1]; ``name`` is used in error messages."""
    if isinstance(image, (str, os.PathLike, bytes)):
        return _from_array(_read_file(image, name, max_pixels), name, max_pixels)
    if isinstance(image, Image.Image):
        return _from_array(_pil_to_array(image, name), name, max_pixels)
    if isinstance(image, np.ndarray):
        return _from_array(image, name, max_pixels)
    raise ImageError(f"{name}: expected a numpy array, a PIL image or a file path, got {type(image).__name__}")


def _read_file(src: str | os.PathLike | bytes, name: str, max_pixels: int) -> np.ndarray:
    label = f"{name} ({os.fspath(src)})" if not isinstance(src, bytes) else name
    if isinstance(src, bytes):
        if not src:
            raise ImageError(f"{label}: the data is empty")
        fp = io.BytesIO(src)
    else:
        path = Path(src)
        if not path.is_file():
            raise ImageError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise ImageError(f"{label}: the file is empty (0 bytes)")
        fp = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                # The header gives the size; refuse before decoding (decompression bombs).
                if img.width * img.height > max_pixels:
                    raise ImageError(f"{label}: {img.width}x{img.height} is larger than the limit of {max_pixels:,} pixels")
                img.seek(0)
                return _pil_to_array(ImageOps.exif_transpose(img), label)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{label}: not a readable image ({err.__class__.__name__})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError(
            f"{label}: the file is corrupt or truncated ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None


def _pil_to_array(img: Image.Image, name: str) -> np.ndarray:
    """PIL image in any mode -> numpy array whose dtype tells the value range."""
    try:
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(img, dtype=np.uint16)
        if img.mode == "I":
            return np.asarray(img, dtype=np.int32)
        if img.mode == "F":
            return np.asarray(img, dtype=np.float32)
        if img.mode == "1":
            return np.asarray(img.convert("L"))
        if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(background, rgba).convert("L"))
        return np.asarray(img.convert("L"))
    except (OSError, ValueError) as err:
        raise ImageError(f"{name}: the image data could not be decoded ({err})") from None


def _from_array(arr: np.ndarray, name: str, max_pixels: int) -> np.ndarray:
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ImageError(f"{name}: unsupported array dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ImageError(f"{name}: complex arrays are not images")
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.size <= 4 * max_pixels:
        rgba = _unit_range(arr, name)
        if arr.shape[-1] == 1:
            return _from_array(rgba[..., 0], name, max_pixels)
        gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        if arr.shape[-1] == 4:  # composite onto white, as a viewer shows it
            gray = gray * rgba[..., 3] + (1.0 - rgba[..., 3])
        return _from_array(np.clip(gray, 0.0, 1.0), name, max_pixels)
    if arr.ndim != 2:
        raise ImageError(f"{name}: expected a 2-D image (H, W) or (H, W, 1|3|4), got shape {arr.shape}")
    if arr.size == 0:
        raise ImageError(f"{name}: the image is empty (shape {arr.shape})")
    if arr.size > max_pixels:
        raise ImageError(f"{name}: {arr.shape[1]}x{arr.shape[0]} is larger than the limit of {max_pixels:,} pixels")
    return _unit_range(arr, name)


def _unit_range(arr: np.ndarray, name: str) -> np.ndarray:
    """Any numeric array -> float32 in [0, 1], by its dtype's range (ints) or its values (floats)."""
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        if info.min == 0 or arr.min() >= 0:
            top = 255 if arr.dtype == np.uint8 else (65535 if arr.max() <= 65535 else info.max)
            return (arr.astype(np.float64) / top).astype(np.float32)
        arr = arr.astype(np.float64)
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ImageError(f"{name}: the image contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return arr.astype(np.float32)
    if hi == lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float image in [0, 1] -> ``uint8`` (values outside are clipped)."""
    return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an ``(H, W)`` image in [0, 1] as an 8-bit gray file (format from the extension)."""
    path = Path(path)
    Image.fromarray(to_uint8(image), mode="L").save(path)
    return path
