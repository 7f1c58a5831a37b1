import pytest
import torch

from regcore.checkpoints import load_model, save_model
from regcore.errors import CheckpointError
from regcore.nets import RegNet

SMALL = {"enc_features": (4, 8, 8), "dec_features": (8, 8, 8), "final_features": (4,)}


@pytest.mark.parametrize("size", [(32, 32), (37, 50), (1, 1), (9, 70)])
def test_any_size_and_identity_at_start(size):
    net = RegNet(**SMALL).eval()
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        flow = net(x, x)
    assert flow.shape == (2, 2, *size)
    assert flow.abs().max() < 1e-2  # near-zero head: an untrained model is close to identity


@pytest.mark.parametrize("arch", [{}, {"int_downsize": 1, "dec_features": (8, 8, 8, 8)}, {"int_steps": 7}])
def test_gradients_reach_every_parameter(arch):
    net = RegNet(**{**SMALL, **arch})
    x, y = torch.rand(2, 1, 24, 24), torch.rand(2, 1, 24, 24)
    from regcore.losses import NCC
    from regcore.warp import warp

    flow = net(x, y)
    (NCC()(warp(x, flow), y) + flow.square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_bad_config_is_explained():
    with pytest.raises(ValueError, match="dec_features needs"):
        RegNet(enc_features=(4, 8), dec_features=(8,))


def test_save_load_round_trip_is_bit_exact(tmp_path):
    net = RegNet(**SMALL, int_steps=7)
    for p in net.parameters():
        p.data.normal_()
    save_model(net, tmp_path / "m", card="# card\n")
    loaded = load_model(tmp_path / "m")
    assert loaded.integrate is not None
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.rand(1, 1, 20, 20)
    with torch.no_grad():
        assert torch.equal(net.eval()(x, x), loaded(x, x))
    assert (tmp_path / "m" / "README.md").read_text() == "# card\n"


def test_corrupt_and_mismatched_checkpoints_name_the_file(tmp_path):
    save_model(RegNet(**SMALL), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(tmp_path / "m")
    save_model(RegNet(**SMALL), tmp_path / "n")
    (tmp_path / "n" / "config.json").write_text('{"enc_features": [4, 8, 8], "dec_features": [8, 8, 8], "final_features": [8]}')
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "n")
    (tmp_path / "n" / "config.json").write_text('{"evil": 1}')
    with pytest.raises(CheckpointError, match="unknown RegNet arguments"):
        load_model(tmp_path / "n")
    with pytest.raises(CheckpointError, match=r"no checkpoint '.*absent': not a checkpoint folder"):
        load_model(tmp_path / "absent")


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="Hugging Face Hub"):
        load_model("hf:someone/regcore-model-that-is-not-cached")
