"""The classical methods of regcore.classical: regcore's field convention (sign and channel order),
directly and through register(method=...)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import regcore
from regcore import classical
from regcore.metrics import endpoint_error
from regcore.pipeline import METHODS
from regcore.warp import warp

SHIFT = (2.0, -3.0)  # +2 rows, -3 columns: a sign or channel mix-up gives (-2, 3), (-3, 2) or (3, -2)
INNER = (slice(None), slice(16, -16), slice(16, -16))
FUNCTIONS = {
    "tvl1": classical.tvl1_flow,
    "ilk": classical.ilk_flow,
    "dis": classical.dis_flow,
    "dis-fast": lambda s, t: classical.dis_flow(s, t, preset="fast"),
    "dis-fine": lambda s, t: classical.dis_flow(s, t, preset="fine"),
    "farneback": classical.farneback_flow,
}
CLASSICAL = [name for name, method in METHODS.items() if not method.network and method.default_steps is None]


def _shifted(photo: np.ndarray) -> np.ndarray:
    flow = np.zeros((2, *photo.shape), np.float32)
    flow[0], flow[1] = SHIFT
    return warp(torch.from_numpy(photo)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()


def _assert_recovers_the_shift(flow: np.ndarray, shape: tuple[int, int]) -> None:
    assert flow.shape == (2, *shape) and flow.dtype == np.float32
    median = np.median(flow[INNER], axis=(1, 2))
    np.testing.assert_allclose(median, SHIFT, atol=0.25)


def test_every_classical_method_of_register_is_tested_here():
    assert sorted(CLASSICAL) == sorted(FUNCTIONS)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_classical_flow_recovers_a_translation_in_regcore_convention(photo, name):
    _assert_recovers_the_shift(FUNCTIONS[name](photo, _shifted(photo)), photo.shape)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_register_runs_each_classical_method(photo, name, no_checkpoints):
    target = _shifted(photo)
    result = regcore.register(photo, target, method=name)
    assert result.method == name and result.model is None
    _assert_recovers_the_shift(result.flow, photo.shape)
    # register()'s warped image is the source warped by its field, and it matches the target.
    assert result.after["mse"] < 0.2 * result.before["mse"]
    # The same field as the function on the same pixels (register() only adds the pipeline around it).
    assert endpoint_error(result.flow, FUNCTIONS[name](photo, target)) < 1e-4


def test_dis_accepts_the_smallest_images_register_does(no_checkpoints):
    image = np.random.default_rng(0).random((regcore.api.MIN_SIDE, regcore.api.MIN_SIDE)).astype(np.float32)
    for name in ("dis", "dis-fine"):
        result = regcore.register(image, image, method=name)
        assert result.flow.shape == (2, *image.shape) and np.isfinite(result.flow).all()


def test_unknown_dis_preset_is_refused(photo):
    with pytest.raises(ValueError, match="unknown DIS preset"):
        classical.dis_flow(photo, photo, preset="slow")
