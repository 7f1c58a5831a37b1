"""Noise estimation and the optimisation's pre-smoothing of noisy images (regcore.noise)."""

import numpy as np
import pytest
import torch

import regcore
from regcore.data import load_photo, photo_pairs
from regcore.errors import RegcoreError
from regcore.metrics import endpoint_error
from regcore.noise import NOISY_ABOVE, noise_std


def _t(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image)[None, None]


def _noisy(image: np.ndarray, std: float, seed: int) -> np.ndarray:
    return np.clip(image + np.random.default_rng(seed).normal(0.0, std, image.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("name", ["camera", "grass", "gravel"])
def test_clean_photographs_are_not_noisy_even_when_finely_textured(name):
    # grass and gravel look like noise to a one-scale estimate (about 0.03); the two-scale one sees texture.
    assert noise_std(_t(load_photo(name, 128))) < NOISY_ABOVE / 2


@pytest.mark.parametrize("std", [0.02, 0.05])
def test_added_white_noise_is_measured(std):
    photo = load_photo("camera", 256)
    assert noise_std(_t(_noisy(photo, std, 0))) == pytest.approx(std, rel=0.15)


def test_noisy_pairs_are_smoothed_for_the_refinement_and_registered_better():
    pairs = photo_pairs(128, 8.0, seed=31, names=("camera", "coins", "coffee"))
    auto, off = [], []
    for i in range(3):
        source, target = _noisy(pairs.source[i, 0].numpy(), 0.03, 2 * i), _noisy(pairs.target[i, 0].numpy(), 0.03, 2 * i + 1)
        smoothed = regcore.register(source, target, method="net+refine")
        plain = regcore.register(source, target, method="net+refine", presmooth="off")
        assert any("look noisy" in n for n in smoothed.notes) and not any("look noisy" in n for n in plain.notes)
        assert np.array_equal(smoothed.source, source)  # warped and scores use the images as given
        auto.append(endpoint_error(smoothed.flow, pairs.flow[i].numpy(), 12))
        off.append(endpoint_error(plain.flow, pairs.flow[i].numpy(), 12))
    assert np.mean(auto) < 0.95 * np.mean(off)  # 0.59 vs 0.67 px when written


def test_clean_pairs_are_registered_as_they_are():
    pairs = photo_pairs(96, 6.0, seed=32, names=("camera",))
    source, target = pairs.source[0, 0].numpy(), pairs.target[0, 0].numpy()
    auto = regcore.register(source, target, method="net+refine", refine_steps=5)
    assert not any("look noisy" in n for n in auto.notes)
    assert np.array_equal(auto.flow, regcore.register(source, target, method="net+refine", refine_steps=5, presmooth="off").flow)
    assert not np.array_equal(auto.flow, regcore.register(source, target, method="net+refine", refine_steps=5, presmooth="on").flow)


def test_unknown_presmooth_is_refused(photo):
    with pytest.raises(RegcoreError, match="presmooth must be one of auto, on, off"):
        regcore.register(photo, photo, presmooth="yes")
