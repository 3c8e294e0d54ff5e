"""The 2.5D context trunk of the lesion network: slices in threes through one 2D backbone, fused in 3D.

As in MULAN (Yan et al. 2019), the S context slices (``medmtl.transforms.context``: ascending k, key slice at
the centre) are split into G = S / 3 images of three consecutive slices, so a 2D backbone built for
three-channel images sees each of them; the G images share the backbone's weights (they ride in the batch
axis). After each level from ``fuse_from`` on, the G groups' features are fused into the central group's
(the one holding the key slice): a 1x1 convolution over their concatenation, which is MULAN's 3D fusion
(a convolution spanning the group axis) written in 2D, added to the central features as a residual. The
fusion starts at zero, so an untrained trunk is a plain 2D network on the key image, and the other groups
keep their own features for the next level.

Only the central group's features leave the trunk: a small FPN-like top-down path (nearest 2x upsampling,
1x1 laterals, a 3x3 output convolution) from the deepest level to stride 4, plus the central stem (stride 1)
and first level (stride 2) for a full-resolution mask decoder.

Layout. A stem (3x3 convolution at full resolution), then ``len(widths)`` levels, each a stride-2 3x3
convolution and a 3x3 convolution, so level l has stride 2**(l + 1). Every convolution is followed by
GroupNorm (statistics per image, so a batch of one trains like any other) and SiLU.
Any H x W works: the input is zero-padded at the bottom and right to a multiple of 2**len(widths) and every
output is cropped back to ceil(H / stride) x ceil(W / stride), so cell (u, v) of a stride-s map covers the
input pixels [s u, s u + s) x [s v, s v + s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError, InputError
from medmtl.models.unet import crop_to
from medmtl.transforms.context import DEFAULT_NUM_SLICES

SLICES_PER_GROUP = 3
# CPU-sized: with every head, LesionNet has about 0.42 M parameters; wider trunks are a configuration away.
DEFAULT_WIDTHS = (16, 32, 64, 128)
DEFAULT_FUSE_FROM = 1
_MAX_NORM_GROUPS = 8


def conv_norm_act(in_chans: int, out_chans: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (padding 1), GroupNorm, SiLU: (B, in, H, W) -> (B, out, ceil(H / s), ceil(W / s))."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(math.gcd(out_chans, _MAX_NORM_GROUPS), out_chans),
        nn.SiLU(inplace=True),
    )


def pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad H, W of (B, C, H, W) at the bottom and right to the next multiples of ``multiple``.

    Written as ``multiple * ceil(H / multiple)`` rather than ``H + (-H) % multiple``: under ``torch.export``
    with symbolic H the product form lets every later halving simplify exactly, which keeps tracing fast.
    """
    h, w = x.shape[-2], x.shape[-1]
    return F.pad(
        x,
        (
            0,
            multiple * ((w + multiple - 1) // multiple) - w,
            0,
            multiple * ((h + multiple - 1) // multiple) - h,
        ),
    )


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Nearest 2x upsampling of (B, C, h, w) to (B, C, 2h, 2w): cell (u, v) becomes [2u, 2u + 2) x [2v, 2v + 2)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class TrunkFeatures(NamedTuple):
    """The central group's features: stride 1 (B, stem, H, W), stride 2 (B, widths[0], ceil(H/2),
    ceil(W/2)) and the top-down stride-4 map (B, out_chans, ceil(H/4), ceil(W/4))."""

    stride1: torch.Tensor
    stride2: torch.Tensor
    stride4: torch.Tensor


class GroupFusion(nn.Module):
    """Fuses G groups' features into the central one: (B * G, C, h, w) -> (B * G, C, h, w), the central
    group's features plus a 1x1 convolution of all G groups' concatenated features (zero at start)."""

    def __init__(self, chans: int, groups: int):
        super().__init__()
        self.groups = groups
        self.mix = nn.Conv2d(groups * chans, chans, 1)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """x (B * G, C, h, w), ``batch`` = B."""
        g, c = self.groups, x.shape[1]
        grouped = x.reshape(batch, g, c, x.shape[2], x.shape[3])
        centre = g // 2
        fused = grouped[:, centre] + self.mix(grouped.flatten(1, 2))
        parts = (grouped[:, :centre], fused.unsqueeze(1), grouped[:, centre + 1 :])
        return torch.cat(parts, dim=1).flatten(0, 1)


class LesionTrunk(nn.Module):
    """The 2.5D trunk (see the module docstring).

    Args:
        num_slices: context slices S, a multiple of 3 (odd, as every context is: 3, 9, 15, ...).
        widths: channels of each level (stride 2, 4, 8, ...); at least 2 levels, so stride 4 exists.
        out_chans: channels of the stride-4 output; None takes ``widths[1]``.
        fuse_from: the first level whose output is fused across groups (every level after it is too).
        stem_chans: channels of the full-resolution stem; None takes ``widths[0] // 2`` (at least 4).
    """

    def __init__(
        self,
        num_slices: int = DEFAULT_NUM_SLICES,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        out_chans: int | None = None,
        fuse_from: int = DEFAULT_FUSE_FROM,
        stem_chans: int | None = None,
    ):
        super().__init__()
        if not (isinstance(num_slices, int) and num_slices >= 3 and num_slices % (2 * SLICES_PER_GROUP) == 3):
            raise ConfigError(
                "num_slices", f"must be an odd multiple of 3 (3, 9, 15, ...), got {num_slices!r}"
            )
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ConfigError("widths", f"need at least 2 levels of >= 1 channel, got {widths}")
        if not 0 <= fuse_from < len(widths):
            raise ConfigError("fuse_from", f"must be a level in 0..{len(widths) - 1}, got {fuse_from}")
        self.num_slices = num_slices
        self.groups = num_slices // SLICES_PER_GROUP
        self.widths = widths
        self.out_chans = int(out_chans) if out_chans is not None else widths[1]
        self.stem_chans = int(stem_chans) if stem_chans is not None else max(widths[0] // 2, 4)
        self.multiple = 2 ** len(widths)
        self.stem = conv_norm_act(SLICES_PER_GROUP, self.stem_chans)
        inputs = (self.stem_chans, *widths[:-1])
        self.levels = nn.ModuleList(
            nn.Sequential(conv_norm_act(i, o, stride=2), conv_norm_act(o, o)) for i, o in zip(inputs, widths)
        )
        # A fusion of one group would only add a residual 1x1 convolution: S = 3 runs as a plain 2D trunk.
        self.fusions = nn.ModuleDict(
            {str(level): GroupFusion(widths[level], self.groups) for level in range(fuse_from, len(widths))}
            if self.groups > 1
            else {}
        )
        self.laterals = nn.ModuleList(nn.Conv2d(w, self.out_chans, 1) for w in widths[1:])
        self.smooth = conv_norm_act(self.out_chans, self.out_chans)

    def forward(self, context: torch.Tensor) -> TrunkFeatures:
        """context (B, S, H, W) float, slices in ascending k with the key slice at S // 2 -> ``TrunkFeatures``."""
        if context.dim() != 4 or context.shape[1] != self.num_slices:
            raise InputError("context", f"expected (B, {self.num_slices}, H, W), got {tuple(context.shape)}")
        h, w = context.shape[2], context.shape[3]
        x = pad_to(context, self.multiple)
        # (B, S, H, W) -> (B * G, 3, H, W): group g holds slices 3g .. 3g + 2, groups of a sample adjacent.
        b = context.shape[0]
        x = x.reshape(b * self.groups, SLICES_PER_GROUP, x.shape[2], x.shape[3])
        centre = self.groups // 2
        x = self.stem(x)
        stem = self._central(x, b)[:, centre]
        central = []
        for level, block in enumerate(self.levels):
            x = block(x)
            if str(level) in self.fusions:
                x = self.fusions[str(level)](x, b)
            central.append(self._central(x, b)[:, centre])
        top = self.laterals[-1](central[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(central[1:-1])):
            top = lateral(feature) + upsample2(top)
        stride4 = self.smooth(top)
        return TrunkFeatures(
            stride1=crop_to(stem, h, w),
            stride2=crop_to(central[0], (h + 1) // 2, (w + 1) // 2),
            stride4=crop_to(stride4, (h + 3) // 4, (w + 3) // 4),
        )

    def _central(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """(B * G, C, h, w) -> (B, G, C, h, w)."""
        return x.reshape(batch, self.groups, x.shape[1], x.shape[2], x.shape[3])
