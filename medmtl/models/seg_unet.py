"""The segmentation head: a real-valued U-Net from image magnitudes to class logits.

Each level is two 3x3 convolutions with instance normalisation and LeakyReLU(0.1): instance statistics keep
the head indifferent to the intensity of its input, which differs between a zero-filled, an intermediate
and a final reconstruction. Max pooling down, 2x2 stride-2 transposed convolutions up.
"""

from __future__ import annotations

from torch import nn

from medmtl.models.unet import UNet, UNetLayers

_NEGATIVE_SLOPE = 0.1


def _block(in_chans: int, out_chans: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False),
        nn.InstanceNorm2d(out_chans, affine=True),
        nn.LeakyReLU(_NEGATIVE_SLOPE, inplace=True),
        nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
        nn.InstanceNorm2d(out_chans, affine=True),
        nn.LeakyReLU(_NEGATIVE_SLOPE, inplace=True),
    )


REAL_LAYERS = UNetLayers(
    block=_block,
    up=lambda i, o: nn.ConvTranspose2d(i, o, 2, stride=2),
    head=lambda i, o: nn.Conv2d(i, o, 1),
    pool=lambda _: nn.MaxPool2d(2),
)


def seg_unet(in_chans: int, num_classes: int, chans: int, pools: int) -> UNet:
    """A real U-Net (B, in_chans, H, W) -> logits (B, num_classes, H, W), any H x W."""
    return UNet(in_chans, num_classes, chans, pools, REAL_LAYERS)
