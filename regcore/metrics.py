"""Registration quality metrics on numpy arrays (images ``(H, W)`` in [0, 1], fields ``(2, H, W)`` px)."""

from __future__ import annotations

import numpy as np
import torch

from .losses import global_ncc, local_ncc_map

__all__ = [
    "dice",
    "dice_per_label",
    "displacement_stats",
    "endpoint_error",
    "folding_percent",
    "image_scores",
    "jacobian_determinant",
    "jacobian_stats",
    "jacobian_summary",
    "local_ncc",
    "mse",
    "ncc",
]


def _t(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference of two ``(H, W)`` images (0 when equal)."""
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Global normalised cross-correlation (Pearson) of two ``(H, W)`` images, in [-1, 1]."""
    return float(global_ncc(_t(a), _t(b))[0])


def local_ncc(a: np.ndarray, b: np.ndarray, win: int = 9) -> float:
    """Mean local NCC over ``win × win`` windows of two ``(H, W)`` images, in [-1, 1]."""
    with torch.inference_mode():
        return float(local_ncc_map(_t(a), _t(b), win).mean())


def image_scores(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """``{"mse", "ncc", "local_ncc"}`` of two ``(H, W)`` images."""
    return {"mse": mse(a, b), "ncc": ncc(a, b), "local_ncc": local_ncc(a, b)}


def jacobian_determinant(flow: np.ndarray) -> np.ndarray:
    """Determinant of the Jacobian of the map ``p -> p + flow(p)``: ``(2, H, W)`` px -> ``(H, W)``.

    1 means the area is preserved, > 1 expansion, < 1 compression and ≤ 0 folding (the map is
    not invertible there). This is J itself, not log J. Central differences inside, one-sided
    at the border (``numpy.gradient``).
    """
    # float32 is ample for pixel-scale gradients and halves the memory of a 4096² field.
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"expected a field of shape (2, H, W), got {flow.shape}")
    if min(flow.shape[1:]) < 2:
        return np.ones(flow.shape[1:], np.float32)
    dyy, dyx = np.gradient(flow[0])  # d(row displacement)/d row, d/d col
    dxy, dxx = np.gradient(flow[1])
    return ((1 + dyy) * (1 + dxx) - dyx * dxy).astype(np.float32)


def folding_percent(flow: np.ndarray) -> float:
    """Percentage of pixels where the Jacobian determinant is ≤ 0 (the field folds)."""
    return jacobian_stats(flow)["folding_percent"]


def jacobian_stats(flow: np.ndarray) -> dict[str, float]:
    """``{"folding_percent", "jacobian_min"}`` of a ``(2, H, W)`` field, from one Jacobian computation."""
    return jacobian_summary(jacobian_determinant(flow))


def jacobian_summary(jacobian: np.ndarray) -> dict[str, float]:
    """``{"folding_percent", "jacobian_min"}`` of an ``(H, W)`` Jacobian determinant map (:func:`jacobian_determinant`)."""
    return {"folding_percent": float(100.0 * np.mean(jacobian <= 0)), "jacobian_min": float(jacobian.min())}


def endpoint_error(flow: np.ndarray, true_flow: np.ndarray, margin: int = 0) -> float:
    """Mean Euclidean distance in pixels between two ``(2, H, W)`` fields.

    ``margin`` pixels at each border are left out (there the content that would decide the
    answer may lie outside the image).
    """
    flow, true_flow = np.asarray(flow, np.float64), np.asarray(true_flow, np.float64)
    if flow.shape != true_flow.shape:
        raise ValueError(f"fields differ in shape: {flow.shape} and {true_flow.shape}")
    h, w = flow.shape[1:]
    if margin:
        if 2 * margin >= min(h, w):
            raise ValueError(f"margin {margin} leaves nothing of a {h}x{w} field")
        flow = flow[:, margin : h - margin, margin : w - margin]
        true_flow = true_flow[:, margin : h - margin, margin : w - margin]
    return float(np.mean(np.sqrt(((flow - true_flow) ** 2).sum(axis=0))))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks, in [0, 1] (1 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    """Dice of each nonzero label of two ``(H, W)`` integer label maps (0 is background), in one
    pass over the pixels: ``{label: dice}`` for every label present in ``a`` or ``b`` (0 for a
    label present in only one), in increasing order."""
    a, b = np.asarray(a, np.int64).ravel(), np.asarray(b, np.int64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in size: {a.size} and {b.size} pixels")
    if a.size and min(a.min(), b.min()) < 0:
        raise ValueError("labels must be >= 0")
    n = int(max(a.max(initial=0), b.max(initial=0))) + 1
    size_a, size_b = np.bincount(a, minlength=n), np.bincount(b, minlength=n)
    both = np.bincount(a[a == b], minlength=n)
    present = np.flatnonzero(size_a + size_b)
    return {int(k): float(2.0 * both[k] / (size_a[k] + size_b[k])) for k in present if k != 0}


def displacement_stats(flow: np.ndarray, spacing: tuple[float, float] | None = None) -> dict[str, float]:
    """Length of a ``(2, H, W)`` pixel field's vectors: ``{"mean_px", "max_px"}``, plus ``"mean_mm"``
    and ``"max_mm"`` when ``spacing`` (millimetres per pixel, rows and columns) is given."""
    flow = np.asarray(flow, np.float64)
    length = np.hypot(flow[0], flow[1])
    stats = {"mean_px": float(length.mean()), "max_px": float(length.max())}
    if spacing is not None:
        length = np.hypot(flow[0] * spacing[0], flow[1] * spacing[1])
        stats |= {"mean_mm": float(length.mean()), "max_mm": float(length.max())}
    return stats
