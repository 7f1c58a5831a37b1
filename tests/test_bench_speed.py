"""The speed-ups kept in regcore change no result: the separable box mean equals the 2-D pool, and
register()'s channels-last conversion leaves the cached model usable for training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import regcore
from regcore.checkpoints import load_model, save_model
from regcore.losses import box_mean
from regcore.nets import RegNet


def test_box_mean_equals_the_2d_pool():
    x = torch.rand(2, 5, 37, 50, generator=torch.Generator().manual_seed(0))
    for win in (1, 3, 9, 15):
        expected = F.avg_pool2d(x, win, stride=1, padding=win // 2, count_include_pad=False)
        torch.testing.assert_close(box_mean(x, win), expected, atol=1e-6, rtol=1e-5)


def test_register_net_on_cpu_keeps_the_model_trainable(photo, tmp_path):
    folder = save_model(RegNet(enc_features=(8, 8, 8), dec_features=(8, 8, 8), final_features=(8,)), tmp_path / "tiny")
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
