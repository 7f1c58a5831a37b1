"""The registration network: a VoxelMorph-style UNet that maps a (source, target) pair to a field.

``RegNet`` is a ``huggingface_hub.PyTorchModelHubMixin``, so ``save_pretrained`` /
``push_to_hub`` write ``model.safetensors`` + ``config.json`` (its init arguments). Loading goes
through :mod:`regcore.checkpoints`, which reads only safetensors and validates the config.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from .warp import VecInt, resize_flow

__all__ = ["ConvBlock", "RegNet"]


class ConvBlock(nn.Module):
    """3×3 convolution + LeakyReLU(0.2): ``(N, C_in, H, W) -> (N, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class RegNet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="regcore",
    tags=["image-registration", "deformable-registration", "voxelmorph"],
    license="mit",
):
    """UNet registration network: ``(source, target)`` each ``(N, 1, H, W)`` in [0, 1] -> flow ``(N, 2, H, W)`` px.

    The flow follows the project's convention (channel 0 rows, channel 1 columns, backward warp):
    ``warp(source, flow) ≈ target``. Any ``H, W`` is accepted: inputs are padded to a multiple of
    ``2 ** len(enc_features)`` and the field is cropped back.

    Parameters:
        enc_features: channels of the encoder convolutions, one per level, at resolutions
            1, 1/2, 1/4, ... of the input. Default (16, 32, 32, 64, 64): five levels, so the
            bottleneck sees 1/32 of the image and large displacements are within reach.
        dec_features: channels of the decoder convolutions, from the bottleneck upwards; the
            decoder stops at resolution ``1 / int_downsize``, so it has
            ``len(enc_features) + 1 - log2(int_downsize)`` entries. Default (64, 64, 32, 32, 32).
        final_features: extra convolutions at the output resolution before the flow head.
            Default (16,).
        int_downsize: the field is predicted at ``1 / int_downsize`` of the input resolution
            and upsampled (VoxelMorph's ``int_downsize``; 2 skips the decoder's full-resolution level). Default 2.
        int_steps: 0 predicts the displacement directly; > 0 predicts a stationary velocity
            field integrated by scaling and squaring in that many steps (diffeomorphic mode,
            VoxelMorph uses 7). Default 0.
    """

    def __init__(
        self,
        enc_features: Sequence[int] = (16, 32, 32, 64, 64),
        dec_features: Sequence[int] = (64, 64, 32, 32, 32),
        final_features: Sequence[int] = (16,),
        int_downsize: int = 2,
        int_steps: int = 0,
    ) -> None:
        super().__init__()
        enc, dec, final = tuple(enc_features), tuple(dec_features), tuple(final_features)
        if int_downsize not in (1, 2, 4) or 2 ** len(enc) < int_downsize:
            raise ValueError(f"int_downsize must be 1, 2 or 4 and at most 2**len(enc_features), got {int_downsize}")
        skip_levels = len(enc) - int_downsize.bit_length() + 1  # encoder levels the decoder climbs back to
        if len(dec) != skip_levels + 1:
            raise ValueError(
                f"dec_features needs {skip_levels + 1} entries for {len(enc)} encoder levels and "
                f"int_downsize={int_downsize}, got {len(dec)}"
            )
        if not enc or min(enc + dec + final) < 1 or int_steps < 0:
            raise ValueError("feature counts must be positive and int_steps >= 0")
        self.levels = len(enc)
        self.int_downsize = int_downsize
        self.encoder = nn.ModuleList(ConvBlock(c_in, c_out) for c_in, c_out in zip((2, *enc[:-1]), enc, strict=True))
        self.bottleneck = ConvBlock(enc[-1], dec[0])
        skips = enc[::-1][:skip_levels]  # channels of the skip connections, deepest first
        self.decoder = nn.ModuleList(
            ConvBlock(c_prev + c_skip, c_out) for c_prev, c_skip, c_out in zip(dec[:-1], skips, dec[1:], strict=True)
        )
        head = dec[-1:] + final
        self.final = nn.Sequential(*(ConvBlock(c_in, c_out) for c_in, c_out in itertools.pairwise(head)))
        self.flow = nn.Conv2d(head[-1], 2, 3, padding=1)
        # A near-zero head makes the untrained model start at the identity transform.
        nn.init.normal_(self.flow.weight, 0.0, 1e-5)
        nn.init.zeros_(self.flow.bias)
        self.integrate = VecInt(int_steps) if int_steps > 0 else None

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this size."""
        return 2**self.levels

    def trunk(self, x: Tensor) -> Tensor:
        """The UNet proper: the stacked, padded pair ``(N, 2, H, W)`` (``H``, ``W`` multiples of
        :attr:`multiple`) -> field ``(N, 2, H / d, W / d)`` in pixels of that grid (``d = int_downsize``),
        before integration. Shape-agnostic, so it exports to ONNX with dynamic sizes (regcore.inference)."""
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self.bottleneck(F.max_pool2d(x, 2))
        for block, skip in zip(self.decoder, reversed(skips), strict=False):
            x = block(torch.cat((F.interpolate(x, scale_factor=2.0, mode="nearest"), skip), dim=1))
        return self.flow(self.final(x))

    def forward(self, source: Tensor, target: Tensor, trunk: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """``(N, 1, H, W)``, ``(N, 1, H, W)`` in [0, 1] -> displacement ``(N, 2, H, W)`` in pixels.

        ``trunk`` replaces :meth:`trunk` (e.g. by an ONNX Runtime session of it); padding,
        integration and resizing stay here.
        """
        if source.shape != target.shape or source.ndim != 4 or source.shape[1] != 1:
            raise ValueError(f"expected source and target of one shape (N, 1, H, W), got {tuple(source.shape)} and {tuple(target.shape)}")
        h, w = source.shape[-2:]
        m = self.multiple
        pad = (0, (-w) % m, 0, (-h) % m)
        x = F.pad(torch.cat((source, target), dim=1), pad, mode="replicate")
        # The head predicts in pixels of its own (1 / int_downsize) grid; resize_flow rescales them.
        field = (trunk or self.trunk)(x)
        if self.integrate is not None:
            field = self.integrate(field)
        return resize_flow(field, (h + pad[3], w + pad[1]))[..., :h, :w]
