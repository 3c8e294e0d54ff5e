"""A 2D U-Net skeleton shared by the complex regulariser, the coil-map refiner and the segmentation head.

The skeleton fixes the topology (``pools`` times: block, 2x down; a bottleneck block; ``pools`` times: 2x up,
concatenate the skip, block; a 1x1 head) and takes its layers from a ``UNetLayers`` recipe, so the complex
(``medmtl.models.complex_unet``) and the real (``medmtl.models.seg_unet``) networks differ only in their
layers. Feature maps are (B, C, H, W, *tail): tail = () for real maps, (2,) for complex pairs; channels and
space sit at the same axes in both, so padding, cropping and concatenation are shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError

MAX_POOLS = 12


@dataclass(frozen=True)
class UNetLayers:
    """The layers of one U-Net flavour, each a factory of (in channels, out channels) -> module.

    ``block``: the convolutions of one level (keeps H, W); ``up``: 2x upsampling; ``head``: the 1x1
    output layer; ``pool``: 2x downsampling, channels kept; ``top``: the block of the full-resolution level
    (both sides) if it differs from ``block``. Every level costs about the same arithmetic (channels double as
    pixels quarter), but on a CPU the full-resolution level, with the fewest channels, runs slowest per
    operation, so a lighter ``top`` buys the most time.
    """

    block: Callable[[int, int], nn.Module]
    up: Callable[[int, int], nn.Module]
    head: Callable[[int, int], nn.Module]
    pool: Callable[[int], nn.Module]
    top: Callable[[int, int], nn.Module] | None = None

    def block_at(self, level: int) -> Callable[[int, int], nn.Module]:
        """The block factory of ``level`` (0 = full resolution)."""
        return self.top if level == 0 and self.top is not None else self.block


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad H, W of (B, C, H, W, *tail) at the bottom and right up to multiples of ``multiple``.

    The amounts are shape arithmetic, not tensor values, so the padding stays symbolic in an exported graph.
    """
    h, w = x.shape[2], x.shape[3]
    tail = x.dim() - 4
    return F.pad(x, [0, 0] * tail + [0, (-w) % multiple, 0, (-h) % multiple])


def crop_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, C, H', W', *tail) -> (B, C, h, w, *tail), the top-left corner (undoes ``pad_to_multiple``)."""
    return x[:, :, :h, :w]


class UNet(nn.Module):
    """U-Net with ``pools`` 2x downsamplings; level l has ``chans * 2**l`` channels.

    Any H x W works: the input is zero-padded to a multiple of ``2**pools`` and the output cropped back.

    Args:
        in_chans, out_chans: input and output channels (complex channels for complex layers).
        chans: channels of the first level.
        pools: number of 2x downsamplings (0 gives a single block and the head).
        layers: the layer recipe.
    """

    def __init__(self, in_chans: int, out_chans: int, chans: int, pools: int, layers: UNetLayers):
        super().__init__()
        # 2**12 = 4096 px: more halvings than any image allows; the bound also stops a hostile checkpoint
        # configuration (pools = 10**9) before the Python list below is built.
        if not (isinstance(pools, int) and 0 <= pools <= MAX_POOLS):
            raise ConfigError("pools", f"must be a whole number in 0..{MAX_POOLS}, got {pools!r}")
        if not (isinstance(chans, int) and chans >= 1):
            raise ConfigError("chans", f"must be a whole number >= 1, got {chans!r}")
        widths = [chans * 2**level for level in range(pools + 1)]
        self.multiple = 2**pools
        inputs = [in_chans, *widths[:-1]]  # input channels of each level
        self.down = nn.ModuleList(layers.block_at(i)(inputs[i], widths[i]) for i in range(pools))
        self.pool = nn.ModuleList(layers.pool(widths[i]) for i in range(pools))
        self.bottom = layers.block_at(pools)(inputs[pools], widths[pools])
        self.up = nn.ModuleList(layers.up(widths[i + 1], widths[i]) for i in reversed(range(pools)))
        self.up_block = nn.ModuleList(
            layers.block_at(i)(2 * widths[i], widths[i]) for i in reversed(range(pools))
        )
        self.head = layers.head(widths[0], out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W, *tail) -> (B, out_chans, H, W, *tail)."""
        h, w = x.shape[2], x.shape[3]
        x = pad_to_multiple(x, self.multiple)
        skips = []
        for block, pool in zip(self.down, self.pool, strict=True):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for up, block in zip(self.up, self.up_block, strict=True):
            x = block(torch.cat((up(x), skips.pop()), dim=1))
        return crop_to(self.head(x), h, w)
