"""The app's pictures (regcore.viz) and Learn/Compare computations (webapp.compute): fast unit tests, no server."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from regcore import viz
from regcore.classical import tvl1_flow
from regcore.metrics import endpoint_error, folding_percent, image_scores
from regcore.warp import warp
from webapp import compute as demo


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a loaded 2-core machine, 2 spinning OpenMP threads made these tests ~20× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    return warp(torch.from_numpy(image)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()


def _constant_flow(shape: tuple[int, int], dy: float, dx: float) -> np.ndarray:
    flow = np.zeros((2, *shape), np.float32)
    flow[0], flow[1] = dy, dx
    return flow


def _trace(fig, name: str):
    return next(t for t in fig.data if t.name == name)


def test_checkerboard_alternates_tiles():
    a, b = np.zeros((8, 8)), np.ones((8, 8))
    board = viz.checkerboard(a, b, tiles=4)  # 2-px tiles
    assert board[0, 0] == 0 and board[0, 2] == 1 and board[2, 0] == 1 and board[2, 2] == 0
    assert board.sum() == 32
    with pytest.raises(ValueError):
        viz.checkerboard(a, np.ones((8, 9)))


def test_difference_image_uses_a_fixed_scale():
    a = np.zeros((4, 4), np.float32)
    same, half, full = viz.difference_image(a, a), viz.difference_image(a, a + 0.25), viz.difference_image(a, a + 0.5)
    assert same.shape == (4, 4, 3) and same.dtype == np.uint8
    # Brighter for larger differences, and 0.5 and 1.0 both saturate at vmax = 0.5.
    assert same.sum() < half.sum() < full.sum()
    np.testing.assert_array_equal(full, viz.difference_image(a, a + 1.0))


def test_quiver_hover_shows_the_vector_in_pixels(photo):
    flow = _constant_flow(photo.shape, 3.0, -2.0)
    fig = viz.quiver_figure(photo, flow, max_arrows=12)
    markers = _trace(fig, "vectors")
    data = np.asarray(markers.customdata)
    np.testing.assert_allclose(data[:, 0], 3.0)
    np.testing.assert_allclose(data[:, 1], -2.0)
    np.testing.assert_allclose(data[:, 2], np.hypot(3, 2), rtol=1e-3)
    assert "dy = %{customdata[0]" in markers.hovertemplate and "px" in markers.hovertemplate
    assert len(markers.x) == 12 * 12
    # Row 0 at the top, square pixels: an image's axes.
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1] and fig.layout.yaxis.scaleanchor == "x"
    json.loads(fig.to_json())  # what gr.Plot sends


def test_quiver_arrows_point_along_the_field():
    # Long vectors are drawn at true length: arrow tip = base + (dx, dy).
    flow = _constant_flow((64, 64), 10.0, 5.0)
    fig = viz.quiver_figure(None, flow, max_arrows=8)  # 8-px spacing, 11-px vectors
    lines = _trace(fig, "field")
    xs, ys = np.asarray(lines.x, float).reshape(-1, 7), np.asarray(lines.y, float).reshape(-1, 7)
    np.testing.assert_allclose(xs[:, 1] - xs[:, 0], 5.0, atol=1e-4)
    np.testing.assert_allclose(ys[:, 1] - ys[:, 0], 10.0, atol=1e-4)
    assert "true length" in fig.layout.title.text
    # Short vectors are lengthened, and the title says so.
    small = viz.quiver_figure(None, flow * 0.01, max_arrows=8)
    assert re.search(r"×\d", small.layout.title.text)


def test_grid_follows_the_field():
    flow = _constant_flow((32, 32), 2.0, -1.0)
    fig = viz.grid_figure(None, flow, lines=4)
    path = fig.data[-1]
    xs, ys = np.asarray(path.x, float), np.asarray(path.y, float)
    ok = ~np.isnan(xs)
    # Every grid point p moves to p + flow: integer grid positions shifted by (2, -1).
    np.testing.assert_allclose((ys[ok] - 2.0) % 1, 0, atol=1e-5)
    np.testing.assert_allclose((xs[ok] + 1.0) % 1, 0, atol=1e-5)
    assert ys[ok].min() == pytest.approx(2.0) and xs[ok].min() == pytest.approx(-1.0)


def test_jacobian_figure_reports_folding():
    identity = viz.jacobian_figure(np.zeros((2, 16, 16), np.float32))
    assert "folding 0.000%" in identity.layout.title.text
    folded = np.zeros((2, 16, 16), np.float32)
    folded[1] = -2.0 * np.arange(16)[None, :]  # x -> x - 2x: mirrored, J = -1 everywhere
    fig = viz.jacobian_figure(folded)
    assert folding_percent(folded) == 100.0 and "folding 100.000%" in fig.layout.title.text
    np.testing.assert_allclose(np.asarray(fig.data[0].z), -1.0, atol=1e-5)


def test_field_comparison_reports_the_endpoint_error(photo):
    true = _constant_flow(photo.shape, 3.0, 0.0)
    pred = _constant_flow(photo.shape, 0.0, 4.0)
    fig = viz.field_comparison_figure(photo, true, pred)
    titles = [a.text for a in fig.layout.annotations]
    assert endpoint_error(pred, true) == pytest.approx(5.0)
    assert any("mean 5.00 px" in t for t in titles)


def test_tvl1_used_by_the_compare_tab_matches_the_project_convention(photo):
    # skimage's optical_flow_tvl1(reference, moving) -> (v, u) with moving at (r + v, c + u) ≈ reference.
    true = _constant_flow(photo.shape, 3.0, -2.0)
    target = _warp(photo, true)
    flow = tvl1_flow(photo, target)
    inner = (slice(None), slice(16, -16), slice(16, -16))
    np.testing.assert_allclose(np.median(flow[inner], axis=(1, 2)), [3.0, -2.0], atol=0.1)
    assert image_scores(_warp(photo, flow), target)["mse"] < 0.1 * image_scores(photo, target)["mse"]


def test_deform_photo_makes_a_known_smooth_deformation():
    source, target, flow = demo.deform_photo("camera", 64, magnitude=5.0, smoothness=4, seed=3)
    assert source.shape == target.shape == (64, 64) and flow.shape == (2, 64, 64)
    np.testing.assert_allclose(target, np.clip(_warp(source, flow), 0, 1), atol=1e-5)
    assert 4.0 < np.hypot(*flow).max() < 6.0
    assert folding_percent(flow) == 0.0
    same = demo.deform_photo("camera", 64, magnitude=5.0, smoothness=4, seed=3)
    np.testing.assert_array_equal(same[2], flow)
    still = demo.deform_photo("camera", 64, magnitude=0.0, smoothness=4, seed=3)
    np.testing.assert_allclose(still[1], still[0], atol=1e-5)


def test_walkthrough_without_a_checkpoint_uses_an_untrained_network(no_checkpoints, photo):
    target = _warp(photo, _constant_flow(photo.shape, 2.0, 1.0))
    steps = demo.walkthrough(photo, target)
    assert steps.model is None
    assert np.abs(steps.flow).max() < 0.1  # the untrained head starts at the identity
    assert steps.loss == pytest.approx(steps.similarity + steps.smoothness, abs=1e-6)
    assert steps.similarity == pytest.approx(-float(steps.ncc_after.mean()), abs=1e-4)
    assert np.abs(steps.flow_grad).max() > 0
    assert next(iter(steps.layer_grads)).startswith("encoder.0") and all(v >= 0 for v in steps.layer_grads.values())


def test_train_live_streams_deterministic_progress():
    def run():
        return list(demo.train_live(steps=4, size=32, batch=2, every=2, seed=1))

    updates = run()
    assert [u.step for u in updates] == [2, 4]
    assert len(updates[-1].losses) == 4 and updates[-1].epe_steps == [2, 4]
    assert updates[-1].warped.shape == updates[-1].source.shape == (32, 32)
    assert all(np.isfinite(u.losses).all() for u in updates)
    np.testing.assert_allclose(run()[-1].losses, updates[-1].losses, rtol=1e-5)
    stopped = list(demo.train_live(steps=50, size=32, batch=2, every=10, should_stop=lambda: True))
    assert [u.step for u in stopped] == [1]


def test_compare_methods_scores_every_method_on_the_same_pixels(no_checkpoints, photo):
    target = _warp(photo, _constant_flow(photo.shape, 2.0, -1.0))
    seen = []
    results = demo.compare_methods(photo, target, max_side=64, refine_steps=20, progress=seen.append)
    assert [r.method for r in results] == seen == ["optimize", "tvl1", "dis-fine"]
    for r in results:
        assert r.flow.shape == (2, 64, 64) and r.before == results[0].before
        assert r.after["local_ncc"] > r.before["local_ncc"]
        assert any("64x64" in n for n in r.notes)


def test_pooled_quiver_shows_cell_means():
    # A field that is non-zero on one pixel per 8×8 cell: sampling the cell centres sees nothing, the mean does.
    flow = np.zeros((2, 32, 32), np.float32)
    flow[0, ::8, ::8] = 64.0
    sampled = np.asarray(_trace(viz.quiver_figure(None, flow, max_arrows=4), "vectors").customdata)
    pooled = np.asarray(_trace(viz.quiver_figure(None, flow, max_arrows=4, pool=True), "vectors").customdata)
    np.testing.assert_allclose(sampled[:, 0], 0.0)
    np.testing.assert_allclose(pooled[:, 0], 1.0)  # 64 / 64 pixels per cell


def test_loss_curve_adds_a_running_mean():
    fig = viz.loss_curve_figure(range(1, 5), [4.0, 2.0, 0.0, 2.0], window=2)
    np.testing.assert_allclose(np.asarray(fig.data[1].y), [4.0, 3.0, 1.0, 1.0])


def test_image_strip_puts_images_side_by_side():
    gray, rgb = np.ones((4, 3), np.float32), np.zeros((4, 2, 3), np.uint8)
    strip = viz.image_strip([gray, rgb], gap=1)
    assert strip.shape == (4, 6, 3) and strip.dtype == np.uint8
    assert (strip[:, :3] == 255).all() and (strip[:, 3] == 255).all() and (strip[:, 4:] == 0).all()
    assert viz.image_strip([gray, rgb], gap=1, zoom=2).shape == (8, 12, 3)
    with pytest.raises(ValueError):
        viz.image_strip([gray, np.zeros((5, 2))])
