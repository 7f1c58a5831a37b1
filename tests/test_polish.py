"""The Lucas–Kanade polish of the network's field (regcore.polish): one step, and the pyramid."""

import numpy as np
import pytest
import torch

import regcore
from regcore.data import load_photo, photo_pairs
from regcore.errors import RegcoreError
from regcore.losses import box_mean
from regcore.metrics import endpoint_error
from regcore.polish import FUSE_LEVEL, NORM_EPS, downsample, fuse, local_normalise, lucas_kanade_step, polish, resample_flow
from regcore.warp import warp


def _shift_pair(dy: float, dx: float, size: int = 96) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    source = torch.from_numpy(load_photo("camera", size))[None, None]
    true = torch.zeros(1, 2, size, size)
    true[:, 0], true[:, 1] = dy, dx
    return source, warp(source, true), true[0].numpy()


@pytest.mark.parametrize("shift", [(0.4, -0.3), (-0.7, 0.5)])
def test_two_steps_from_zero_cut_a_subpixel_shift_error_by_more_than_half(shift):
    source, target, true = _shift_pair(*shift)
    flow = torch.zeros(1, 2, *source.shape[-2:])
    for _ in range(2):
        flow = lucas_kanade_step(source, target, flow)
    before = endpoint_error(np.zeros_like(true), true, margin=12)
    assert endpoint_error(flow[0].numpy(), true, margin=12) < 0.5 * before


def test_a_contrast_change_is_not_taken_for_motion():
    source, target, true = _shift_pair(0.4, -0.3)
    zero = torch.zeros(1, 2, *source.shape[-2:])
    same = lucas_kanade_step(source, target, zero)
    changed = lucas_kanade_step(source, (0.5 * target + 0.3) ** 1.5, zero)
    assert endpoint_error(changed[0].numpy(), true, margin=12) < 0.5 * endpoint_error(zero[0].numpy(), true, margin=12)
    assert endpoint_error(changed[0].numpy(), same[0].numpy(), margin=12) < 0.1


def test_flat_images_do_not_move_the_field():
    flat = torch.full((1, 1, 32, 32), 0.5)
    flow = torch.full((1, 2, 32, 32), 0.25)
    assert torch.equal(lucas_kanade_step(flat, flat, flow), flow)


def test_local_normalise_standardises_each_window_and_ignores_gain_and_offset():
    image = torch.from_numpy(load_photo("camera", 64))[None, None]
    out = local_normalise(image, win=11)
    window = image[0, 0, 27:38, 27:38].double()  # the 11 x 11 window around pixel (32, 32)
    expected = (image[0, 0, 32, 32] - window.mean()) / (window.var(unbiased=False) + NORM_EPS).sqrt()
    assert float(out[0, 0, 32, 32]) == pytest.approx(float(expected), rel=1e-4)
    mean, mean_sq = box_mean(torch.cat((image, image * image), dim=1), 11).split(1, dim=1)
    textured = mean_sq - mean * mean > 0.01  # local std > 0.1, where eps is negligible even at half the gain
    assert textured.float().mean() > 0.1
    torch.testing.assert_close(local_normalise(0.5 * image + 0.3, win=11)[textured], out[textured], atol=0.03, rtol=0.03)


