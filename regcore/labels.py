"""Label maps (segmentations) that follow their image: size checks, resizing and warping, Dice.

A label map is an ``int32`` ``(H, W)`` array, 0 the background (:func:`regcore.io.load_labels`
reads one from a file). It moves exactly as its image does: resized to the same grid (corner
pixels matched, as the image's bilinear resize does) and warped by the same field, backward, with
the image's border handling; only the interpolation differs.

Interpolation is nearest neighbour, not one-hot linear interpolation followed by argmax. Both give
each output pixel one of the input labels; nearest neighbour costs one resampling whatever the
number of labels (one-hot costs one per label, and as much memory), keeps thin structures exactly as
thick as they were, and is what VoxelMorph's and TransMorph's evaluations use to report Dice, so our
numbers compare with theirs. One-hot interpolation would round corners slightly less.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ImageError
from .metrics import dice_per_label
from .warp import warp

__all__ = ["check_labels", "label_overlap", "resize_labels", "warp_labels"]


def _tensor(labels: np.ndarray) -> torch.Tensor:
    # float32 holds every label up to 2**24 exactly (labels stop at 65535).
    return torch.from_numpy(np.ascontiguousarray(labels, np.float32))[None, None]


def check_labels(labels: np.ndarray, image_shape: tuple[int, ...], what: str, image: str) -> None:
    """Raise an ImageError unless ``labels`` has the shape of its image (``what``/``image`` name them)."""
    if tuple(labels.shape) != tuple(image_shape):
        (h, w), (ih, iw) = labels.shape, image_shape
        raise ImageError(f"{what}: the label map is {w}x{h} but the {image} image is {iw}x{ih}; a label map must have its image's size")


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` labels -> ``(H, W)`` by nearest neighbour, on the grid of the images' resize
    (``align_corners=True``: corner pixels map onto corner pixels)."""
    if tuple(labels.shape) == tuple(size):
        return np.asarray(labels, np.int32)
    theta = torch.eye(2, 3)[None]
    grid = F.affine_grid(theta, [1, 1, *size], align_corners=True)
    out = F.grid_sample(_tensor(labels), grid, mode="nearest", align_corners=True)
    return out[0, 0].numpy().astype(np.int32)


def warp_labels(labels: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward-warp ``(H, W)`` labels by a ``(2, H, W)`` pixel field, nearest neighbour:
    ``out[y, x] = labels[round(y + flow[0, y, x]), round(x + flow[1, y, x])]`` (edge labels repeat outside)."""
    with torch.inference_mode():
        out = warp(_tensor(labels), torch.from_numpy(np.ascontiguousarray(flow, np.float32))[None], mode="nearest")
    return out[0, 0].numpy().astype(np.int32)


def label_overlap(moved: np.ndarray, target: np.ndarray) -> dict:
    """Dice of each label of two ``(H, W)`` label maps and their mean.

    Returns:
        ``{"mean": float, "per_label": {"1": float, ...}}`` over every nonzero label present in
        either map (a label missing from one scores 0); ``mean`` is None when neither has one.
    """
    scores = dice_per_label(moved, target)
    per_label = {str(label): score for label, score in scores.items()}
    return {"mean": float(np.mean(list(scores.values()))) if scores else None, "per_label": per_label}
