"""The default register() on fixed pairs with known fields: a guard against accuracy regressions.

Three photographs at 128², deformed by seeded fields (smooth bends, then large affine motion), the
smooth pairs again with the target's contrast changed (gamma 2, inverted), and three layered pairs
(objects moving over a moving background). The bounds are the errors measured when the default became
the network + Lucas–Kanade pyramid (mean 0.24 px smooth, 0.22 px large, 0.30 px gamma, 0.24 px
inverted) and, for the layered pairs, when it became that fused with the patch search (0.83 px;
the pyramid alone: 1.82 px), with about a third of headroom for platforms; doing nothing scores
1.5-7 px here.
"""

import numpy as np
import pytest
import torch

import regcore
from regcore.data import layered_motion, layered_pairs, load_photo, motion_fields, photo_pairs
from regcore.metrics import endpoint_error
from regcore.pipeline import DEFAULT_METHOD
from regcore.warp import warp

NAMES = ("camera", "coins", "astronaut")
MARGIN = 13  # px left out at each border


def _smooth() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pairs = photo_pairs(128, 8.0, seed=2024, names=NAMES)
    return pairs.source[:, 0].numpy(), pairs.target[:, 0].numpy(), pairs.flow.numpy()


def _large() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = torch.from_numpy(np.stack([load_photo(n, 128) for n in NAMES]))[:, None]
    flows = motion_fields(len(NAMES), (128, 128), 19.0, torch.Generator().manual_seed(2025), "large")
    return images[:, 0].numpy(), warp(images, flows)[:, 0].numpy(), flows.numpy()


def _layered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two objects (other photographs) moving by up to 19 px over the three photographs, each its own way."""
    images = torch.from_numpy(np.stack([load_photo(n, 128) for n in NAMES]))[:, None]
    layers = layered_motion(len(NAMES), (128, 128), 19.0, torch.Generator().manual_seed(11))
    objects = [torch.roll(images, k + 1, dims=0) for k in range(len(layers.masks))]
    source, target, flow = layered_pairs(images, objects, layers)
    return source[:, 0].numpy(), target[:, 0].numpy(), flow.numpy()


def _mean_epe(sources, targets, flows) -> tuple[float, float]:
    """Mean EPE of the default register() and of the zero field."""
    found = [endpoint_error(regcore.register(s, t).flow, f, MARGIN) for s, t, f in zip(sources, targets, flows, strict=True)]
    zero = [endpoint_error(np.zeros_like(f), f, MARGIN) for f in flows]
    return float(np.mean(found)), float(np.mean(zero))


def test_the_default_is_the_network_with_its_pyramid_and_the_patch_search():
    assert DEFAULT_METHOD == "net+patches"
    source, target, _ = _smooth()
    assert regcore.register(source[0], target[0]).method == "net+patches"


@pytest.mark.parametrize(
    ("case", "bound"),
    [("smooth", 0.33), ("large", 0.30), ("gamma", 0.40), ("inverted", 0.33), ("layered", 1.1)],
)
def test_default_accuracy_on_fixed_pairs(case, bound):
    sources, targets, flows = {"large": _large, "layered": _layered}.get(case, _smooth)()
    if case == "gamma":
        targets = targets**2
    elif case == "inverted":
        targets = 1.0 - targets
    found, zero = _mean_epe(sources, targets, flows)
    assert zero > 1.5
    assert found < bound, f"{case}: mean EPE {found:.3f} px (bound {bound})"
