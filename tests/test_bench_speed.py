"""The speed-ups kept in regcore change no result: the separable box mean equals the 2-D pool, and
register()'s channels-last conversion leaves the cached model usable for training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import regcore
from regcore import inference
from regcore.checkpoints import load_model, save_model
from regcore.losses import box_mean
from regcore.nets import RegNet


def test_box_mean_equals_the_2d_pool():
    x = torch.rand(2, 5, 37, 50, generator=torch.Generator().manual_seed(0))
    for win in (1, 3, 9, 15):
        expected = F.avg_pool2d(x, win, stride=1, padding=win // 2, count_include_pad=False)
        torch.testing.assert_close(box_mean(x, win), expected, atol=1e-6, rtol=1e-5)


def test_register_net_on_cpu_keeps_the_model_trainable(photo, tmp_path, monkeypatch):
    monkeypatch.setenv("REGCORE_ONNX", "0")  # the PyTorch path, as without onnxruntime
    folder = _tiny(tmp_path)
    before = regcore.register(photo, photo, method="net", model=folder)
    again = regcore.register(photo, photo, method="net", model=folder)
    net = load_model(folder)
    assert net.flow.weight.is_contiguous(memory_format=torch.channels_last)
    assert before.flow.flags["C_CONTIGUOUS"] and (before.flow == again.flow).all()
    # The conversion happened outside inference mode: the weights still take part in autograd.
    assert not any(p.is_inference() for p in net.parameters())
    x = torch.from_numpy(photo)[None, None]
    net(x, x).square().mean().backward()
    assert net.flow.weight.grad is not None


def _tiny(tmp_path):
    return save_model(RegNet(enc_features=(8, 8, 8), dec_features=(8, 8, 8), final_features=(8,)), tmp_path / "tiny")


def test_onnx_runtime_path_matches_pytorch_at_any_size(tmp_path, monkeypatch):
    monkeypatch.setenv("REGCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REGCORE_ONNX", "1")
    net = load_model(_tiny(tmp_path))
    with torch.no_grad():  # a non-trivial head, so the comparison means something
        net.flow.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    for shape in ((1, 1, 45, 70), (2, 1, 64, 64)):
        src, tgt = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
        with torch.inference_mode():
            expected = net(src, tgt)
        got = inference.network_flow(net, src, tgt)
        assert inference.onnx_session(net) is not None
        assert got.shape == expected.shape and got.is_contiguous()
        assert expected.abs().max() > 0.05
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert len(list((tmp_path / "cache").glob("regnet-trunk-*.onnx"))) == 1  # exported once, reused from disk


def test_a_tampered_onnx_cache_file_is_replaced_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("REGCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REGCORE_ONNX", "1")
    net, other = (RegNet(enc_features=(8, 8, 8), dec_features=(8, 8, 8), final_features=(8,)) for _ in range(2))
    with torch.no_grad():
        for seed, model in enumerate((net, other)):
            model.flow.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
    path = inference._cache_path(net)
    path.parent.mkdir(parents=True)
    path.write_bytes(inference._export(other, tmp_path / "other.onnx"))  # another network's graph under net's name
    x, y = torch.rand(1, 1, 48, 48), torch.rand(1, 1, 48, 48)
    with pytest.warns(UserWarning, match="does not match the model's weights"):
        got = inference.network_flow(net, x, y)
    with torch.inference_mode():
        torch.testing.assert_close(got, net(x, y), atol=1e-4, rtol=1e-4)
    assert path.read_bytes() == inference._export(net, tmp_path / "fresh.onnx", use_cache=False)  # the cache now holds net's own export


def test_onnx_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("REGCORE_ONNX", "0")
    monkeypatch.setenv("REGCORE_CACHE", str(tmp_path / "cache"))
    net = load_model(_tiny(tmp_path))
    assert not inference.onnx_enabled() and inference.onnx_session(net) is None
    x = torch.rand(1, 1, 40, 40)
    with torch.inference_mode():
        torch.testing.assert_close(inference.network_flow(net, x, x), net(x, x))
    assert not (tmp_path / "cache").exists()
