"""Changes of contrast undone before the search (regcore.contrast) and where register() does it."""

import numpy as np
import torch

import regcore
from regcore.contrast import DIFFERENT_ABOVE, histogram_distance, match_histogram
from regcore.data import load_photo, random_fields
from regcore.warp import warp

SIZE = 128


def _pair(contrast) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    source = load_photo("camera", SIZE)
    flow = random_fields(1, (SIZE, SIZE), 6.0, torch.Generator().manual_seed(3))
    moved = warp(torch.from_numpy(source)[None, None], flow)[0, 0].numpy()
    return source, contrast(moved).astype(np.float32), flow[0].numpy()


def _sigmoid(image: np.ndarray) -> np.ndarray:
    lo, hi = 1 / (1 + np.exp(4.0)), 1 / (1 + np.exp(-4.0))
    return (1 / (1 + np.exp(-8 * (image - 0.5))) - lo) / (hi - lo)


def test_matching_undoes_a_monotone_change_of_contrast():
    image = load_photo("camera", SIZE)
    matched = match_histogram(image**2, image)
    assert matched.dtype == np.float32 and matched.shape == image.shape
    assert np.abs(matched - image).mean() < 0.01 < np.abs(image**2 - image).mean() / 10
    order = np.argsort(image.ravel())
    assert np.all(np.diff(matched.ravel()[order]) >= -1e-6)  # monotone: no intensity order is changed


def test_a_constant_image_is_returned_as_it_is():
    flat = np.full((8, 8), 0.3, np.float32)
    np.testing.assert_array_equal(match_histogram(flat, load_photo("camera", 8)), flat)


def test_motion_leaves_the_distribution_and_contrast_changes_it():
    source, same, _ = _pair(lambda t: t)
    assert histogram_distance(source, same) < 0.01
    assert histogram_distance(source, _pair(_sigmoid)[1]) > DIFFERENT_ABOVE
    assert histogram_distance(source, _pair(np.square)[1]) > DIFFERENT_ABOVE


def test_register_matches_a_sigmoid_contrast_and_is_more_accurate_for_it():
    source, target, flow = _pair(_sigmoid)
    auto = regcore.register(source, target)
    keep = regcore.register(source, target, polarity="keep")
    assert any("intensity distributions differ" in note for note in auto.notes)
    assert not any("intensity distributions differ" in note for note in keep.notes)

    def error(result: regcore.RegistrationResult) -> float:
        return float(np.linalg.norm(result.flow - flow, axis=0)[16:-16, 16:-16].mean())

    assert error(auto) < 0.85 * error(keep)  # measured: 0.086 px against 0.123
    # The scores compare with the target as given.
    np.testing.assert_allclose(auto.target, keep.target)


def test_register_leaves_a_pair_of_one_contrast_as_it_is():
    source, target, _ = _pair(lambda t: t)
    assert not any("distributions" in note for note in regcore.register(source, target).notes)
