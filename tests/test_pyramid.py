"""One grid convention from the pyramid's images to its fields: pixel centres matched corner to corner."""

from __future__ import annotations

import torch

from regcore.optimize import pyramid, pyramid_levels
from regcore.warp import resize_flow, resize_image, warp


def _blobs(n: int) -> torch.Tensor:
    """A smooth ``(1, 1, n, n)`` image (broad Gaussian blobs): the same picture at every pyramid level."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    image = torch.zeros(n, n)
    for _ in range(16):
        cy, cx = (torch.rand(2, generator=g) * n).tolist()
        sigma = 12 + 8 * torch.rand(1, generator=g).item()
        image += torch.rand(1, generator=g).item() * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return (image / image.max())[None, None]


def _best_translation(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The constant shift ``(dy, dx)`` px that best warps ``source`` onto ``target`` (least squares, border left out)."""
    h, w = source.shape[-2:]
    m = max(2, round(0.15 * h))
    shift = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([shift], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = (warp(source, shift.view(1, 2, 1, 1).expand(1, 2, h, w)) - target)[..., m:-m, m:-m].square().mean()
        value.backward()
        return value

    opt.step(loss)
    return shift.detach()


def test_a_known_shift_is_recovered_at_every_pyramid_level():
    """Images shrunk with avg_pool2d and fields with align_corners=True disagreed: the shift found at
    16 px and scaled back came out 0.36 px off a (5, -3) px shift at 128 px; now every level agrees."""
    n, true = 128, torch.tensor([5.0, -3.0])
    source = _blobs(n)
    target = warp(source, true.view(1, 2, 1, 1).expand(1, 2, n, n))
    levels = pyramid(source, target, pyramid_levels((n, n)))
    assert [tuple(s.shape[-2:]) for s, _ in levels] == [(16, 16), (32, 32), (64, 64), (128, 128)]
    for level_source, level_target in levels:
        h, w = level_source.shape[-2:]
        found = _best_translation(level_source, level_target)
        back = resize_flow(found.view(1, 2, 1, 1).expand(1, 2, h, w), (n, n))[0, :, 0, 0]
        assert float((back - true).norm()) < 0.12, (h, back.tolist())


def test_images_and_fields_are_resized_on_one_grid():
    """Inside the image, pixel i of a resized ramp holds the input position resize_flow maps it to."""
    ramp = torch.arange(97, dtype=torch.float32).view(1, 1, 1, 97).expand(1, 1, 3, 97)
    for side in (60, 49, 25, 12, 7):
        shrunk = resize_image(ramp, (3, side))[0, 0, 1]
        where = torch.arange(side) * 96 / (side - 1)
        torch.testing.assert_close(shrunk[1:-1], where[1:-1], atol=0.02, rtol=0)
