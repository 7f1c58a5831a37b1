"""The benchmark's evaluation sets: image pairs with known fields, deformed independently of regcore.

- :class:`EvalSet` describes a seeded family of pairs; :data:`EVAL_SETS` are the full
  benchmark's, :data:`QUICK_SETS` the CI run's, :func:`tuning_sets` the same families on other
  images and seeds (for tuning without touching the benchmark's pairs).
- :func:`build_pairs` makes a set's :class:`Pair` list: photographs bundled with scikit-image
  (:data:`regcore.data.PHOTO_NAMES`, never used in training) or generated label-map images, moved
  by fields from :mod:`regcore.data`'s generators (smooth bends, large affine + bend motion, or
  objects moving over a moving background), with a contrast change or noise on some; and
  :func:`stereo_pair`, one real stereo pair with a ground-truth disparity.
- :func:`resample` moves images by a field with SciPy's cubic spline interpolation, not with
  regcore's bilinear :func:`regcore.warp.warp`: a method that shares the generator's interpolator
  would be rewarded for undoing exactly that interpolator.

Fields follow the project's convention: ``(2, H, W)`` float32 pixels, channel 0 rows, backward
(``target[y, x] = source[y + flow[0, y, x], x + flow[1, y, x]]``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from regcore.data import (
    MOTIONS,
    PHOTO_NAMES,
    intensity_augment,
    label_maps,
    layered_motion,
    layered_pairs,
    load_photo,
    motion_fields,
    paint_labels,
    photo_gray,
    stereo_motion,
)

__all__ = [
    "CONTRASTS",
    "EVAL_SETS",
    "LARGE_FRACTION",
    "QUICK_SETS",
    "TUNING_NAMES",
    "TUNING_SEED_OFFSET",
    "EvalSet",
    "Pair",
    "build_pairs",
    "describe",
    "resample",
    "stereo_pair",
    "tuning_photos",
    "tuning_sets",
    "warp_labels",
]

#: Contrast changes of the target: ``"gamma"`` (gamma 0.5 or 2), ``"invert"`` (1 - t), ``"sigmoid"``
#: (a steep sigmoid, :func:`sigmoid_contrast`); label images also take ``"augment"`` (independent
#: random bias field, gamma and noise on each image, as in training).
CONTRASTS = ("none", "gamma", "invert", "sigmoid", "augment")
KINDS = ("photo", "labels", "stereo")
IMAGES = ("bench", "tuning")

#: Largest displacement of the large and layered sets, as a fraction of the side (issue 13: ~15%).
LARGE_FRACTION = 0.15

#: Tuning runs use each set's seed plus this, so no tuning field is a benchmark field.
TUNING_SEED_OFFSET = 100_000

#: scikit-image images the benchmark never uses, for tuning. Not ``stereo_motorcycle`` (the stereo
#: benchmark pair) and not ``cat`` (it is ``chelsea``, a benchmark photograph).
TUNING_NAMES = ("cell", "clock", "hubble_deep_field", "immunohistochemistry", "retina", "logo")
#: Tuning photographs per set: :data:`TUNING_NAMES` whole, then seeded random crops of them.
TUNING_COUNT = 12
_TUNING_CROP_SEED = 13


@dataclass(frozen=True)
class EvalSet:
    """A seeded family of pairs.

    Attributes:
        kind: ``"photo"`` (photographs), ``"labels"`` (generated label-map images, scored by Dice
            too) or ``"stereo"`` (the real stereo pair of :func:`stereo_pair`; ``size`` is its
            width, and motion, contrast and seed do not apply).
        size: side in pixels (square images; the stereo pair's width).
        max_disp: largest displacement of the random fields, pixels (smooth: each field's peak is
            drawn in ``[0.2, 1] * max_disp``; large: an affine motion up to that plus a bend up to
            a third of it; layered: objects move up to that, the background up to half of it).
        motion: ``"smooth"``, ``"large"``, ``"layered"`` or ``"stereo"`` (:data:`regcore.data.MOTIONS`).
        contrast: one of :data:`CONTRASTS`, applied to the target.
        noise: std of Gaussian noise added independently to source and target (0 = none).
        seed: the generator seed; the same seed gives the same pairs.
        count: pairs in the set (photographs: at most ``len(PHOTO_NAMES)``, or :data:`TUNING_COUNT`).
        images: ``"bench"`` (:data:`regcore.data.PHOTO_NAMES`) or ``"tuning"`` (:func:`tuning_photos`).
    """

    kind: str
    size: int
    max_disp: float
    motion: str = "smooth"
    contrast: str = "none"
    noise: float = 0.0
    seed: int = 0
    count: int = len(PHOTO_NAMES)
    images: str = "bench"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("kind", self.kind, KINDS),
            ("motion", self.motion, MOTIONS),
            ("contrast", self.contrast, CONTRASTS),
            ("images", self.images, IMAGES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.kind == "labels" and (self.contrast not in ("none", "augment") or self.motion in ("layered", "stereo")):
            raise ValueError("label images take contrast 'none' or 'augment' and motion 'smooth' or 'large'")
        if self.kind == "photo" and self.contrast == "augment":
            raise ValueError("contrast 'augment' is for label images")
        if self.kind == "stereo" and self.images == "tuning":
            raise ValueError("there is no tuning stereo pair: the only one with ground truth is the benchmark's")


def _large(kind: str, side: int, motion: str, seed: int) -> EvalSet:
    return EvalSet(kind, side, LARGE_FRACTION * side, motion=motion, seed=seed)


#: The full benchmark's sets. Smooth fields ~6% of the side (8 px at 128², 12 px at 256²); large
#: and layered motion up to 15% of the side (issue 13).
EVAL_SETS: dict[str, EvalSet] = {
    "photo128": EvalSet("photo", 128, 8.0, seed=1128),
    "photo256": EvalSet("photo", 256, 12.0, seed=1256),
    "photo128-large": _large("photo", 128, "large", 10128),
    "photo256-large": _large("photo", 256, "large", 10256),
    "photo128-layered": _large("photo", 128, "layered", 11128),
    "photo256-layered": _large("photo", 256, "layered", 11256),
    "photo256-stereo": _large("photo", 256, "stereo", 13256),
    "photo128-gamma": EvalSet("photo", 128, 8.0, contrast="gamma", seed=2128),
    "photo128-invert": EvalSet("photo", 128, 8.0, contrast="invert", seed=3128),
    "photo128-sigmoid": EvalSet("photo", 128, 8.0, contrast="sigmoid", seed=12128),
    "photo128-noise": EvalSet("photo", 128, 8.0, noise=0.05, seed=4128),
    "labels128": EvalSet("labels", 128, 8.0, seed=5128),
    "labels128-augment": EvalSet("labels", 128, 8.0, contrast="augment", seed=6128),
    "stereo256": EvalSet("stereo", 256, 0.0, count=1),
}

#: ``--quick``: a few small pairs, no contrast change (where every real method must beat identity).
QUICK_SETS: dict[str, EvalSet] = {
    "photo96": EvalSet("photo", 96, 6.0, seed=1096, count=3),
    "labels96": EvalSet("labels", 96, 6.0, seed=5096, count=2),
}


def tuning_sets(sets: dict[str, EvalSet]) -> dict[str, EvalSet]:
    """``sets`` on tuning images (:func:`tuning_photos`) with seeds offset by :data:`TUNING_SEED_OFFSET`,
    same names; the stereo set is left out (its pair is the benchmark's)."""
    return {
        name: replace(spec, images="tuning", seed=spec.seed + TUNING_SEED_OFFSET, count=min(spec.count, TUNING_COUNT))
        for name, spec in sets.items()
        if spec.kind != "stereo"
    }


def describe(spec: EvalSet) -> str:
    """What a set holds, in one line (results tables, logs)."""
    if spec.kind == "stereo":
        return (
            f"scikit-image's stereo_motorcycle (Middlebury 2014), right view to left view, {spec.size} px wide; "
            "true field from the ground-truth disparity, scored where it is known"
        )
    what = "generated label-map images" if spec.kind == "labels" else "scikit-image photographs"
    if spec.images == "tuning":
        what = f"TUNING {what} ({', '.join(TUNING_NAMES)} and crops)" if spec.kind == "photo" else f"TUNING {what}"
    motion = {
        "smooth": f"smooth fields up to {spec.max_disp:g} px",
        "large": f"affine motion up to {spec.max_disp:g} px plus a smooth bend up to a third of it",
        "layered": f"1-3 objects (other photographs of the set) moving up to {spec.max_disp:g} px over a background "
        "moving up to half of it",
        "stereo": f"stereo-like: the right and left views of 2-4 objects (other photographs of the set) as slanted planes "
        f"over a slanted background, horizontal disparity up to about {spec.max_disp:g} px, with occlusions",
    }[spec.motion]
    change = {
        "gamma": ", target gamma 0.5 or 2",
        "invert": ", target intensities inverted",
        "sigmoid": ", target through a steep sigmoid 1 / (1 + exp(-8 (t - 0.5))), rescaled to [0, 1]",
        "augment": ", independent random bias field, gamma and noise on each image",
    }.get(spec.contrast, "")
    noise = f", Gaussian noise σ={spec.noise:g} on both" if spec.noise else ""
    return f"{what}, {spec.size}², {motion}{change}{noise}"


@dataclass
class Pair:
    """One evaluation pair.

    Attributes:
        source, target: ``(H, W)`` float32 in [0, 1].
        flow: ``(2, H, W)`` float32 px, the true field.
        valid: ``(H, W)`` bool, where the true field is known (all True but for the stereo pair).
        labels: label sets: the source's and the target's ``(H, W)`` int label maps, else None.
    """

    name: str
    source: np.ndarray
    target: np.ndarray
    flow: np.ndarray
    valid: np.ndarray
    labels: tuple[np.ndarray, np.ndarray] | None = None


# ---------------------------------------------------------------------------------------------
# Independent resampling
# ---------------------------------------------------------------------------------------------


def _coordinates(flow: np.ndarray) -> np.ndarray:
    """Where each pixel samples: ``(2, H, W)`` float64 (row, column) of ``p + flow(p)``."""
    h, w = flow.shape[-2:]
    return np.mgrid[0:h, 0:w].astype(np.float64) + flow


def resample(images: Tensor, flows: Tensor) -> Tensor:
    """Move ``(n, C, H, W)`` images by ``(n, 2, H, W)`` backward fields in pixels: float32 in [0, 1].

    ``out[y, x] = image[y + flow[0, y, x], x + flow[1, y, x]]`` by cubic spline interpolation
    (``scipy.ndimage.map_coordinates``, order 3 with its prefilter), edges repeated outside the
    image, clipped to [0, 1] (a cubic spline overshoots at sharp edges).
    """
    if images.ndim != 4 or flows.ndim != 4 or flows.shape[1] != 2 or images.shape[-2:] != flows.shape[-2:]:
        raise ValueError(f"expected images (n, C, H, W) and flows (n, 2, H, W), got {tuple(images.shape)} and {tuple(flows.shape)}")
    array = images.detach().cpu().numpy().astype(np.float64)
    out = np.empty(array.shape, np.float32)
    for i, flow in enumerate(flows.detach().cpu().numpy().astype(np.float64)):
        where = _coordinates(flow)
        for c in range(array.shape[1]):
            out[i, c] = ndimage.map_coordinates(array[i, c], where, order=3, mode="nearest", prefilter=True)
    return torch.from_numpy(out.clip(0, 1))


def warp_labels(label_map: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` integer label map moved by a ``(2, H, W)`` backward field, nearest neighbour (edges repeated)."""
    return ndimage.map_coordinates(np.asarray(label_map), _coordinates(np.asarray(flow, np.float64)), order=0, mode="nearest")


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def tuning_photos(size: int, count: int = TUNING_COUNT) -> tuple[tuple[str, ...], np.ndarray]:
    """Photographs for tuning only: names and ``(count, size, size)`` float32 in [0, 1].

    :data:`TUNING_NAMES`, centre-cropped square, then square crops of 40-80% of their shorter
    side at seeded random places (the same crops at every size), leaving out nearly flat ones.
    """
    from skimage import transform

    names, images = [], []
    for name in TUNING_NAMES[:count]:
        names.append(name)
        images.append(load_photo(name, size))
    rng = np.random.default_rng(_TUNING_CROP_SEED)
    full = {name: photo_gray(name) for name in TUNING_NAMES} if count > len(TUNING_NAMES) else {}
    crops = 0
    while len(images) < count:
        name = TUNING_NAMES[crops % len(TUNING_NAMES)]
        crops += 1
        h, w = full[name].shape
        side = int(rng.uniform(0.4, 0.8) * min(h, w))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = transform.resize(full[name][top : top + side, left : left + side], (size, size), anti_aliasing=True)
        if crop.std() >= 0.05:
            names.append(f"{name}-crop{crops}")
            images.append(crop.astype(np.float32))
    return tuple(names), np.stack(images)


def _photos(spec: EvalSet) -> tuple[tuple[str, ...], Tensor]:
    """The photographs the set uses, ``(N, 1, size, size)``: its backgrounds, or every one when
    layered (the objects are photographs of the set too)."""
    count = None if spec.motion in ("layered", "stereo") else spec.count
    if spec.images == "tuning":
        names, images = tuning_photos(spec.size, count or TUNING_COUNT)
    else:
        names = PHOTO_NAMES[:count]
        images = np.stack([load_photo(name, spec.size) for name in names])
    return names, torch.from_numpy(images)[:, None]


def sigmoid_contrast(image: Tensor) -> Tensor:
    """A steep sigmoid of intensity, ``1 / (1 + exp(-8 (t - 0.5)))``, mapped so 0 and 1 stay 0 and 1."""
    lo, hi = torch.sigmoid(torch.tensor(-4.0)), torch.sigmoid(torch.tensor(4.0))
    return (torch.sigmoid(8.0 * (image - 0.5)) - lo) / (hi - lo)


def _contrast(target: Tensor, contrast: str, g: torch.Generator) -> Tensor:
    if contrast == "gamma":
        return target ** torch.where(torch.rand(len(target), 1, 1, 1, generator=g) < 0.5, 0.5, 2.0)
    if contrast == "invert":
        return 1.0 - target
    if contrast == "sigmoid":
        return sigmoid_contrast(target)
    return target


# ---------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------


def _photo_batch(spec: EvalSet, g: torch.Generator) -> tuple[tuple[str, ...], Tensor, Tensor, Tensor]:
    names, photos = _photos(spec)
    if spec.count > len(names):
        raise ValueError(f"{spec.count} pairs asked, {len(names)} photographs available")
    n, size = spec.count, (spec.size, spec.size)
    background = photos[:n]
    if spec.motion in ("layered", "stereo"):
        layers = (layered_motion if spec.motion == "layered" else stereo_motion)(n, size, spec.max_disp, g)
        # Object k over pair i's background is photograph i + 3 + k: every image a photograph of the set.
        objects = [photos[(torch.arange(n) + 3 + k) % len(names)] for k in range(len(layers.masks))]
        source, target, flow = layered_pairs(background, objects, layers, resample=resample)
    else:
        flow = motion_fields(n, size, spec.max_disp, g, spec.motion)
        source, target = background, resample(background, flow)
    return names[:n], source, _contrast(target, spec.contrast, g), flow


def _label_batch(spec: EvalSet, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor, np.ndarray]:
    n, size = spec.count, (spec.size, spec.size)
    maps, labels = label_maps(n, size, g)
    images = paint_labels(maps, labels, g)
    flow = motion_fields(n, size, spec.max_disp, g, spec.motion)
    source, target = images, resample(images, flow)
    if spec.contrast == "augment":
        source, target = intensity_augment(source, g, 0.5), intensity_augment(target, g, 0.5)
    target_maps = np.stack([warp_labels(m, f) for m, f in zip(maps[:, 0].numpy(), flow.numpy(), strict=True)])
    return source, target, flow, maps[:, 0].numpy(), target_maps


def build_pairs(spec: EvalSet, count: int | None = None) -> list[Pair]:
    """The pairs of ``spec`` (the first ``count`` of them if given), identical on every call.

    The whole set is generated and then cut, so the first pairs do not depend on ``count``.
    """
    if spec.kind == "stereo":
        return [stereo_pair(spec.size)]
    g = torch.Generator().manual_seed(spec.seed)
    label_pairs: list[tuple[np.ndarray, np.ndarray]] | None = None
    if spec.kind == "photo":
        names, source_t, target_t, flow_t = _photo_batch(spec, g)
    else:
        source_t, target_t, flow_t, source_maps, target_maps = _label_batch(spec, g)
        names = tuple(f"labels{i}" for i in range(spec.count))
        label_pairs = list(zip(source_maps, target_maps, strict=True))
    source, target = source_t[:, 0].numpy(), target_t[:, 0].numpy()
    if spec.noise > 0:
        rng = np.random.default_rng(spec.seed)
        source = source + rng.normal(0.0, spec.noise, source.shape)
        target = target + rng.normal(0.0, spec.noise, target.shape)
    source = np.clip(source, 0, 1).astype(np.float32)
    target = np.clip(target, 0, 1).astype(np.float32)
    flows = flow_t.numpy().astype(np.float32)
    n = min(spec.count if count is None else count, spec.count)
    everywhere = np.ones(source.shape[1:], bool)
    return [Pair(names[i], source[i], target[i], flows[i], everywhere, label_pairs[i] if label_pairs else None) for i in range(n)]


#: The stereo pair's field is scored where at least this share of each pixel's resampling weight
#: falls on full-resolution pixels with a known disparity.
STEREO_KNOWN = 0.99


def stereo_pair(width: int) -> Pair:
    """scikit-image's ``stereo_motorcycle`` (Middlebury 2014), gray, resized to ``width`` columns.

    Source = right view, target = left view. The ground-truth disparity ``d`` (left view, pixels,
    infinite where unknown) says that left pixel ``(y, x)`` shows right pixel ``(y, x - d)``, so
    the backward field is ``(0, -d)``. It is resized by averaging known disparities only
    (anti-aliased like the images) and scaled by ``width / 741``; ``valid`` keeps the pixels whose
    resampling weight lies at least :data:`STEREO_KNOWN` on known disparities. Parts of the left
    view that the right one does not see (occlusions) keep their geometric disparity.
    """
    from skimage import color, data, transform

    left, right, disparity = data.stereo_motorcycle()
    h, w = disparity.shape
    shape = (round(h * width / w), width)
    known = np.isfinite(disparity)
    weight = transform.resize(known.astype(np.float64), shape, anti_aliasing=True)
    mean = transform.resize(np.where(known, disparity, 0.0), shape, anti_aliasing=True) / np.maximum(weight, 1e-6)
    flow = np.stack([np.zeros(shape), -mean * (width / w)]).astype(np.float32)
    source, target = (transform.resize(color.rgb2gray(v), shape, anti_aliasing=True).astype(np.float32) for v in (right, left))
    return Pair("motorcycle", source.clip(0, 1), target.clip(0, 1), flow, weight >= STEREO_KNOWN)
