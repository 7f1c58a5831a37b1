"""Sharpening motion boundaries (regcore.boundaries) and its place in the default method."""

import numpy as np
import pytest
import torch
from scipy import ndimage

import regcore
from regcore.boundaries import STEEP, near_steep, sharpen_boundaries
from regcore.data import affine_fields, load_photo
from regcore.filters import box_mean
from regcore.warp import warp

SIZE = 128


def disc_pair(shift: float = 10.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A textured disc (``coffee``) moving ``shift`` px to the right over a still ``camera``:
    source, target, the true field and the disc's outline band (6 px either side of its edge in the target)."""
    background = torch.from_numpy(load_photo("camera", SIZE))[None, None]
    thing = torch.from_numpy(load_photo("coffee", SIZE))[None, None]
    rows, cols = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij")
    radius = ((rows - SIZE / 2) ** 2 + (cols - SIZE / 2) ** 2).sqrt()
    mask = (radius < 30).float()[None, None]
    field = torch.zeros(1, 2, SIZE, SIZE)
    field[:, 1] = -shift  # backward: the target shows the source from shift px to the left
    seen = warp(mask, field)
    source = mask * thing + (1 - mask) * background
    target = seen * warp(thing, field) + (1 - seen) * background
    true = torch.where(seen > 0.5, field, torch.zeros_like(field))
    moved = ((rows - SIZE / 2) ** 2 + (cols - shift - SIZE / 2) ** 2).sqrt()
    band = (moved - 30).abs() < 6
    return source, target, true, band


@pytest.mark.parametrize("shift", [6.0, 10.0])
def test_the_network_s_blurred_jump_is_sharpened_along_the_object_s_edge(shift):
    source, target, true, band = disc_pair(shift)
    net = torch.from_numpy(regcore.register(source[0, 0].numpy(), target[0, 0].numpy(), method="net").flow)[None]
    before = float((net - true)[0].norm(dim=0)[band].mean())
    after = float((sharpen_boundaries(source, target, net) - true)[0].norm(dim=0)[band].mean())
    assert before > 1.5 and after < 0.6 * before  # measured: 1.77 -> 0.88 px (6 px), 3.28 -> 1.56 px (10 px)


def test_smooth_motion_is_left_exactly_as_it_is():
    g = torch.Generator().manual_seed(0)
    source = torch.from_numpy(load_photo("camera", SIZE))[None, None]
    field = affine_fields(1, (SIZE, SIZE), 12.0, g)
    assert torch.equal(sharpen_boundaries(source, warp(source, field), field), field)


def test_a_flat_field_far_from_any_jump_is_untouched_and_a_batch_is_done_pair_by_pair():
    source, target, true, _ = disc_pair()
    blurred = box_mean(true, 9)
    still = torch.zeros_like(true)
    batch = sharpen_boundaries(torch.cat((source, source)), torch.cat((target, source)), torch.cat((blurred, still)))
    torch.testing.assert_close(batch[:1], sharpen_boundaries(source, target, blurred))
    assert torch.equal(batch[1:], still)
    assert np.isfinite(batch.numpy()).all()


@pytest.mark.parametrize("radius", [0, 3, 12])
def test_the_gate_is_within_reach_of_a_steep_slope(radius):
    flow = np.random.default_rng(radius).normal(0, 0.45, (2, 40, 57)).astype(np.float32)
    slope = np.zeros((40, 57), np.float32)
    for component in flow:
        across, down = np.zeros_like(slope), np.zeros_like(slope)
        across[:, 1:-1] = np.abs(component[:, 2:] - component[:, :-2]) / 2
        down[1:-1] = np.abs(component[2:] - component[:-2]) / 2
        slope = np.maximum(slope, np.maximum(across, down))
    expected = ndimage.maximum_filter(slope, size=2 * radius + 1, mode="nearest") >= STEEP
    assert 0.01 < (slope >= STEEP).mean() < 0.2  # sparse, so that the reach matters
    np.testing.assert_array_equal(near_steep(flow, radius, STEEP), expected)
