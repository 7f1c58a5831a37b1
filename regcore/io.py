"""Reading and writing images: anything a user has -> a ``float32`` ``(H, W)`` array in [0, 1].

Accepted: numpy arrays (2-D gray, or 3-D with 1, 3 or 4 channels last; bool, integer or float),
PIL images, and paths / ``bytes`` of any file Pillow reads (PNG, JPEG, TIFF, BMP, GIF, WebP ...),
whatever the file's extension says, and NIfTI, DICOM, MetaImage and NRRD files (:mod:`regcore.volumes`:
a 3-D volume gives one slice, intensities are windowed to [0, 1]). Colour becomes luminance (ITU-R 601, Pillow's ``L``); alpha
is composited onto white (what an image viewer shows). Values: integer images whose values lie in
0..255 (``uint8``, 8-bit files, or 8-bit data in a wider type) are divided by 255; any other
integer image (16-bit files, 12-bit data in a 16-bit container, signed data) is min-max scaled to
[0, 1] by its actual range, so 12-bit data registers as 8-bit data does; floats are kept if
already in [0, 1] and min-max scaled otherwise; NaN or infinite values are refused. EXIF orientation is applied. Multi-frame files
(animated GIF, multi-page TIFF) give their first frame. Things done that the caller may not
expect (first frame, EXIF rotation, transparency, rescaling) are reported through ``notes``.

:func:`load_labels` reads label maps (segmentations) the same ways, keeping their integer values.

Limits: at most :data:`MAX_PIXELS` pixels, checked from the file header before anything is
decoded (Pillow's own decompression-bomb guard stays on as a second line). Every failure is an
:class:`~regcore.errors.ImageError` with a one-line message.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .volumes import Slicing, as_labels, medical_format, read_scan

__all__ = ["MAX_PIXELS", "ImageLike", "input_label", "load_image", "load_labels", "save_image", "to_uint8"]

ImageLike = Union[np.ndarray, Image.Image, str, os.PathLike, bytes]

#: Largest accepted image, in pixels (4096 × 4096), checked from the file header before decoding.
#: Registration itself runs at most at ``register(max_side=512)``; the limit bounds the memory
#: of loading, resampling and scoring at full size (``benchmarks/memory.py`` measures it).
MAX_PIXELS = 4096 * 4096


def load_image(
    image: ImageLike, name: str = "image", max_pixels: int = MAX_PIXELS, notes: list[str] | None = None, slicing: Slicing | None = None
) -> np.ndarray:
    """Load ``image`` as a ``float32`` ``(H, W)`` array in [0, 1].

    Args:
        image: a numpy array, PIL image, file path, or the bytes of an image file.
        name: what to call the image in messages (``"source"``, ``"target"``).
        max_pixels: refuse images with more pixels than this (default :data:`MAX_PIXELS`).
        notes: if given, one line per surprising conversion is appended (first frame of an
            animation, EXIF rotation, transparency, rescaled values).
        slicing: the slice to read from a 3-D medical volume (default: the middle ``z`` slice).

    Raises:
        ImageError: not a usable image; the one-line message names ``name`` (and the file).
    """
    notes = [] if notes is None else notes
    if isinstance(image, bytearray):
        image = bytes(image)
    if isinstance(image, (str, os.PathLike, bytes)):
        label = input_label(image, name)
        return _from_array(_read_file(image, label, max_pixels, notes, slicing), label, max_pixels, notes)
    if isinstance(image, Image.Image):
        _check_pixels(image.width, image.height, name, max_pixels)  # before a lazy PIL image decodes
        return _from_array(_pil_to_array(image, name, notes), name, max_pixels, notes)
    if isinstance(image, np.ndarray):
        return _from_array(image, name, max_pixels, notes)
    raise ImageError(f"{name}: expected a numpy array, a PIL image, a file path or file bytes, got {type(image).__name__}")


def input_label(image: object, name: str) -> str:
    """How messages name an input: ``"source (path/to/file.png)"`` for a path, else ``name``."""
    return f"{name} ({os.fspath(image)})" if isinstance(image, (str, os.PathLike)) else name


def _check_pixels(width: int, height: int, label: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(f"{label}: {width}x{height} is larger than the limit of {max_pixels:,} pixels")


def _read_file(
    src: str | os.PathLike | bytes, label: str, max_pixels: int, notes: list[str], slicing: Slicing | None = None, labels: bool = False
) -> np.ndarray:
    if isinstance(src, bytes):
        if not src:
            raise ImageError(f"{label}: the data is empty")
        fp = io.BytesIO(src)
    else:
        path = Path(src)
        if not path.exists():
            raise ImageError(f"{label}: no such file")
        if not path.is_file():
            raise ImageError(f"{label}: not a regular file")
        if path.stat().st_size == 0:
            raise ImageError(f"{label}: the file is empty (0 bytes)")
        fp = path
    if medical_format(src) is not None:
        return read_scan(src, label, slicing, max_pixels, notes, labels=labels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                # Image.open reads only the header: refuse here, before decoding (decompression bombs).
                _check_pixels(img.width, img.height, label, max_pixels)
                # is_animated looks at most one frame ahead (n_frames would scan the whole file).
                if getattr(img, "is_animated", False):
                    notes.append(f"{label}: the file has several frames (animation or multi-page); the first frame was used")
                img.seek(0)
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
                upright = ImageOps.exif_transpose(img)
                if orientation in _EXIF_TURNS:
                    notes.append(f"{label}: {_EXIF_TURNS[orientation]} as its EXIF orientation says")
                return (_pil_labels if labels else _pil_to_array)(upright, label, notes)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's guard fires from the header too, for sizes far beyond max_pixels.
        raise ImageError(f"{label}: the image is larger than the limit of {max_pixels:,} pixels (a possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file Pillow can read (PNG, JPEG, TIFF, BMP, GIF, WebP ...)") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as err:
        raise ImageError(f"{label}: the file is corrupt or truncated ({_first_line(err)})") from None


#: EXIF tag 0x0112 (Orientation) and what exif_transpose does for each non-trivial value.
_EXIF_ORIENTATION = 0x0112
_EXIF_TURNS = {
    2: "mirrored",
    3: "rotated 180°",
    4: "flipped",
    5: "transposed",
    6: "rotated 90° clockwise",
    7: "transversed",
    8: "rotated 90° counter-clockwise",
}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _pil_to_array(img: Image.Image, name: str, notes: list[str]) -> np.ndarray:
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
            if rgba.getextrema()[3][0] < 255:
                notes.append(f"{name}: transparent pixels were composited onto white")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(background, rgba).convert("L"))
        return np.asarray(img.convert("L"))
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as err:
        raise ImageError(f"{name}: the image data could not be decoded ({_first_line(err)})") from None


def load_labels(
    labels: ImageLike, name: str = "labels", max_pixels: int = MAX_PIXELS, notes: list[str] | None = None, slicing: Slicing | None = None
) -> np.ndarray:
    """Load a label map (segmentation) as ``int32`` ``(H, W)`` labels from 0 to ``MAX_LABEL`` (0: background).

    Accepted: integer or boolean arrays (floats holding whole numbers too), PIL images and files
    with one channel: 8/16/32-bit gray PNG or TIFF, palette PNGs (their indices are the labels),
    and NIfTI, DICOM, MetaImage, NRRD (a 3-D volume gives the slice ``slicing`` chooses, as for its
    image). Colour is refused unless its three channels are equal. Values are kept, never rescaled.

    Raises:
        ImageError: not a usable label map; the one-line message names ``name`` (and the file).
    """
    notes = [] if notes is None else notes
    if isinstance(labels, bytearray):
        labels = bytes(labels)
    if isinstance(labels, (str, os.PathLike, bytes)):
        label = input_label(labels, name)
        return as_labels(_read_file(labels, label, max_pixels, notes, slicing, labels=True), label)
    if isinstance(labels, Image.Image):
        _check_pixels(labels.width, labels.height, name, max_pixels)
        return as_labels(_pil_labels(labels, name, notes), name)
    if isinstance(labels, np.ndarray):
        if labels.ndim != 2 or labels.size == 0:
            raise ImageError(f"{name}: a label map must be a non-empty 2-D array (H, W), got shape {labels.shape}")
        _check_pixels(labels.shape[1], labels.shape[0], name, max_pixels)
        return as_labels(labels, name)
    raise ImageError(f"{name}: expected a numpy array, a PIL image, a file path or file bytes, got {type(labels).__name__}")


def _pil_labels(img: Image.Image, name: str, notes: list[str]) -> np.ndarray:
    """PIL image -> its raw label values (palette indices for ``P``; one channel of equal RGB channels)."""
    try:
        if img.mode not in ("RGB", "RGBA", "LA", "CMYK", "YCbCr", "HSV", "LAB"):
            return np.asarray(img, dtype=np.uint16) if img.mode.startswith("I;16") else np.asarray(img)
        rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as err:
        raise ImageError(f"{name}: the image data could not be decoded ({_first_line(err)})") from None
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise ImageError(f"{name}: a label map must have one channel of integer labels; this one is in colour ({img.mode})")
    return rgb[..., 0]


def _from_array(arr: np.ndarray, name: str, max_pixels: int, notes: list[str]) -> np.ndarray:
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ImageError(f"{name}: unsupported array dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ImageError(f"{name}: complex arrays are not images")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise ImageError(f"{name}: expected a 2-D image (H, W) or (H, W, 1|3|4), got shape {arr.shape}")
    if arr.size == 0:
        raise ImageError(f"{name}: the image is empty (shape {arr.shape})")
    # Before any conversion, so that an oversized array costs no extra memory.
    _check_pixels(arr.shape[1], arr.shape[0], name, max_pixels)
    if arr.ndim == 2:
        return _unit_range(arr, name, notes)
    rgba = _unit_range(arr, name, notes)
    if arr.shape[-1] == 1:
        return rgba[..., 0]
    gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    if arr.shape[-1] == 4:  # composite onto white, as a viewer shows it
        if rgba[..., 3].min() < 1.0:
            notes.append(f"{name}: transparent pixels were composited onto white")
        gray = gray * rgba[..., 3] + (1.0 - rgba[..., 3])
    return np.clip(gray, 0.0, 1.0).astype(np.float32)


def _unit_range(arr: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """Any numeric array -> float32 in [0, 1]: 8-bit data ÷255, anything else by its actual range (a note says so)."""
    if arr.dtype == bool:
        return arr.astype(np.float32)
    # Integer images rarely use their type's full range: an int64 array of 0..255 is 8-bit data,
    # and 12-bit data (cameras, CT, MR) comes in 16-bit containers. Dividing by 65535 would put it
    # in [0, 0.06], where every threshold that assumes [0, 1] (constant-image check, noise
    # estimate, NCC and polish epsilons) misfires. So values within 0..255 are 8-bit data (÷255)
    # and any other integer image is scaled by its actual range (below).
    if np.issubdtype(arr.dtype, np.integer) and int(arr.min()) >= 0 and int(arr.max()) <= 255:
        return np.divide(arr, np.float32(255), dtype=np.float32)  # one pass, no float64 copy
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ImageError(f"{name}: the image contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return arr.astype(np.float32)
    notes.append(f"{name}: values from {lo:.4g} to {hi:.4g} were rescaled to [0, 1]")
    if hi == lo:
        return np.zeros(arr.shape, np.float32)
    # Halves first: hi - lo overflows float64 for values near ±1.8e308.
    return ((arr * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5)).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float image in [0, 1] -> ``uint8`` (values outside are clipped)."""
    return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an ``(H, W)`` image in [0, 1] as an 8-bit gray file (format from the extension)."""
    path = Path(path)
    Image.fromarray(to_uint8(image), mode="L").save(path)
    return path
