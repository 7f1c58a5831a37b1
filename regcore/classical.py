"""Classical (non-learned) optical-flow methods that the product offers, in regcore's field convention.

Each function takes ``source`` and ``target``, ``(H, W)`` float images in [0, 1], and returns
``flow``, ``(2, H, W)`` float32 in pixels (channel 0 rows, channel 1 columns) with the backward
warp ``warp(source, flow) ≈ target``, i.e. ``target[y, x] ≈ source[y + flow[0], x + flow[1]]``.
Each docstring says how the library's own output is converted; ``tests/test_classical.py``
checks every one on a known translation (sign and channel order).

They are also methods of :func:`regcore.register` (``method="tvl1"``, ``"ilk"``, ``"dis"``,
``"dis-fast"``, ``"dis-fine"``, ``"farneback"``), which the app's Compare tab, the CLI and the
benchmark call. Heavier peers used only for benchmarking (dipy SyN, SimpleITK demons) live in
``benchmarks/``, not here.

OpenCV's methods work on 8-bit images: the inputs are rounded to 256 gray levels first.
"""

from __future__ import annotations

import numpy as np

from .io import to_uint8

__all__ = ["DIS_MIN_SIDE", "DIS_PRESETS", "FARNEBACK", "dis_flow", "farneback_flow", "ilk_flow", "tvl1_flow"]

#: ``dis_flow`` presets: OpenCV's ``FAST`` and ``MEDIUM``, and ``"fine"``: ``MEDIUM`` down to the
#: finest scale (full resolution) with 10 variational refinement iterations per scale.
DIS_PRESETS = ("fast", "medium", "fine")

#: ``cv2.calcOpticalFlowFarneback`` parameters: OpenCV's documented typical values (pyramid scale
#: 0.5, 3 levels, 15 px averaging window, 3 iterations per level, 5 px polynomial neighbourhood
#: with Gaussian std 1.2, box window).
#: OpenCV's DIS refuses images whose longer side is under this (pixels); smaller ones are padded.
DIS_MIN_SIDE = 12

FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2, "flags": 0}


def tvl1_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """scikit-image ``optical_flow_tvl1`` (default parameters), in regcore's convention.

    ``optical_flow_tvl1(reference, moving)`` returns ``(2, H, W)`` ``(v_row, v_col)`` with
    ``reference[y, x] ≈ moving[y + v_row, x + v_col]``: regcore's backward warp with
    ``reference = target`` and ``moving = source``. No conversion beyond the argument order.
    """
    from skimage.registration import optical_flow_tvl1

    return optical_flow_tvl1(target, source).astype(np.float32)


def ilk_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """scikit-image ``optical_flow_ilk`` (iterative Lucas–Kanade, default radius 7): same convention as :func:`tvl1_flow`."""
    from skimage.registration import optical_flow_ilk

    return optical_flow_ilk(target, source).astype(np.float32)


def _from_opencv(flow: np.ndarray) -> np.ndarray:
    """OpenCV's ``(H, W, 2)`` field, ``[..., 0]`` = dx (columns), ``[..., 1]`` = dy (rows) -> regcore's ``(2, H, W)`` (rows first)."""
    return np.ascontiguousarray(np.stack([flow[..., 1], flow[..., 0]]), np.float32)


def dis_flow(source: np.ndarray, target: np.ndarray, preset: str = "medium") -> np.ndarray:
    """OpenCV's DIS optical flow (Kroeger et al., 2016, dense inverse search), in regcore's convention.

    ``dis.calc(prev, next, None)`` returns ``f`` with ``prev[y, x] ≈ next[y + f[..., 1], x + f[..., 0]]``:
    regcore's backward warp with ``prev = target`` and ``next = source``, channels swapped.

    Args:
        preset: ``"fast"`` or ``"medium"`` (OpenCV's presets), or ``"fine"`` (see :data:`DIS_PRESETS`).
    Images whose sides are both under :data:`DIS_MIN_SIDE` are padded (edges repeated) for DIS
    and the field cropped back.
    """
    import cv2

    if preset not in DIS_PRESETS:
        raise ValueError(f"unknown DIS preset {preset!r}; choose one of {', '.join(DIS_PRESETS)}")
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST if preset == "fast" else cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    if preset == "fine":
        dis.setFinestScale(0)
        dis.setVariationalRefinementIterations(10)
    h, w = source.shape
    pad = ((0, max(0, DIS_MIN_SIDE - h)), (0, max(0, DIS_MIN_SIDE - w))) if max(h, w) < DIS_MIN_SIDE else ((0, 0), (0, 0))
    prev, nxt = (np.pad(to_uint8(image), pad, mode="edge") for image in (target, source))
    return _from_opencv(dis.calc(prev, nxt, None)[:h, :w])


def farneback_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV's Farnebäck optical flow (polynomial expansion; parameters :data:`FARNEBACK`), in regcore's convention.

    ``calcOpticalFlowFarneback(prev, next, ...)`` has the same convention as DIS (:func:`dis_flow`).
    """
    import cv2

    flow = cv2.calcOpticalFlowFarneback(to_uint8(target), to_uint8(source), None, **FARNEBACK)
    return _from_opencv(flow)
