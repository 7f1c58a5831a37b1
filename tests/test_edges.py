"""The library's edge cases that used to give silent nonsense: bit depth, thin images, the pyramid's grid."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

import regcore
from benchmarks import sets
from regcore import cli
from regcore.checkpoints import load_model, save_model
from regcore.data import BUNDLED_PHOTOS, load_photo, photo_pairs
from regcore.errors import CheckpointError, RegcoreError
from regcore.io import load_image
from regcore.metrics import endpoint_error
from regcore.nets import RegNet
from regcore.pipeline import MIN_SIDE
from regcore.warp import resize_flow, resize_image
from webapp import learn_tab


def _register_stored_as(dtype: type, top: int, method: str) -> float:
    """Mean endpoint error (px) of ``method`` on three deformed photographs stored as integers 0..``top``."""
    pairs = photo_pairs(128, 6.0, seed=5, names=("camera", "coins", "astronaut"))
    errors = []
    for source, target, flow in zip(pairs.source[:, 0].numpy(), pairs.target[:, 0].numpy(), pairs.flow.numpy(), strict=True):
        stored = [np.round(image * top).astype(dtype) for image in (source, target)]
        errors.append(endpoint_error(regcore.register(*stored, method=method).flow, flow, margin=8))
    return float(np.mean(errors))


def test_12_bit_data_in_16_bit_containers_registers_as_well_as_8_bit():
    """12-bit data divided by 65535 sat in [0, 0.06], where the network's pass and its polish fared worse
    (mean EPE 0.23 px at 8 bits, 0.33 px at 12 bits); scaled by its actual range it fares as 8-bit data."""
    assert regcore.available_models(), "the shipped checkpoints are missing"
    eight = _register_stored_as(np.uint8, 255, "net")
    twelve = _register_stored_as(np.uint16, 4095, "net")
    assert twelve <= eight + 0.02, (eight, twelve)


def test_12_bit_values_fill_the_unit_range_and_say_so():
    notes: list[str] = []
    image = load_image(np.array([[0, 2048, 4095]], np.uint16), "source", notes=notes)
    assert np.allclose(image, [[0.0, 2048 / 4095, 1.0]], atol=1e-7)
    assert notes == ["source: values from 0 to 4095 were rescaled to [0, 1]"]


# --- no network unless asked -------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any attempt to open a connection or to call the Hub's download."""
    import socket

    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network request was made: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.mark.parametrize("name", ["runs/ncc", "someone/model", "nccc"])
def test_an_unknown_model_name_is_a_one_line_error_listing_the_shipped_models(name, photo, no_network):
    shipped = list(regcore.available_models())
    assert shipped, "the shipped checkpoints are missing"
    with pytest.raises(CheckpointError) as info:
        regcore.register(photo, photo, method="net", model=name)
    message = str(info.value)
    assert "\n" not in message and name in message and ", ".join(shipped) in message and "hf:user/repo" in message


def test_a_hub_model_is_fetched_only_with_the_hf_prefix(photo, tmp_path, monkeypatch):
    import huggingface_hub

    folder = save_model(RegNet(enc_features=(8, 8, 8), dec_features=(8, 8, 8), final_features=(8,)), tmp_path / "hub")
    asked: list[tuple[str, str]] = []

    def download(repo_id: str, filename: str) -> str:
        asked.append((repo_id, filename))
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    result = regcore.register(photo, photo, method="net", model="hf:someone/model")
    assert result.model == "hf:someone/model" and {repo for repo, _ in asked} == {"someone/model"}
    with pytest.raises(CheckpointError, match="not a Hugging Face Hub repo id"):
        load_model("hf:no-slash")


@pytest.mark.parametrize("name", ["download_all", "lfw_subset", "no_such_photo", "__class__"])
def test_load_photo_takes_only_its_documented_names(name, no_network):
    with pytest.raises(RegcoreError) as info:
        load_photo(name, 32)
    assert str(info.value) == f"unknown photograph {name!r}; choose one of {', '.join(BUNDLED_PHOTOS)}"
    assert load_photo("camera", 32).shape == (32, 32)


def test_every_photograph_the_project_uses_is_one_load_photo_takes():
    assert set(sets.TUNING_NAMES) <= set(BUNDLED_PHOTOS) and set(learn_tab.LEARN_PHOTOS) <= set(BUNDLED_PHOTOS)


