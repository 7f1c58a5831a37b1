"""The patch search (regcore.patches) and the "net+patches" method built on it."""

import numpy as np
import pytest
import torch
from scipy import ndimage

import regcore
from regcore.boundaries import sharpen_boundaries
from regcore.data import load_photo
from regcore.patches import fuse_with_patches, patch_search, search_level
from regcore.polish import polish
from regcore.variational import refine_near_boundaries
from regcore.warp import warp

SIZE = 128


def _object_pair(side: int, motion: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``coffee`` as a ``side``-px square moving by ``motion`` (rows, columns) over a still ``camera``:
    source, target, true field, and the object's and the background's cores (4 px from any boundary
    or occlusion, 12 px from the image's border)."""
    background = torch.from_numpy(load_photo("camera", SIZE))[None, None]
    thing = torch.from_numpy(load_photo("coffee", SIZE))[None, None]
    mask = torch.zeros(1, 1, SIZE, SIZE)
    corner = (SIZE - side) // 2
    mask[..., corner : corner + side, corner : corner + side] = 1.0
    field = torch.zeros(1, 2, SIZE, SIZE)
    field[:, 0], field[:, 1] = motion
    seen = warp(mask, field)
    source, target = mask * thing + (1 - mask) * background, seen * warp(thing, field) + (1 - seen) * background
    true = torch.where(seen > 0.5, field, torch.zeros_like(field))
    core = torch.from_numpy(ndimage.binary_erosion(seen[0, 0].numpy() > 0.5, iterations=4))
    still = ndimage.binary_erosion(((seen[0, 0] < 0.5) & (mask[0, 0] < 0.5)).numpy(), iterations=4)
    still[:12], still[-12:], still[:, :12], still[:, -12:] = False, False, False, False
    return source, target, true, core, torch.from_numpy(still)


def _errors(flow: torch.Tensor, true: torch.Tensor, *regions: torch.Tensor) -> list[float]:
    error = (flow - true)[0].norm(dim=0)
    return [float(error[region].mean()) for region in regions]


def test_a_known_shift_is_recovered_from_zero():
    source = torch.from_numpy(load_photo("camera", SIZE))[None, None]
    true = torch.zeros(1, 2, SIZE, SIZE)
    true[:, 0], true[:, 1] = 3.5, -6.0
    flow = patch_search(source, warp(source, true))
    assert flow.shape == (1, 2, SIZE, SIZE)
    assert float((flow - true)[..., 16:-16, 16:-16].norm(dim=1).mean()) < 0.05  # the zero field is 6.9 px off


@pytest.mark.parametrize(("side", "motion"), [(48, (6.0, -12.0)), (40, (0.0, 14.0))])
def test_an_object_and_its_background_each_keep_their_own_motion(side, motion):
    """Where the Lucas–Kanade pyramid (from the same zero start) and the network blend the two motions."""
    source, target, true, core, still = _object_pair(side, motion)
    searched = _errors(patch_search(source, target), true, core, still)
    assert max(searched) < 0.5
    pyramid = _errors(polish(source, target, None), true, core, still)
    network = _errors(torch.from_numpy(regcore.register(source[0, 0].numpy(), target[0, 0].numpy(), method="net").flow)[None], true, core)
    assert sum(pyramid) > 2 * sum(searched) and network[0] > 2 * searched[0]


def test_a_batch_is_searched_as_its_pairs_are_one_by_one():
    source, target, *_ = _object_pair(48, (6.0, -12.0))
    other = torch.from_numpy(load_photo("moon", SIZE))[None, None]
    shifted = torch.roll(other, 3, dims=-1)
    batch = patch_search(torch.cat((source, other)), torch.cat((target, shifted)))
    torch.testing.assert_close(batch[:1], patch_search(source, target))
    torch.testing.assert_close(batch[1:], patch_search(other, shifted))


def test_a_level_keeps_a_flat_pair_still():
    flat = torch.full((1, 1, 32, 32), 0.5)
    assert torch.equal(search_level(flat, flat, torch.zeros(1, 2, 32, 32)), torch.zeros(1, 2, 32, 32))


def test_net_patches_beats_net_on_an_object_over_a_background():
    source, target, true, core, still = _object_pair(40, (0.0, 14.0))
    pair = (source[0, 0].numpy(), target[0, 0].numpy())
    result = regcore.register(*pair, method="net+patches")
    assert result.method == "net+patches" and result.flow.shape == (2, SIZE, SIZE) and np.isfinite(result.flow).all()
    net = regcore.register(*pair, method="net")
    fused = _errors(torch.from_numpy(result.flow)[None], true, core, still)
    assert sum(fused) < 0.5 * sum(_errors(torch.from_numpy(net.flow)[None], true, core, still))


def test_register_runs_the_search_beside_the_pyramid_and_fuses_as_fuse_with_patches_does():
    """The search runs on another thread in register(); the field is the one the same steps give one after the other
    (at 128² "net"'s pyramid is the one under the patches: it has no 16 px level to leave out), its motion
    boundaries then sharpened and refined."""
    source, target, *_ = _object_pair(40, (0.0, 14.0))
    pair = (source[0, 0].numpy(), target[0, 0].numpy())
    polished = torch.from_numpy(regcore.register(*pair, method="net").flow)[None]
    expected = refine_near_boundaries(source, target, sharpen_boundaries(source, target, fuse_with_patches(source, target, polished)))
    np.testing.assert_allclose(regcore.register(*pair).flow, expected[0].numpy(), atol=1e-5)
