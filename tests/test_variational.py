"""Variational refinement near motion boundaries (regcore.variational) and its place in the default method."""

import numpy as np
import pytest
import torch
from test_boundaries import SIZE, disc_pair

import regcore
import regcore.pipeline as pipeline
import regcore.variational as variational
from regcore.boundaries import sharpen_boundaries
from regcore.data import affine_fields, load_photo
from regcore.variational import refine_near_boundaries
from regcore.warp import warp


def _band_error(flow: torch.Tensor, true: torch.Tensor, band: torch.Tensor) -> float:
    return float((flow - true)[0].norm(dim=0)[band].mean())


@pytest.mark.parametrize("shift", [6.0, 10.0])
def test_a_sharpened_jump_is_refined_along_the_object_s_edge(shift):
    source, target, true, band = disc_pair(shift)
    net = torch.from_numpy(regcore.register(source[0, 0].numpy(), target[0, 0].numpy(), method="net").flow)[None]
    sharpened = sharpen_boundaries(source, target, net)
    before = _band_error(sharpened, true, band)
    after = _band_error(refine_near_boundaries(source, target, sharpened), true, band)
    assert after < 0.85 * before  # measured: 0.88 -> 0.67 px (6 px), 1.56 -> 1.16 px (10 px)


def test_smooth_motion_is_left_exactly_as_it_is():
    g = torch.Generator().manual_seed(0)
    source = torch.from_numpy(load_photo("camera", SIZE))[None, None]
    field = affine_fields(1, (SIZE, SIZE), 12.0, g)
    assert torch.equal(refine_near_boundaries(source, warp(source, field), field), field)


def test_the_two_threads_bands_agree_with_one_band_and_with_themselves(monkeypatch):
    source, target, true, _ = disc_pair()
    start = sharpen_boundaries(source, target, torch.nn.functional.avg_pool2d(true, 9, 1, 4))
    two = refine_near_boundaries(source, target, start)
    assert torch.equal(two, refine_near_boundaries(source, target, start))  # whatever the threads' timing
    assert len(variational._bands(np.ones((SIZE, SIZE), bool))) == 2
    monkeypatch.setattr(variational, "_bands", lambda active: [(0, active.shape[0], 0, active.shape[0])])
    one = refine_near_boundaries(source, target, start)
    assert not torch.equal(one, start)
    difference = (two - one).abs()
    assert float(difference.max()) < 0.1 and float(difference.mean()) < 1e-3


def test_the_default_method_refines_unless_the_target_was_remapped(monkeypatch):
    calls = []

    def recorded(source, target, flow):
        calls.append(flow)
        return flow

    monkeypatch.setattr(pipeline, "refine_near_boundaries", recorded)
    source, target, _, _ = disc_pair()
    plain = regcore.register(source[0, 0].numpy(), target[0, 0].numpy())
    assert len(calls) == 1 and not any("intensity distributions differ" in note for note in plain.notes)
    squared = regcore.register(source[0, 0].numpy(), target[0, 0].numpy() ** 3)
    assert any("intensity distributions differ" in note for note in squared.notes)
    assert len(calls) == 1


def test_the_app_s_warm_up_runs_the_refinement_so_its_loops_are_ready_before_the_first_visitor(monkeypatch):
    from webapp.compute import warm_up

    solved = []
    real = variational._solve

    def recorded(*args):
        solved.append(args[3:5])
        return real(*args)

    monkeypatch.setattr(variational, "_solve", recorded)
    warm_up(None)
    assert solved
