"""Generated training and validation data: random images and random smooth deformations.

Everything here is made on the fly from a seeded ``torch.Generator``; nothing is downloaded.

- :func:`label_images`: SynthMorph-style images: a random smooth label map (:func:`label_maps`),
  each label a random intensity, then blur, a smooth multiplicative bias field, random gamma and
  noise (:func:`paint_labels`), so a model trained on them with NCC does not depend on one contrast.
- :func:`texture_images`: multi-octave smooth noise ("shapes synthesised from noise").
- :func:`random_fields`: smooth random displacements, made as a stationary velocity field
  (a sum of smooth noise at several scales) integrated by scaling and squaring, so they are
  diffeomorphic; the largest displacement is drawn up to ``max_disp`` pixels.
- :func:`make_batch`: ``(source, target, true_flow)`` with ``target = warp(source, flow)`` plus
  independent intensity changes on each image.
- :func:`photo_pairs`: the same deformations applied to real photographs bundled with
  scikit-image, for validation and benchmarks only (never for training).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import RegcoreError
from .filters import gaussian_blur
from .warp import VecInt, warp

__all__ = [
    "BUNDLED_PHOTOS",
    "MOTIONS",
    "PHOTO_NAMES",
    "TUNING_PHOTO_NAMES",
    "Batch",
    "Layers",
    "affine_fields",
    "blob_masks",
    "label_images",
    "label_maps",
    "layered_motion",
    "layered_pairs",
    "load_photo",
    "make_batch",
    "motion_fields",
    "paint_labels",
    "photo_gray",
    "photo_pairs",
    "random_fields",
    "smooth_noise",
    "stereo_motion",
    "texture_images",
]


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def smooth_noise(n: int, channels: int, size: tuple[int, int], cells: int, g: torch.Generator) -> Tensor:
    """Gaussian noise on a ``cells``-wide grid, upsampled bicubically: ``(n, channels, H, W)``, std ~1.

    The grid spacing (``size / cells`` pixels) sets how smooth the result is.
    """
    h, w = size
    ch, cw = max(2, round(cells * h / max(size))), max(2, round(cells * w / max(size)))
    coarse = torch.randn(n, channels, ch + 2, cw + 2, generator=g)
    # One cell of margin on each side keeps bicubic ringing at the border out of the image.
    up = F.interpolate(coarse, size=(h + 2 * math.ceil(h / ch), w + 2 * math.ceil(w / cw)), mode="bicubic", align_corners=False)
    oy, ox = (up.shape[-2] - h) // 2, (up.shape[-1] - w) // 2
    return up[..., oy : oy + h, ox : ox + w]


def _normalise(x: Tensor) -> Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def intensity_augment(x: Tensor, g: torch.Generator, strength: float = 1.0) -> Tensor:
    """Random smooth bias field, gamma and noise on ``(n, 1, H, W)`` images in [0, 1] -> [0, 1]."""
    n, _, h, w = x.shape
    bias = torch.exp(strength * 0.3 * _uniform(n, 0, 1, g).view(n, 1, 1, 1) * smooth_noise(n, 1, (h, w), 4, g))
    gamma = torch.exp(strength * 0.3 * torch.randn(n, 1, 1, 1, generator=g))
    x = _normalise(x * bias).clamp_min(0) ** gamma
    noise = strength * 0.03 * _uniform(n, 0, 1, g).view(n, 1, 1, 1) * torch.randn(x.shape, generator=g)
    return (x + noise).clamp(0, 1)


def label_maps(n: int, size: tuple[int, int], g: torch.Generator) -> tuple[Tensor, int]:
    """Random smooth label maps ``(n, 1, H, W)`` int64 with values in ``[0, labels)``, and ``labels``
    (4 to 16, one count for the batch; a label may be absent from a map)."""
    labels = int(torch.randint(4, 17, (1,), generator=g))
    cells = int(torch.randint(3, 13, (1,), generator=g))
    scores = smooth_noise(n, labels, size, cells, g)
    return scores.argmax(dim=1, keepdim=True), labels


def paint_labels(label_map: Tensor, labels: int, g: torch.Generator) -> Tensor:
    """Images ``(n, 1, H, W)`` in [0, 1] of ``(n, 1, H, W)`` label maps: each label a random intensity,
    then blur, bias field, gamma and noise (:func:`intensity_augment`)."""
    n, _, h, w = label_map.shape
    intensities = torch.rand(n, labels, generator=g)
    image = torch.gather(intensities, 1, label_map.flatten(1)).view(n, 1, h, w)
    return intensity_augment(gaussian_blur(image, _uniform(n, 0.0, 1.5, g)), g)


def label_images(n: int, size: tuple[int, int], g: torch.Generator) -> Tensor:
    """SynthMorph-style images ``(n, 1, H, W)`` in [0, 1] (see the module docstring): :func:`paint_labels`
    of :func:`label_maps`."""
    return paint_labels(*label_maps(n, size, g), g)


def texture_images(n: int, size: tuple[int, int], g: torch.Generator) -> Tensor:
    """Multi-octave smooth noise ``(n, 1, H, W)`` in [0, 1]: blobs and texture at several scales."""
    image = torch.zeros(n, 1, *size)
    beta = _uniform(n, 0.5, 1.5, g).view(n, 1, 1, 1)  # spectral slope: higher is smoother
    for octave in range(6):
        cells = 2 ** (octave + 1)
        if cells > max(size) // 2:
            break
        image = image + smooth_noise(n, 1, size, cells, g) * (2.0 ** (-beta * octave))
    edges = torch.rand(n, 1, 1, 1, generator=g) < 0.3  # some images get hard edges, as objects have
    image = torch.where(edges, torch.tanh(4 * image / image.std(dim=(-2, -1), keepdim=True)), image)
    return intensity_augment(_normalise(image), g, strength=0.5)


def random_fields(n: int, size: tuple[int, int], max_disp: float, g: torch.Generator, int_steps: int = 7) -> Tensor:
    """Diffeomorphic smooth displacements ``(n, 2, H, W)`` in pixels, each with max norm ≤ ~``max_disp``.

    Each field's largest displacement is drawn uniformly in ``[0.2, 1] * max_disp``.
    """
    velocity = torch.zeros(n, 2, *size)
    for cells in (3, 6, 10):
        velocity = velocity + smooth_noise(n, 2, size, cells, g) * _uniform(n, 0.0, 1.0, g).view(n, 1, 1, 1)
    flow = VecInt(int_steps)(velocity)
    peak = flow.square().sum(dim=1).sqrt().amax(dim=(-2, -1)).clamp_min(1e-6).view(n, 1, 1, 1)
    target = max_disp * _uniform(n, 0.2, 1.0, g).view(n, 1, 1, 1)
    # Scaling the velocity, not the displacement, keeps the result a diffeomorphism.
    return VecInt(int_steps)(velocity * target / peak)


@dataclass
class Batch:
    """A batch of generated pairs: ``source``, ``target`` ``(n, 1, H, W)`` in [0, 1], ``flow`` ``(n, 2, H, W)`` px.

    ``warp(source, flow)`` equals ``target`` up to the intensity changes applied to each image.
    """

    source: Tensor
    target: Tensor
    flow: Tensor


#: Kinds of motion :func:`make_batch` can generate (see :func:`motion_fields` and :func:`layered_pairs`).
MOTIONS = ("smooth", "large", "layered", "stereo")


def affine_fields(n: int, size: tuple[int, int], max_disp: float, g: torch.Generator) -> Tensor:
    """Random affine displacements ``(n, 2, H, W)`` in pixels, about the image centre.

    Rotation up to ±0.25 rad, anisotropic scale up to ±20%, shear up to ±0.1 and a translation in
    a random direction; each field is then scaled so its largest displacement is drawn uniformly
    in ``[0.2, 1] * max_disp`` (a scaled affine field is still affine, and invertible while the
    peak stays below the image's half-side).
    """
    h, w = size
    rows = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    cols = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    p = torch.stack(torch.meshgrid(rows, cols, indexing="ij")).view(1, 2, h * w)
    angle = _uniform(n, -0.25, 0.25, g)
    scale_y, scale_x = torch.exp(_uniform(n, -0.2, 0.2, g)), torch.exp(_uniform(n, -0.2, 0.2, g))
    shear = _uniform(n, -0.1, 0.1, g)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Linear part minus the identity, acting on (row, col) offsets from the centre.
    m = torch.stack((torch.stack((cos * scale_y, -sin * scale_x + shear), -1), torch.stack((sin * scale_y, cos * scale_x), -1)), -2)
    m = m - torch.eye(2)
    direction = _uniform(n, 0.0, 2 * math.pi, g)
    shift = torch.stack((torch.sin(direction), torch.cos(direction)), -1) * _uniform(n, 0.0, max(h, w) / 2, g)[:, None]
    flow = (m @ p + shift[:, :, None]).view(n, 2, h, w)
    peak = flow.square().sum(dim=1).sqrt().amax(dim=(-2, -1)).clamp_min(1e-6).view(n, 1, 1, 1)
    return flow * (max_disp * _uniform(n, 0.2, 1.0, g).view(n, 1, 1, 1) / peak)


def motion_fields(n: int, size: tuple[int, int], max_disp: float, g: torch.Generator, motion: str = "smooth") -> Tensor:
    """Displacements ``(n, 2, H, W)`` in pixels of one kind of global motion, peak up to about ``max_disp``.

    ``"smooth"``: :func:`random_fields` (local smooth bends). ``"large"``: an affine motion
    (:func:`affine_fields`, up to ``max_disp``) plus a smooth bend of up to a third of it, as a
    camera or an organ moves as a whole and bends a little.
    """
    if motion == "smooth":
        return random_fields(n, size, max_disp, g)
    if motion == "large":
        return affine_fields(n, size, max_disp, g) + random_fields(n, size, max_disp / 3, g)
    raise ValueError(f"unknown motion {motion!r}; choose one of smooth, large")


def blob_masks(n: int, size: tuple[int, int], g: torch.Generator, edge: float = 1.0) -> Tensor:
    """Random soft object masks ``(n, 1, H, W)`` in [0, 1]: a disc of radius 12-30% of the side with a
    wobbly outline (smooth noise), anywhere in the central 80% of the image; ``edge`` is the width
    (pixels) of the anti-aliased border."""
    h, w = size
    side = max(h, w)
    rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    cy = _uniform(n, 0.1, 0.9, g).view(n, 1, 1, 1) * h
    cx = _uniform(n, 0.1, 0.9, g).view(n, 1, 1, 1) * w
    radius = _uniform(n, 0.12, 0.3, g).view(n, 1, 1, 1) * side
    wobble = smooth_noise(n, 1, size, int(torch.randint(3, 7, (1,), generator=g)), g) * 0.25 * radius
    distance = ((rows - cy).square() + (cols - cx).square()).sqrt() + wobble
    return torch.sigmoid((radius - distance) / (0.5 * edge))


@dataclass
class Layers:
    """Layered motion: a background and objects in front of it, each moving on its own.

    Attributes:
        background: ``(n, 2, H, W)`` backward field of the background, pixels.
        masks: each object's soft mask ``(n, 1, H, W)`` in [0, 1], in the source image, back to front.
        fields: each object's backward field ``(n, 2, H, W)``, pixels.
    """

    background: Tensor
    masks: list[Tensor]
    fields: list[Tensor]


def layered_motion(n: int, size: tuple[int, int], max_disp: float, g: torch.Generator, max_objects: int = 3) -> Layers:
    """A random :class:`Layers`: the background moves by up to half of ``max_disp`` (smooth or large motion),
    each of 1 to ``max_objects`` objects by a translation of up to ``max_disp`` plus a small affine and
    smooth motion of its own (as objects moving over a background, or depth layers in stereo)."""
    background = motion_fields(n, size, max_disp / 2, g, "large" if bool(torch.rand(1, generator=g) < 0.5) else "smooth")
    masks, fields = [], []
    for _ in range(int(torch.randint(1, max_objects + 1, (1,), generator=g))):
        direction = _uniform(n, 0.0, 2 * math.pi, g)
        shift = torch.stack((torch.sin(direction), torch.cos(direction)), 1) * (max_disp * _uniform(n, 0.2, 1.0, g))[:, None]
        own = affine_fields(n, size, max_disp / 5, g) + random_fields(n, size, max_disp / 10, g)
        masks.append(blob_masks(n, size, g))
        fields.append(shift.view(n, 2, 1, 1) + own)
    return Layers(background, masks, fields)


def _planes(n: int, size: tuple[int, int], lo: float, hi: float, tilt: float, g: torch.Generator) -> Tensor:
    """Random planes over the image ``(n, H, W)``: a value in ``[lo, hi]`` at the centre, rising or
    falling by up to ``tilt`` across each axis."""
    h, w = size
    rows = (torch.arange(h, dtype=torch.float32) / max(h - 1, 1) - 0.5).view(1, h, 1)
    cols = (torch.arange(w, dtype=torch.float32) / max(w - 1, 1) - 0.5).view(1, 1, w)
    level = _uniform(n, lo, hi, g).view(n, 1, 1)
    return level + _uniform(n, -tilt, tilt, g).view(n, 1, 1) * cols + _uniform(n, -tilt, tilt, g).view(n, 1, 1) * rows


def stereo_motion(n: int, size: tuple[int, int], max_disp: float, g: torch.Generator, max_objects: int = 4) -> Layers:
    """A random stereo-like :class:`Layers`: the source is the right view and the target the left one
    of a scene of slanted planes, so every field is horizontal, ``(0, -d)`` for a disparity ``d >= 0``.

    The background's disparity is a plane of 5-30% of ``max_disp`` at the centre, tilted by up to 30%
    across the image (clipped at zero); then 2 to ``max_objects`` objects, each nearer than the one
    before (a larger disparity, by 10% of ``max_disp`` up to its share of 70%), each a tilted plane.
    Objects hide what is behind them differently in the two views (occlusions), as in real stereo pairs.
    """

    def field(disparity: Tensor) -> Tensor:
        return torch.stack((torch.zeros_like(disparity), -disparity), 1)

    background = _planes(n, size, 0.05 * max_disp, 0.3 * max_disp, 0.3 * max_disp, g).clamp(min=0)
    count = int(torch.randint(2, max_objects + 1, (1,), generator=g))
    depth = background.mean((1, 2))
    masks, fields = [], []
    for _ in range(count):
        disparity = depth.view(n, 1, 1) + _planes(n, size, 0.1 * max_disp, 0.7 * max_disp / count, 0.15 * max_disp, g)
        depth = disparity.mean((1, 2))
        masks.append(blob_masks(n, size, g))
        fields.append(field(disparity))
    return Layers(field(background), masks, fields)


def layered_pairs(
    background: Tensor, objects: list[Tensor], layers: Layers, resample: Callable[[Tensor, Tensor], Tensor] = warp
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite a source and a target from layers: ``(source, target, flow)``.

    The source shows each object (``objects[k]``, ``(n, 1, H, W)``) over ``background`` through its
    mask; the target shows each layer moved by its own field, nearer layers in front. ``flow`` is,
    at each target pixel, the backward field of the layer seen there (where that layer is more
    than half opaque), so ``warp(source, flow)`` matches the target except where the motion
    uncovers background that an object hid in the source (occlusions, as in real scenes).

    ``resample(image, flow)`` moves an image by a backward field (regcore's :func:`warp` for
    training; the benchmark passes an independent interpolator).
    """
    source, target, flow = background, resample(background, layers.background), layers.background
    for image, mask, field in zip(objects, layers.masks, layers.fields, strict=True):
        source = mask * image + (1 - mask) * source
        seen = resample(mask, field).clamp(0, 1)
        target = seen * resample(image, field) + (1 - seen) * target
        flow = torch.where(seen > 0.5, field, flow)
    return source, target, flow


def make_batch(
    n: int,
    size: tuple[int, int],
    max_disp: float,
    g: torch.Generator,
    kind: str = "mix",
    contrast: bool = True,
    motion: str = "smooth",
) -> Batch:
    """Generate ``n`` training pairs of ``size`` with known fields up to about ``max_disp`` px.

    Args:
        kind: images: ``"labels"``, ``"texture"`` or ``"mix"`` (half of each).
        contrast: apply independent intensity changes (bias, gamma, noise) to source and target.
        motion: ``"smooth"`` (random smooth bends), ``"large"`` (affine + smooth),
            ``"layered"`` (objects moving over a moving background, :func:`layered_motion`) or
            ``"stereo"`` (slanted planes seen from two viewpoints, :func:`stereo_motion`).
    """
    images = _images(n, size, g, kind)
    if motion in ("layered", "stereo"):
        layers = (layered_motion if motion == "layered" else stereo_motion)(n, size, max_disp, g)
        objects = [_images(n, size, g, kind) for _ in layers.masks]
        source, target, flow = layered_pairs(images, objects, layers)
    else:
        flow = motion_fields(n, size, max_disp, g, motion)
        source, target = images, warp(images, flow)
    if contrast:
        return Batch(intensity_augment(source, g, 0.5), intensity_augment(target, g, 0.5), flow)
    return Batch(source, target, flow)


def _images(n: int, size: tuple[int, int], g: torch.Generator, kind: str) -> Tensor:
    if kind == "mix":
        k = n // 2
        return torch.cat((label_images(n - k, size, g), texture_images(k, size, g)))
    if kind == "labels":
        return label_images(n, size, g)
    if kind == "texture":
        return texture_images(n, size, g)
    raise ValueError(f"unknown kind {kind!r}")


#: Gray photographs bundled with scikit-image, used for validation and benchmarks only.
PHOTO_NAMES = ("camera", "moon", "coins", "text", "brick", "grass", "gravel", "page", "astronaut", "coffee", "chelsea", "rocket")
#: Other photographs bundled with scikit-image, which the benchmark keeps apart for tuning
#: (``benchmarks/sets.py``: TUNING_NAMES).
TUNING_PHOTO_NAMES = ("cell", "clock", "hubble_deep_field", "immunohistochemistry", "retina", "logo")
#: What :func:`load_photo` accepts: images whose files ship with scikit-image (nothing is downloaded).
BUNDLED_PHOTOS = PHOTO_NAMES + TUNING_PHOTO_NAMES


def photo_gray(name: str) -> np.ndarray:
    """A scikit-image sample photograph, gray, at its full size: ``(H, W)`` float64 in [0, 1].

    ``name`` is one of :data:`BUNDLED_PHOTOS` (files that ship with scikit-image); any other name is
    a :class:`~regcore.errors.RegcoreError`: ``skimage.data`` also holds functions that download
    data sets (``download_all``), which a name typed by a user must never reach.
    """
    if name not in BUNDLED_PHOTOS:
        raise RegcoreError(f"unknown photograph {name!r}; choose one of {', '.join(BUNDLED_PHOTOS)}")
    from skimage import color, data

    image = getattr(data, name)()
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    image = np.asarray(image, np.float64)
    return image / 255.0 if image.max() > 1 else image


def load_photo(name: str, size: int) -> np.ndarray:
    """A scikit-image sample photograph (:func:`photo_gray`), centre-cropped square and resized: ``(size, size)`` in [0, 1]."""
    from skimage import transform

    image = photo_gray(name)
    h, w = image.shape
    s = min(h, w)
    image = image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return transform.resize(image, (size, size), anti_aliasing=True).astype(np.float32)


def photo_pairs(size: int, max_disp: float, seed: int, names: tuple[str, ...] = PHOTO_NAMES, contrast: str = "none") -> Batch:
    """Real photographs deformed by known random fields: a :class:`Batch` of ``len(names)`` pairs.

    Args:
        contrast: ``"none"``; ``"gamma"`` (target gamma 0.5 or 2); ``"invert"`` (target = 1 - target).
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.from_numpy(np.stack([load_photo(name, size) for name in names]))[:, None]
    flow = random_fields(len(names), (size, size), max_disp, g)
    target = warp(images, flow)
    if contrast == "gamma":
        target = target ** torch.where(torch.rand(len(names), 1, 1, 1, generator=g) < 0.5, 0.5, 2.0)
    elif contrast == "invert":
        target = 1.0 - target
    elif contrast != "none":
        raise ValueError(f"unknown contrast change {contrast!r}")
    return Batch(images, target.clamp(0, 1), flow)