@pytest.mark.parametrize("size", [128, 256])  # the network at full and at half resolution
def test_register_net_is_polished_by_default_and_better_for_it(size):
    pairs = photo_pairs(size, size / 16, seed=41, names=("camera", "brick", "coffee"))
    polished, raw = [], []
    for i in range(3):
        source, target, true = pairs.source[i, 0].numpy(), pairs.target[i, 0].numpy(), pairs.flow[i].numpy()
        polished.append(endpoint_error(regcore.register(source, target, method="net").flow, true, size // 10))
        raw.append(endpoint_error(regcore.register(source, target, method="net", polish=False).flow, true, size // 10))
    assert np.mean(polished) < 0.7 * np.mean(raw)


def test_polish_must_be_a_bool(photo):
    with pytest.raises(RegcoreError, match="polish must be True or False"):
        regcore.register(photo, photo, method="net", polish="yes")


@pytest.mark.parametrize("shift", [(9.0, -6.5), (-14.0, 11.0)])
def test_the_pyramid_recovers_a_shift_far_beyond_one_window_from_zero(shift):
    source, target, true = _shift_pair(*shift, size=128)
    flow = polish(source, target, None)
    assert flow.shape == (1, 2, 128, 128)
    assert endpoint_error(flow[0].numpy(), true, margin=24) < 0.2  # the zero field is 11-18 px off


def test_the_pyramid_ignores_a_contrast_change():
    source, target, true = _shift_pair(5.0, 3.0, size=128)
    flow = polish(source, (0.6 * target + 0.2) ** 2.0, None)
    assert endpoint_error(flow[0].numpy(), true, margin=24) < 0.3  # the zero field is 5.8 px off


def test_the_pyramid_leaves_flat_images_alone():
    flat = torch.full((1, 1, 64, 64), 0.5)
    assert torch.equal(polish(flat, flat, None), torch.zeros(1, 2, 64, 64))


def test_fields_move_between_levels_as_block_averages_place_pixels():
    """A field that is a linear function of position stays the same function, in fine pixels, after a trip
    down and up the pyramid: the pixel centres of a block-averaged level are where ``resample_flow`` puts them."""
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    fine = torch.stack((0.05 * rows + 1.0, -0.03 * cols))[None]
    coarse = downsample(fine, 4) / 4  # the same motion, in the coarse level's pixels
    torch.testing.assert_close(resample_flow(coarse, (64, 64))[..., 4:-4, 4:-4], fine[..., 4:-4, 4:-4], atol=1e-4, rtol=0)


def _halves() -> tuple[torch.Tensor, ...]:
    """``camera``'s target moves 3 px right in its left half and 3 px left in its right half: source,
    target, true field, and the two candidates (each half's motion everywhere)."""
    source = torch.from_numpy(load_photo("camera", 96))[None, None]
    true = torch.zeros(1, 2, 96, 96)
    true[:, 1, :, :48], true[:, 1, :, 48:] = 3.0, -3.0
    left, right = torch.zeros_like(true), torch.zeros_like(true)
    left[:, 1], right[:, 1] = 3.0, -3.0
    return source, warp(source, true), true, left, right


def test_fuse_takes_at_each_pixel_the_field_that_fits_there():
    source, target, true, left, right = _halves()
    fused = fuse(source, target, (left, right))
    assert fused.shape == true.shape
    away = torch.ones(96, 96, dtype=torch.bool)
    away[:, 40:56] = False  # the seam, where windows straddle both motions
    away[:8], away[-8:], away[:, :8], away[:, -8:] = False, False, False, False
    right_answer = (fused[0] == true[0]).all(dim=0)
    assert right_answer[away].float().mean() > 0.95


def test_a_softened_fuse_goes_from_one_field_to_the_other_over_a_few_pixels():
    """Softened over 9 px, the choice is the hard one away from the seam, and the field crosses the seam
    in steps (no column jumps by the whole 6 px), where the hard choice jumps at once."""
    source, target, _, left, right = _halves()
    hard, soft = fuse(source, target, (left, right)), fuse(source, target, (left, right), soften=9)
    middle = slice(24, 72)  # rows away from the top and bottom borders
    for away in (slice(16, 32), slice(64, 80)):
        assert torch.equal(soft[..., middle, away], hard[..., middle, away])
    hard_jumps, soft_jumps = (field[0, 1, middle].diff(dim=-1).abs().amax(dim=-1) for field in (hard, soft))
    assert float(hard_jumps.median()) == 6.0 and float(soft_jumps.max()) < 3.0


def test_fuse_keeps_the_first_field_where_another_fits_no_better():
    source, target, true = _shift_pair(2.0, -1.0)
    first, second = torch.from_numpy(true)[None], torch.from_numpy(true)[None] + 0.05
    assert torch.equal(fuse(source, target, (first, second)), first)


def test_the_pyramid_replaces_a_start_that_got_an_object_wrong():
    """A 48 px object moves 6 px over a still background; the start has it moving 10 px the other way (as
    a network can match the wrong object or the wrong repeat of a texture). Lucas–Kanade from the start
    stays near it; the zero-start hypothesis, fused in at FUSE_LEVEL, finds the object's motion."""
    size = 128
    background = torch.from_numpy(load_photo("camera", size))[None, None]
    thing = torch.from_numpy(load_photo("coffee", size))[None, None]
    mask = torch.zeros(1, 1, size, size)
    mask[..., 40:88, 40:88] = 1.0
    motion = torch.zeros(1, 2, size, size)
    motion[:, 1] = 6.0
    seen = warp(mask, motion)
    source, target = mask * thing + (1 - mask) * background, seen * warp(thing, motion) + (1 - seen) * background
    true = torch.where(seen > 0.5, motion, torch.zeros_like(motion))
    start = torch.where(seen > 0.5, -10.0 * (motion > 0), torch.zeros_like(motion))
    inside = seen[0, 0] > 0.99
    errors = {
        level: float((polish(source, target, start, fuse_level=level) - true)[0].norm(dim=0)[inside].mean()) for level in (None, FUSE_LEVEL)
    }
    assert errors[FUSE_LEVEL] < 1.0 and errors[FUSE_LEVEL] < 0.5 * errors[None]


def test_a_batch_is_polished_as_its_pairs_are_one_by_one():
    """The zero-start hypothesis rides in the same batch as the start's until it is fused: pairs must not mix."""
    first, target_first, _ = _shift_pair(3.0, -2.0, size=128)
    second = torch.from_numpy(load_photo("moon", 128))[None, None]
    target_second = torch.roll(second, 5, dims=-2)
    starts = torch.randn(2, 2, 8, 8)
    batch = polish(torch.cat((first, second)), torch.cat((target_first, target_second)), starts)
    torch.testing.assert_close(batch[:1], polish(first, target_first, starts[:1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(batch[1:], polish(second, target_second, starts[1:]), atol=1e-4, rtol=0)
