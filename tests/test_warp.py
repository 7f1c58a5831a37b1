import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from regcore.data import random_fields, smooth_noise
from regcore.warp import SpatialTransformer, VecInt, compose, identity_grid, resize_flow, warp


def test_zero_flow_is_identity():
    image = torch.rand(2, 3, 17, 23)
    assert torch.allclose(warp(image, torch.zeros(2, 2, 17, 23)), image, atol=1e-6)


def test_matches_map_coordinates_on_smooth_fields():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 1, 48, 64, generator=g)
    flow = smooth_noise(1, 2, (48, 64), 4, g) * 3.0
    ours = warp(image, flow, padding_mode="zeros")[0, 0].numpy()
    coords = identity_grid((48, 64)).numpy() + flow[0].numpy()
    ref = map_coordinates(image[0, 0].numpy().astype(np.float64), coords, order=1, mode="constant", cval=0.0)
    inside = (coords[0] >= 0) & (coords[0] <= 47) & (coords[1] >= 0) & (coords[1] <= 63)
    inside[:6], inside[-6:], inside[:, :6], inside[:, -6:] = False, False, False, False
    assert inside.sum() > 1000
    assert np.abs(ours - ref)[inside].max() < 1e-4


def test_integer_shift_moves_pixels_exactly():
    image = torch.arange(100.0).view(1, 1, 10, 10)
    flow = torch.zeros(1, 2, 10, 10)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # warped[y, x] = image[y + 2, x - 1]
    out = warp(image, flow)
    assert out[0, 0, 3, 5] == image[0, 0, 5, 4]


def test_layer_equals_function_and_gradients_flow():
    image = torch.rand(1, 1, 12, 12, requires_grad=True)
    flow = (torch.rand(1, 2, 12, 12) - 0.5).requires_grad_()
    out = SpatialTransformer()(image, flow)
    assert torch.equal(out, warp(image, flow))
    out.square().sum().backward()
    assert image.grad.abs().sum() > 0 and flow.grad.abs().sum() > 0


def test_compose_equals_two_warps():
    g = torch.Generator().manual_seed(2)
    image = smooth_noise(1, 1, (64, 64), 6, g)
    a = smooth_noise(1, 2, (64, 64), 3, g) * 2
    b = smooth_noise(1, 2, (64, 64), 3, g) * 2
    twice = warp(warp(image, a), b)
    once = warp(image, compose(a, b))
    assert (twice - once)[..., 8:-8, 8:-8].abs().max() < 0.05


def test_vecint_of_constant_velocity_is_that_translation():
    v = torch.zeros(1, 2, 32, 32)
    v[:, 0], v[:, 1] = 1.5, -0.5
    assert torch.allclose(VecInt(7)(v), v, atol=1e-5)


def test_integrated_fields_do_not_fold():
    from regcore.metrics import folding_percent

    flows = random_fields(4, (64, 64), 10.0, torch.Generator().manual_seed(3))
    assert max(folding_percent(f.numpy()) for f in flows) == 0.0


def test_resize_flow_scales_vectors():
    flow = torch.ones(1, 2, 9, 9)
    out = resize_flow(flow, (17, 17))
    assert out.shape == (1, 2, 17, 17)
    assert torch.allclose(out, torch.full_like(out, 2.0))


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="differ in size"):
        warp(torch.rand(1, 1, 8, 8), torch.zeros(1, 2, 8, 9))
