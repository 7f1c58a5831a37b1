"""Generated training and validation data: random images and random smooth deformations.

Everything here is made on the fly from a seeded ``torch.Generator``; nothing is downloaded.

- :func:`label_images`: SynthMorph-style images: a random smooth label map, each label a random
  intensity, then blur, a smooth multiplicative bias field, random gamma and noise, so a model
  trained on them with NCC does not depend on one contrast.
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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .filters import gaussian_blur
from .warp import VecInt, warp

__all__ = [
    "PHOTO_NAMES",
    "Batch",
    "label_images",
    "load_photo",
    "make_batch",
    "photo_pairs",
    "random_fields",
    "smooth_noise",
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


def label_images(n: int, size: tuple[int, int], g: torch.Generator) -> Tensor:
    """SynthMorph-style images ``(n, 1, H, W)`` in [0, 1] (see the module docstring)."""
    labels = int(torch.randint(4, 17, (1,), generator=g))
    cells = int(torch.randint(3, 13, (1,), generator=g))
    scores = smooth_noise(n, labels, size, cells, g)
    label_map = scores.argmax(dim=1, keepdim=True)
    intensities = torch.rand(n, labels, generator=g)
    image = torch.gather(intensities, 1, label_map.flatten(1)).view(n, 1, *size)
    return intensity_augment(gaussian_blur(image, _uniform(n, 0.0, 1.5, g)), g)


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


def make_batch(n: int, size: tuple[int, int], max_disp: float, g: torch.Generator, kind: str = "mix", contrast: bool = True) -> Batch:
    """Generate ``n`` training pairs of ``size`` with known fields up to ``max_disp`` px.

    Args:
        kind: ``"labels"``, ``"texture"`` or ``"mix"`` (half of each).
        contrast: apply independent intensity changes (bias, gamma, noise) to source and target.
    """
    if kind == "mix":
        k = n // 2
        images = torch.cat((label_images(n - k, size, g), texture_images(k, size, g)))
    elif kind == "labels":
        images = label_images(n, size, g)
    elif kind == "texture":
        images = texture_images(n, size, g)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    flow = random_fields(n, size, max_disp, g)
    moved = warp(images, flow)
    if contrast:
        return Batch(intensity_augment(images, g, 0.5), intensity_augment(moved, g, 0.5), flow)
    return Batch(images, moved, flow)


#: Gray photographs bundled with scikit-image, used for validation and benchmarks only.
PHOTO_NAMES = ("camera", "moon", "coins", "text", "brick", "grass", "gravel", "page", "astronaut", "coffee", "chelsea", "rocket")


def load_photo(name: str, size: int) -> np.ndarray:
    """A scikit-image sample photograph, gray, centre-cropped square and resized: ``(size, size)`` in [0, 1]."""
    from skimage import color, data, transform

    image = getattr(data, name)()
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    image = np.asarray(image, np.float64)
    if image.max() > 1:
        image = image / 255.0
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
