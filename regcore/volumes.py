"""Medical images: NIfTI, DICOM, MetaImage and NRRD files, read with SimpleITK as regcore images.

:func:`read_scan` is what :func:`regcore.io.load_image` calls for these formats. A 2-D image is read
as it is; a 3-D volume through one slice (:class:`Slicing`: an axis and an index, by default the
middle slice), and only that slice is read from the file. Intensities are windowed to [0, 1]
between the slice's 0.5 and 99.5 percentiles (:data:`WINDOW_PERCENTILES`): scanners store int16 CT
numbers, uint16 MR magnitudes or floats, and a few extreme voxels (metal, a hot spot) would
otherwise squash everything else into a few gray levels. Label maps are read raw (``labels=True``):
integers, no windowing.

Axes: ``"x"``, ``"y"``, ``"z"`` are the file's voxel axes in SimpleITK's order (``GetSize()``,
``GetSpacing()``), and numpy arrays are indexed ``[z, y, x]``. A ``z`` slice has rows along ``y``
and columns along ``x``; a ``y`` slice rows along ``z`` and columns along ``x``; an ``x`` slice
rows along ``z`` and columns along ``y``. Voxels are kept in the file's order: no reorientation to
an anatomical convention (the direction cosines are not applied), so an image and its label map,
read the same way, always line up.

Spacing: :func:`pixel_spacing` gives the slice's pixel size in millimetres as ``(rows, columns)``,
from the file header. Every failure is an :class:`~regcore.errors.ImageError` with one line.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageError, RegcoreError

__all__ = [
    "AXES",
    "FORMATS",
    "MAX_LABEL",
    "MAX_VOXELS",
    "WINDOW_PERCENTILES",
    "ScanInfo",
    "Slicing",
    "as_labels",
    "medical_format",
    "pixel_spacing",
    "read_scan",
    "scan_info",
    "window",
]

#: File suffixes of each format (lower case). Files are also recognised by their content (magic
#: numbers), whatever their name: DICOM files often have no suffix at all.
FORMATS = {
    "NIfTI": (".nii", ".nii.gz"),
    "DICOM": (".dcm", ".dicom"),
    "MetaImage": (".mha", ".mhd"),
    "NRRD": (".nrrd", ".nhdr"),
}
AXES = ("x", "y", "z")
#: Intensities below the first and above the second percentile of the slice are clipped.
WINDOW_PERCENTILES = (0.5, 99.5)
#: Largest accepted volume in voxels (512³), checked from the header: a slice of a larger volume
#: may need the whole file decoded, which this bounds.
MAX_VOXELS = 512**3
#: Largest label value: label maps are saved as 16-bit PNGs.
MAX_LABEL = 65535

_SUFFIX_FORMAT = {suffix: name for name, suffixes in FORMATS.items() for suffix in suffixes}
# A temporary copy of in-memory data gets a suffix SimpleITK recognises.
_TEMP_SUFFIX = {"NIfTI": ".nii", "DICOM": ".dcm", "MetaImage": ".mha", "NRRD": ".nrrd"}


@dataclass(frozen=True)
class Slicing:
    """Which 2-D slice of a 3-D volume to use (ignored for 2-D images).

    Attributes:
        axis: ``"x"``, ``"y"`` or ``"z"``: the voxel axis the slice is perpendicular to (see the
            module docstring). Default ``"z"``.
        index: the slice's index along ``axis``, from 0; None: the middle slice (``size // 2``).
    """

    axis: str = "z"
    index: int | None = None

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise RegcoreError(f"slice axis must be one of {', '.join(AXES)}, got {self.axis!r}")
        if self.index is not None and (isinstance(self.index, bool) or not isinstance(self.index, (int, np.integer)) or self.index < 0):
            raise RegcoreError(f"slice index must be a whole number >= 0, got {self.index!r}")

    def __str__(self) -> str:
        return f"{self.axis}={'middle' if self.index is None else self.index}"


@dataclass(frozen=True)
class ScanInfo:
    """A medical file's geometry, from its header (what the app needs for its slice selector).

    Attributes:
        format: ``"NIfTI"``, ``"DICOM"``, ``"MetaImage"`` or ``"NRRD"``.
        size: voxels along ``(x, y)`` or ``(x, y, z)`` (axes of size 1 beyond the second dropped).
        spacing: millimetres per voxel along the same axes.
    """

    format: str
    size: tuple[int, ...]
    spacing: tuple[float, ...]

    @property
    def is_volume(self) -> bool:
        return len(self.size) == 3


def _head(src: str | os.PathLike | bytes, n: int = 348) -> bytes:
    """The first ``n`` bytes of the (gunzipped, when gzip) file or data; empty when unreadable."""
    try:
        with io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb") as f:
            data = f.read(n)
            if data[:2] == b"\x1f\x8b":  # .nii.gz: the magic number is inside
                f.seek(0)
                data = gzip.GzipFile(fileobj=f).read(n)
        return data
    except (OSError, EOFError, gzip.BadGzipFile):
        return b""


def _sniff(head: bytes) -> str | None:
    if head[128:132] == b"DICM":
        return "DICOM"
    if head[344:348] in (b"n+1\0", b"ni1\0") or head[4:8] in (b"n+2\0", b"ni2\0"):
        return "NIfTI"
    if head.startswith(b"NRRD000"):
        return "NRRD"
    if head.lstrip().startswith((b"ObjectType", b"NDims")):
        return "MetaImage"
    return None


def medical_format(src: object) -> str | None:
    """``"NIfTI"``, ``"DICOM"``, ``"MetaImage"`` or ``"NRRD"`` when ``src`` (a path or file bytes) is
    one of these, by its content first and then by its suffix; None otherwise (arrays, PIL images,
    Pillow's formats)."""
    if isinstance(src, bytes):
        return _sniff(_head(src))
    if not isinstance(src, (str, os.PathLike)):
        return None
    path = Path(src)
    found = _sniff(_head(path)) if path.is_file() else None
    if found is None:
        name = path.name.lower()
        found = next((fmt for suffix, fmt in _SUFFIX_FORMAT.items() if name.endswith(suffix)), None)
    return found


def _sitk():
    try:
        import SimpleITK
    except ImportError:  # a core dependency; only a partial install lacks it
        raise ImageError("reading NIfTI, DICOM, MetaImage or NRRD files needs SimpleITK: pip install SimpleITK") from None
    return SimpleITK


@contextmanager
def _as_file(src: str | os.PathLike | bytes, fmt: str) -> Iterator[str]:
    """A path SimpleITK can open: ``src`` itself, or a temporary copy of in-memory data."""
    if not isinstance(src, bytes):
        yield os.fspath(src)
        return
    with tempfile.TemporaryDirectory(prefix="regcore-") as tmp:
        gz = ".gz" if fmt == "NIfTI" and src[:2] == b"\x1f\x8b" else ""
        path = Path(tmp) / f"upload{_TEMP_SUFFIX[fmt]}{gz}"
        path.write_bytes(src)
        yield str(path)


def _itk_message(err: BaseException) -> str:
    """The useful part of an ITK exception (its text is a source location and a multi-line message)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in reversed(lines):
        if "ERROR:" in line:
            text = line.split("ERROR:", 1)[1].strip()
            # "NiftiImageIO(0x55...): message" -> "message"
            if "): " in text and text.split("): ", 1)[0].count("(0x"):
                text = text.split("): ", 1)[1]
            # The label of the message already names the file (or it is a temporary copy).
            return re.sub(r'\s*(for )?"[^"]*"', "", text).rstrip(".: ")
    return lines[-1] if lines else type(err).__name__


class _Reader:
    """A SimpleITK reader with the header read, and the plan to extract one 2-D slice."""

    def __init__(self, path: str, label: str, fmt: str) -> None:
        sitk = _sitk()
        self.label, self.format = label, fmt
        self.reader = sitk.ImageFileReader()
        self.reader.SetFileName(path)
        try:
            self.reader.ReadImageInformation()
        except RuntimeError as err:
            raise ImageError(f"{label}: not a readable {fmt} file ({_itk_message(err)})") from None
        full = tuple(int(n) for n in self.reader.GetSize())
        # Axes of size 1 beyond the second (a 2-D image stored as x*y*1, a volume with one time
        # point) are dropped; a slice needs the first two, even of size 1.
        self.axes = [i for i, n in enumerate(full) if i < 2 or n > 1]
        self.full_size = full
        self.size = tuple(full[i] for i in self.axes)
        # NIfTI stores float32: 0.9 reads as 0.8999999761581421, which no one wrote.
        self.spacing = tuple(float(f"{self.reader.GetSpacing()[i]:.6g}") for i in self.axes)
        if len(self.size) > 3:
            dims = "x".join(map(str, self.size))
            raise ImageError(f"{label}: a {len(self.size)}-D image ({dims} voxels); regcore reads 2-D images and 3-D volumes")

    def info(self) -> ScanInfo:
        return ScanInfo(self.format, self.size, self.spacing)

    def plan(self, slicing: Slicing, max_pixels: int) -> tuple[list[int], list[int], tuple[float, float], str | None]:
        """Extraction index and size (0 collapses an axis), the slice's (row, column) spacing in
        mm, and a note naming the slice (None for a 2-D image)."""
        index, size = [0] * len(self.full_size), list(self.full_size)
        for i in range(len(size)):
            if i not in self.axes:
                size[i] = 0
        kept = [0, 1]
        note = None
        if len(self.size) == 3:
            total = int(np.prod(self.size, dtype=np.int64))
            if total > MAX_VOXELS:
                raise ImageError(f"{self.label}: {'x'.join(map(str, self.size))} voxels is larger than the limit of {MAX_VOXELS:,}")
            axis = AXES.index(slicing.axis)
            depth = self.size[axis]
            at = depth // 2 if slicing.index is None else int(slicing.index)
            if at >= depth:
                along = f"{depth} slices along {slicing.axis}: 0..{depth - 1}"
                raise ImageError(f"{self.label}: slice {slicing.axis}={at} is outside the volume ({along})")
            index[self.axes[axis]], size[self.axes[axis]] = at, 0
            kept = [a for a in range(3) if a != axis]
            dims = "x".join(map(str, self.size))
            note = f"{self.label}: a 3-D volume of {dims} voxels (x, y, z); slice {slicing.axis}={at} of 0..{depth - 1} was used"
        cols, rows = (self.size[a] for a in kept)
        if rows * cols > max_pixels:
            raise ImageError(f"{self.label}: {cols}x{rows} is larger than the limit of {max_pixels:,} pixels")
        spacing = (self.spacing[kept[1]], self.spacing[kept[0]])
        return index, size, spacing, note

    def read(self, slicing: Slicing, max_pixels: int, notes: list[str]) -> np.ndarray:
        """The slice as an array ``(rows, cols)`` or ``(rows, cols, components)``, in the file's dtype."""
        sitk = _sitk()
        index, size, _, note = self.plan(slicing, max_pixels)
        if "complex" in sitk.GetPixelIDValueAsString(self.reader.GetPixelID()):
            raise ImageError(f"{self.label}: complex-valued images are not supported")
        if list(size) != list(self.full_size):
            self.reader.SetExtractIndex(index)
            self.reader.SetExtractSize(size)
        try:
            image = self.reader.Execute()
        except RuntimeError as err:
            raise ImageError(f"{self.label}: the {self.format} file is corrupt or truncated ({_itk_message(err)})") from None
        if note:
            notes.append(note)
        return sitk.GetArrayFromImage(image)


def scan_info(src: str | os.PathLike | bytes, name: str = "image") -> ScanInfo:
    """The geometry of a medical file from its header (nothing else is read)."""
    fmt = medical_format(src)
    if fmt is None:
        raise ImageError(f"{name}: not a NIfTI, DICOM, MetaImage or NRRD file")
    with _as_file(src, fmt) as path:
        return _Reader(path, name, fmt).info()


def pixel_spacing(src: object, slicing: Slicing | None = None, name: str = "image") -> tuple[float, float] | None:
    """Millimetres per pixel ``(rows, columns)`` of the slice :func:`read_scan` would read; None
    when ``src`` is not a medical file (arrays, PIL images, PNG ...), whose spacing is unknown."""
    fmt = medical_format(src)
    if fmt is None or (not isinstance(src, bytes) and not Path(src).is_file()):
        return None
    with _as_file(src, fmt) as path:
        return _Reader(path, name, fmt).plan(slicing or Slicing(), np.iinfo(np.int64).max)[2]


def window(values: np.ndarray, label: str, notes: list[str]) -> np.ndarray:
    """Intensities -> ``float32`` in [0, 1], linear between the :data:`WINDOW_PERCENTILES` of
    ``values`` and clipped outside (the full range when those percentiles coincide)."""
    values = np.asarray(values, np.float64)
    if not np.isfinite(values).all():
        raise ImageError(f"{label}: the image contains NaN or infinite values")
    lo, hi = np.percentile(values, WINDOW_PERCENTILES)
    if hi <= lo:  # mostly one value (a mask, an empty slice): the whole range instead
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        notes.append(f"{label}: the slice is constant ({lo:.4g})")
        return np.zeros(values.shape, np.float32)
    low, high = WINDOW_PERCENTILES
    notes.append(f"{label}: intensities windowed to [0, 1] between {lo:.4g} and {hi:.4g} (its {low:g}th and {high:g}th percentiles)")
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def as_labels(values: np.ndarray, label: str) -> np.ndarray:
    """Raw values ``(H, W)`` -> ``int32`` labels in 0..MAX_LABEL (booleans and whole-number floats accepted)."""
    if values.ndim != 2:
        raise ImageError(f"{label}: a label map must have one integer label per pixel, got {values.shape[-1]} components")
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise ImageError(f"{label}: a label map must hold whole numbers; this one has fractional or NaN values")
    elif not (np.issubdtype(values.dtype, np.integer) or values.dtype == bool):
        raise ImageError(f"{label}: unsupported label dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() > MAX_LABEL):
        raise ImageError(f"{label}: labels must be from 0 to {MAX_LABEL}, got {values.min():.0f} to {values.max():.0f}")
    return values.astype(np.int32)


def read_scan(
    src: str | os.PathLike | bytes,
    label: str,
    slicing: Slicing | None = None,
    max_pixels: int = 4096 * 4096,
    notes: list[str] | None = None,
    labels: bool = False,
) -> np.ndarray:
    """Read a NIfTI, DICOM, MetaImage or NRRD file (or its bytes) as a 2-D image.

    Args:
        src: a path or the file's bytes (checked to exist and be non-empty by the caller).
        label: how messages name the input (``"source (scan.nii.gz)"``).
        slicing: the slice of a 3-D volume (default: the middle ``z`` slice).
        max_pixels: refuse slices with more pixels than this (checked from the header).
        notes: one line is appended per surprising step (the slice used, the window).
        labels: read a label map: ``int32`` labels in 0..MAX_LABEL, no windowing.

    Returns:
        ``(H, W)``: ``float32`` in [0, 1] (RGB becomes luminance), or ``int32`` labels.
    """
    notes = [] if notes is None else notes
    fmt = medical_format(src) or "medical image"
    with _as_file(src, fmt) as path:
        values = _Reader(path, label, fmt).read(slicing or Slicing(), max_pixels, notes)
    if labels:
        return as_labels(values, label)
    if values.ndim == 3:
        if values.shape[-1] not in (3, 4):
            raise ImageError(f"{label}: {values.shape[-1]} components per pixel; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
        values = values[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        notes.append(f"{label}: colour converted to gray (luminance)")
    return window(values, label, notes)
