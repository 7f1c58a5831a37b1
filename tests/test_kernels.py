"""The compiled kernels (regcore.kernels) give what the PyTorch operations they mirror give."""

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regcore import kernels
from regcore.filters import box_mean
from regcore.polish import resample_flow
from regcore.warp import warp

SIZES = [(23, 31), (64, 64), (5, 40)]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w), dtype=np.float32)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("win", [3, 7, 15])
def test_box_mean_crops_windows_at_the_border_as_filters_box_mean_does(size, win):
    image = _image(*size)
    out = np.empty_like(image)
    kernels.box_mean(image, win, out)
    np.testing.assert_allclose(out, box_mean(torch.from_numpy(image)[None, None], win)[0, 0].numpy(), atol=2e-6)


@pytest.mark.parametrize("size", SIZES)
def test_warp_is_regcore_warp_with_edges_repeated(size):
    image = _image(*size)
    flow = 4 * np.random.default_rng(1).standard_normal((2, *size)).astype(np.float32)  # reaches past the borders
    out = np.empty_like(image)
    kernels.warp(image, flow, out)
    expected = warp(torch.from_numpy(image)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()
    np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize("size", SIZES)
def test_gradients_are_central_differences_with_edges_repeated(size):
    image = _image(*size)
    dy, dx = np.empty_like(image), np.empty_like(image)
    kernels.gradients(image, dy, dx)
    padded = np.pad(image, 1, mode="edge")
    np.testing.assert_allclose(dy, 0.5 * (padded[2:, 1:-1] - padded[:-2, 1:-1]), atol=1e-7)
    np.testing.assert_allclose(dx, 0.5 * (padded[1:-1, 2:] - padded[1:-1, :-2]), atol=1e-7)


def test_local_normalise_gives_each_window_zero_mean_and_unit_std():
    image = 0.2 + 0.5 * _image(40, 40)
    out = np.empty_like(image)
    kernels.local_normalise(image, 5, 0.0, out)
    window = image[18:23, 18:23]
    assert out[20, 20] == pytest.approx((image[20, 20] - window.mean()) / window.std(), rel=1e-3)
    changed = np.empty_like(image)
    kernels.local_normalise(3 * image + 0.1, 5, 0.0, changed)  # gain and offset do not change it
    np.testing.assert_allclose(changed, out, atol=1e-3)


@pytest.mark.parametrize("size", SIZES)
def test_pool_and_upsample_add_are_avg_pool2d_and_interpolate(size):
    x = np.random.default_rng(2).random((3, *size), dtype=np.float32)
    pooled = kernels.pool(x, 4)
    np.testing.assert_allclose(pooled, F.avg_pool2d(torch.from_numpy(x)[None], 4, ceil_mode=True)[0].numpy(), atol=1e-6)
    out = np.ones_like(x)
    kernels.upsample_add(pooled, 0.5, out)
    expected = 1 + 0.5 * F.interpolate(torch.from_numpy(pooled)[None], size=size, mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize(("size", "to"), [((23, 31), (46, 62)), ((64, 64), (16, 16)), ((5, 40), (9, 79))])
def test_resample_field_is_polish_resample_flow(size, to):
    flow = np.random.default_rng(3).normal(0, 3, (2, *size)).astype(np.float32)
    expected = resample_flow(torch.from_numpy(flow)[None], to)[0].numpy()
    np.testing.assert_allclose(kernels.resample_field(flow, to), expected, rtol=1e-5, atol=1e-4)
    assert kernels.resample_field(flow, size) is flow


def _twice(x: float) -> float:
    return 2.0 * x


def test_compiled_works_where_numba_finds_nowhere_to_cache(monkeypatch):
    """A read-only install with no writable home: numba refuses ``cache=True``; ``compiled`` compiles without it."""
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed across numba releases
    monkeypatch.setattr(impl, "_locator_classes", [])
    with pytest.raises(RuntimeError, match="no locator"):
        numba.njit(cache=True)(_twice)
    assert kernels.compiled(_twice)(1.5) == 3.0
