"""A complex-valued U-Net on (B, C, H, W, 2) pairs, built from ``medmtl.nn.complex`` layers.

Each level is two 3x3 complex convolutions with CReLU (the cheapest complex activation: one ReLU over both
parts, no magnitude), the full-resolution level one a side. Downsampling is a 2x2 complex average (linear, so
it commutes with the complex structure, unlike a max), upsampling a 2x2 stride-2 complex transposed
convolution. There is no normalisation layer: the reconstruction network divides its input by one intensity
scale up front, and a complex (whitening) instance norm after every convolution made the U-Net 1.46x slower
(two convolutions a level, 8 channels, 3 pools, 256 x 256, forward and backward, one CPU thread).
The 1x1 head starts at zero, so a network used as a residual refiner starts as the identity.

The layers take (B, C, H, W, 2) pairs, but ``ComplexUNet`` runs them on the stacked layout (B, 2C, H, W), real
parts then imaginary parts, converting once on the way in and once on the way out: between layers nothing
moves (block-form convolutions read and write that layout, Gauss-form ones split and join it along channels,
CReLU and the average pool act per channel), and the skip concatenation gathers the real halves and then the
imaginary halves in one copy. The weights and the state dict are those of the pair layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.models.unet import UNet, UNetLayers, crop_to, pad_to_multiple
from medmtl.nn.complex import ComplexConv2d, ComplexConvTranspose2d, CReLU
from medmtl.nn.complex.conv import from_stacked, to_stacked


def complex_avg_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """factor x factor average of complex maps. (B, C, H, W, 2), H and W divisible by ``factor`` ->
    (B, C, H / factor, W / factor, 2).

    A 3D average pool over (H, W, pair) with a kernel of 1 along the pair needs no layout change; it ran
    14 times faster (forward and backward) than a reshape and a mean, and exports as one AveragePool.
    """
    return F.avg_pool3d(x, (factor, factor, 1))


class ComplexAvgPool2x(nn.Module):
    """2x2 average of complex maps. (B, C, H, W, 2) with even H, W -> (B, C, H/2, W/2, 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return complex_avg_pool(x, 2)


def _conv_relu(in_chans: int, out_chans: int) -> list[nn.Module]:
    return [ComplexConv2d(in_chans, out_chans, 3, padding=1), CReLU()]


def _block(in_chans: int, out_chans: int) -> nn.Module:
    return nn.Sequential(*_conv_relu(in_chans, out_chans), *_conv_relu(out_chans, out_chans))


COMPLEX_LAYERS = UNetLayers(
    block=_block,
    up=lambda i, o: ComplexConvTranspose2d(i, o, 2, stride=2),
    head=lambda i, o: ComplexConv2d(i, o, 1),
    pool=lambda _: ComplexAvgPool2x(),
    # One convolution a side at full resolution: 22 % less time for the whole U-Net (8 channels, 3 pools,
    # 256 x 256, forward and backward, one CPU thread: 207 against 266 ms), and 3 % fewer weights.
    top=lambda i, o: nn.Sequential(*_conv_relu(i, o)),
)


def _stacked(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module`` (one of the layers above, or a Sequential of them) applied to the stacked layout."""
    if isinstance(module, nn.Sequential):
        for layer in module:
            x = _stacked(layer, x)
        return x
    if isinstance(module, (ComplexConv2d, ComplexConvTranspose2d)):
        return module.forward_stacked(x)
    if isinstance(module, CReLU):
        return torch.relu(x)
    if isinstance(module, ComplexAvgPool2x):
        return F.avg_pool2d(x, 2)
    raise TypeError(f"no stacked form for {type(module).__name__}")


def _cat_stacked(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The stacked layout of the complex channels of a then b: their real halves, then their imaginary halves."""
    ca, cb = a.shape[1] // 2, b.shape[1] // 2
    return torch.cat((a[:, :ca], b[:, :cb], a[:, ca:], b[:, cb:]), dim=1)


class ComplexUNet(UNet):
    """``UNet`` with the complex layers, run on the stacked layout (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W, 2) -> (B, out_chans, H, W, 2)."""
        h, w = x.shape[2], x.shape[3]
        x = pad_to_multiple(to_stacked(x), self.multiple)
        skips = []
        for block, pool in zip(self.down, self.pool, strict=True):
            x = _stacked(block, x)
            skips.append(x)
            x = _stacked(pool, x)
        x = _stacked(self.bottom, x)
        for up, block in zip(self.up, self.up_block, strict=True):
            x = _stacked(block, _cat_stacked(_stacked(up, x), skips.pop()))
        return from_stacked(crop_to(_stacked(self.head, x), h, w))


def complex_unet(in_chans: int, out_chans: int, chans: int, pools: int) -> UNet:
    """A complex U-Net (B, in_chans, H, W, 2) -> (B, out_chans, H, W, 2), any H x W, output zero at init."""
    net = ComplexUNet(in_chans, out_chans, chans, pools, COMPLEX_LAYERS)
    nn.init.zeros_(net.head.weight)
    nn.init.zeros_(net.head.bias)
    return net
