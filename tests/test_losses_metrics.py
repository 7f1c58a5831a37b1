import numpy as np
import pytest
import torch

from regcore.losses import MSE, NCC, BendingEnergy, GlobalNCC, Grad, box_mean, global_ncc, local_ncc_map, make_similarity
from regcore.metrics import dice, endpoint_error, folding_percent, jacobian_determinant, local_ncc, mse, ncc


def test_ncc_of_image_with_itself_is_one(photo):
    x = torch.from_numpy(photo)[None, None]
    assert torch.allclose(local_ncc_map(x, x), torch.ones_like(x), atol=1e-5)
    assert NCC()(x, x).item() == pytest.approx(-1.0, abs=1e-5)
    assert local_ncc(photo, photo) == pytest.approx(1.0, abs=1e-5)
    assert ncc(photo, photo) == pytest.approx(1.0, abs=1e-6)


def test_ncc_invariant_to_affine_intensity_change(photo):
    changed = 0.5 * photo + 0.2
    assert local_ncc(photo, changed) == pytest.approx(1.0, abs=1e-3)
    assert ncc(photo, changed) == pytest.approx(1.0, abs=1e-6)
    assert ncc(photo, 1 - photo) == pytest.approx(-1.0, abs=1e-6)


def test_squared_ncc_rewards_inverted_contrast(photo):
    x = torch.from_numpy(photo)[None, None]
    assert NCC(squared=True)(x, 1 - x).item() == pytest.approx(-1.0, abs=1e-3)
    assert NCC()(x, 1 - x).item() > 0.5  # the signed form sees inverted contrast as anti-correlated


def test_ncc_lower_for_unrelated_images(photo):
    noise = np.random.default_rng(0).random(photo.shape).astype(np.float32)
    assert local_ncc(photo, noise) < 0.2


@pytest.mark.parametrize("loss", [MSE(), NCC(), NCC(squared=True), GlobalNCC()])
def test_losses_finite_on_constant_images(loss):
    flat = torch.full((1, 1, 32, 32), 0.5, requires_grad=True)
    other = torch.rand(1, 1, 32, 32)
    for a, b in ((flat, flat), (flat, other), (other, flat)):
        value = loss(a, b)
        value.backward()
        assert torch.isfinite(value)
        assert torch.isfinite(flat.grad).all()


def test_global_ncc_of_constants():
    assert global_ncc(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)).item() == pytest.approx(1.0)
    assert global_ncc(torch.ones(1, 1, 4, 4), torch.rand(1, 1, 4, 4)).item() == pytest.approx(0.0, abs=1e-3)


def test_smoothness_zero_for_translation_positive_otherwise():
    flow = torch.ones(1, 2, 16, 16) * 3
    assert Grad()(flow).item() == 0 and Grad("l1")(flow).item() == 0
    affine = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij"))[None] * 0.1
    assert Grad()(affine).item() > 0
    assert BendingEnergy()(affine).item() == pytest.approx(0.0, abs=1e-10)
    assert BendingEnergy()(affine**2).item() > 0


def test_make_similarity_rejects_unknown():
    with pytest.raises(ValueError, match="unknown similarity"):
        make_similarity("nope")


def test_jacobian_and_folding():
    zero = np.zeros((2, 20, 20), np.float32)
    assert np.allclose(jacobian_determinant(zero), 1.0)
    assert folding_percent(zero) == 0.0
    y, x = np.mgrid[0:20, 0:20].astype(np.float32)
    expand = np.stack([0.5 * (y - 10), 0.5 * (x - 10)])  # p -> p + 0.5 (p - c): J = 1.5² = 2.25
    assert np.allclose(jacobian_determinant(expand), 2.25)
    fold = np.stack([-2.0 * y, np.zeros_like(x)])  # p_y -> -p_y: J = -1 everywhere
    assert folding_percent(fold) == 100.0


def test_endpoint_error_and_dice_and_mse():
    a = np.zeros((2, 10, 10))
    b = np.zeros((2, 10, 10))
    b[0] = 3
    b[1] = 4
    assert endpoint_error(a, b) == pytest.approx(5.0)
    assert endpoint_error(a, b, margin=2) == pytest.approx(5.0)
    m = np.zeros((10, 10), bool)
    m[:5] = True
    assert dice(m, m) == 1.0 and dice(m, ~m) == 0.0
    assert mse(np.zeros((3, 3)), np.ones((3, 3))) == 1.0


def test_box_mean_works_with_autograd_after_inference_mode():
    # box_mean caches its window counts; one first made in inference mode must not poison autograd.
    x = torch.rand(1, 1, 23, 17)
    with torch.inference_mode():
        box_mean(x, 5)
    y = x.clone().requires_grad_()
    box_mean(y, 5).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