# --- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 2048), (2048, 12), (40, 4096)])
def test_an_image_too_thin_once_capped_is_refused(shape, no_checkpoints):
    """8x2048 passed the minimum-size check and was then registered at 2x512 with only a note."""
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    with pytest.raises(RegcoreError) as info:
        regcore.register(image, image, method="optimize", refine_steps=1)
    message = str(info.value)
    assert "\n" not in message and f"source: {shape[1]}x{shape[0]} would be registered at" in message
    assert f"under the minimum of {MIN_SIDE} px a side" in message


def test_a_thin_image_registers_when_nothing_is_capped(no_checkpoints):
    image = np.random.default_rng(0).random((8, 600)).astype(np.float32)
    result = regcore.register(image, image, method="optimize", refine_steps=1, max_side=600)
    assert result.flow.shape == (2, 8, 600)


# --- outputs proportional to the work ----------------------------------------------------------


def test_a_large_pair_gives_its_field_at_the_registered_size_until_the_full_one_is_asked_for(photo, tmp_path, no_checkpoints):
    big = resize_image(torch.from_numpy(photo)[None, None], (192, 160))[0, 0].numpy()
    result = regcore.register(big, np.roll(big, (3, -2), axis=(0, 1)), method="optimize", refine_steps=5, max_side=48)
    view = result.registered
    assert result.registered_flow.shape == (2, 48, 40) and view.flow is result.registered_flow
    assert view.source.shape == view.target.shape == view.warped.shape == (48, 40)
    assert view.after["local_ncc"] > view.before["local_ncc"]
    paths = view.save(tmp_path / "small")
    assert np.load(paths["flow"]).shape == (2, 48, 40) and paths["warped"].stat().st_size < 10_000
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["shape"] == [48, 40] and metrics["source_shape"] == [192, 160]
    assert metrics["field_scale"] == pytest.approx([191 / 47, 159 / 39])
    # Nothing at full size was computed for any of that ...
    assert not {"flow", "warped", "jacobian", "before", "after"} & set(vars(result))
    # ... and the full-size field, when asked for, is the registered one scaled by field_scale.
    assert result.flow.shape == (2, 192, 160)
    expected = resize_flow(torch.from_numpy(result.registered_flow)[None], (192, 160))[0].numpy()
    np.testing.assert_array_equal(result.flow, expected)
    assert result.metrics()["field_scale"] == [1.0, 1.0] and result.registered.registered is view


def test_an_image_within_the_cap_is_its_own_registered_result(photo, no_checkpoints):
    result = regcore.register(photo, photo, method="optimize", refine_steps=1)
    assert result.registered is result and result.flow is result.registered_flow


def test_the_time_budget_counts_from_decoding(photo):
    """timeout_s used to cover the optimisation only: a network method never stopped, however slow the rest."""
    with pytest.raises(RegcoreError, match=r"took longer than 1e-09 s and was stopped while reading the images"):
        regcore.register(photo, photo, method="net", timeout_s=1e-9)


def test_the_cli_warps_by_a_field_saved_at_the_registered_size(photo, tmp_path, capsys, no_checkpoints):
    big = resize_image(torch.from_numpy(photo)[None, None], (192, 160))[0, 0].numpy()
    result = regcore.register(big, np.roll(big, (3, -2), axis=(0, 1)), method="optimize", refine_steps=5, max_side=48)
    paths = result.registered.save(tmp_path)
    regcore.save_image(tmp_path / "big.png", big)
    assert cli.main(["warp", str(tmp_path / "big.png"), str(paths["flow"]), "--out", str(tmp_path / "moved.png")]) == 0
    assert "was resampled to the image's 160x192" in capsys.readouterr().err
    moved = load_image(tmp_path / "moved.png")
    assert np.abs(moved - result.warped).max() <= 1.5 / 255  # the full-size result, up to 8-bit rounding


def test_warping_a_large_image_keeps_no_grid_of_its_size():
    """warp() kept the sampling grid of every size it saw (up to 32): after one 4096² warp, 134 MB for good."""
    warp = importlib.import_module("regcore.warp")  # the module (regcore.warp is the function)
    warp._cached_grid.cache_clear()
    warp.warp(torch.zeros(1, 1, 600, 600), torch.zeros(1, 2, 600, 600))
    assert warp._cached_grid.cache_info().currsize == 0
    warp.warp(torch.zeros(1, 1, 64, 64), torch.zeros(1, 2, 64, 64))
    assert warp._cached_grid.cache_info().currsize == 1
