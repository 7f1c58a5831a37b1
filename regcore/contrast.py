"""A change of contrast between source and target, undone before the field is looked for.

Local normalisation (:mod:`regcore.polish`) makes an affine change of intensity inside each small
window invisible, but a steep non-linear one (a sigmoid, a gamma of 2) bends a window's intensities
in ways no affine map undoes. When the two images' intensity distributions clearly differ, the
target's intensities are mapped onto the source's (histogram matching: the target's ``q``-quantile
becomes the source's ``q``-quantile, linearly between :data:`PIECES` + 1 quantiles). Deformation
barely changes a distribution, contrast changes it a lot (measured on the tuning pairs: the mean
quantile difference :func:`histogram_distance` is at most 0.050 for pairs of one contrast,
whatever their motion, and 0.049-0.24 for gamma or sigmoid contrast), so pairs under
:data:`DIFFERENT_ABOVE` are left exactly as they are.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DIFFERENT_ABOVE", "PIECES", "histogram_distance", "match_histogram"]

#: Linear pieces of the mapping from the target's intensities to the source's.
PIECES = 16
#: :func:`histogram_distance` above which a pair's contrast is taken as changed. Above the largest
#: of any pair of one contrast on the tuning pairs (0.050, objects moving over a background),
#: below most contrast-changed ones.
DIFFERENT_ABOVE = 0.055
#: Quantiles :func:`histogram_distance` compares (the extremes left out: a few pixels move them).
_LEVELS = np.linspace(0.02, 0.98, 25)
#: Bins of the intensity histogram the quantiles are read from (a sort of every pixel took 3 ms at 256²).
_BINS = 1024


def _quantiles(image: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``image``'s quantiles at ``levels`` (in [0, 1]), read from a :data:`_BINS`-bin histogram over
    [0, 1], linear inside a bin: within 1 / _BINS of the exact ones."""
    counts = np.bincount(np.clip((image.ravel() * _BINS).astype(np.intp), 0, _BINS - 1), minlength=_BINS)
    cumulative = np.concatenate(([0.0], np.cumsum(counts) / image.size))
    return np.interp(levels, cumulative, np.linspace(0.0, 1.0, _BINS + 1))


def histogram_distance(source: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute difference (intensity, images in [0, 1]) between the 2%, 6%, ..., 98% quantiles of two ``(H, W)`` images."""
    return float(np.abs(_quantiles(source, _LEVELS) - _quantiles(target, _LEVELS)).mean())


def match_histogram(image: np.ndarray, reference: np.ndarray, pieces: int = PIECES) -> np.ndarray:
    """``image`` ``(H, W)`` with its intensities mapped onto ``reference``'s distribution: float32, same shape.

    A monotone, piecewise-linear map through ``pieces + 1`` matching quantiles (0, 1/pieces, ..., 1):
    smooth, so it adds no steps of its own to the image; where the image has many equal pixels
    (a saturated region), their quantiles are one point, mapped to the mean of the reference's.
    """
    levels = np.linspace(0.0, 1.0, pieces + 1)
    ours, theirs = np.quantile(image, levels), np.quantile(reference, levels)
    points, which = np.unique(ours, return_inverse=True)
    if points.size < 2:
        return image.astype(np.float32)
    values = np.bincount(which, theirs) / np.bincount(which)
    return np.interp(image, points, values).astype(np.float32)
