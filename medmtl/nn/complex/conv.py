"""Complex convolutions and transposed convolutions on real tensors with a trailing (real, imag) pair.

(Wr + iWi) * (xr + ixi) = (Wr*xr - Wi*xi) + i(Wr*xi + Wi*xr) is computed with real convolutions, in one
of two exact formulations, picked per call by what measured fastest (torch 2.11, 2 CPU threads of a
Xeon, and an H200; fwd+bwd of one 3x3 layer):

- block: one real convolution over the channel-stacked [xr; xi] with the block weight [[Wr, -Wi],
  [Wi, Wr]]. Fastest on GPU everywhere (about 2x the others) and on CPU for narrow layers (2->32
  channels at 256^2: 23 ms against 35 ms), at the price of two layout copies.
- gauss: Gauss's three-multiplication trick, k1 = Wr*(xr + xi), k2 = (Wr + Wi)*xi, k3 = (Wi - Wr)*xr,
  real = k1 - k2, imag = k1 + k3. Three real convolutions with 3/4 of the block's arithmetic: on CPU it
  wins from 32 input channels per group (84 against 87 ms at 32->32, 256^2; 42 against 48 ms at
  128->128, 64^2), and in onnxruntime too.

Both export to ONNX as plain Conv/Add/Sub/Transpose/Reshape nodes; an export traced on CPU records the
CPU choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError
from medmtl.nn.complex.init import complex_kaiming_

# Gauss's trick pays on CPU from this many input channels per group (measured; see the module docstring).
_GAUSS_MIN_CHANNELS = 32

_Size = int | tuple[int, ...]
_Bilinear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _tuple(value: _Size, n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def to_stacked(x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """(B, C, *S, 2) -> (B, 2C, *S), channels ordered (group, real/imag, channel-in-group)."""
    b, c, *spatial, _ = x.shape
    n = len(spatial)
    x = x.reshape(b, groups, c // groups, *spatial, 2)
    # Explicit permutation rather than movedim(-1, ...): the TorchScript exporter mishandles negative dims.
    return x.permute(0, 1, n + 3, 2, *range(3, n + 3)).reshape(b, 2 * c, *spatial)


def from_stacked(y: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """(B, 2O, *S) with channels ordered (group, real/imag, channel-in-group) -> (B, O, *S, 2)."""
    b, c2, *spatial = y.shape
    n = len(spatial)
    y = y.reshape(b, groups, 2, c2 // (2 * groups), *spatial)
    return y.permute(0, 1, 3, *range(4, n + 4), 2).reshape(b, c2 // 2, *spatial, 2)


def _block_weight(weight: torch.Tensor, groups: int, transposed: bool) -> torch.Tensor:
    """Pair weight (A, Bg, *k, 2) -> real block weight (2A, 2Bg, *k) in the stacked channel order.

    For a convolution A = out channels and Bg = in channels per group; for a transposed one A = in
    channels and Bg = out channels per group (PyTorch's weight layouts).
    """
    wr, wi = weight.unbind(-1)
    a, bg, *kernel = wr.shape
    wr = wr.reshape(groups, a // groups, bg, *kernel)
    wi = wi.reshape(groups, a // groups, bg, *kernel)
    if transposed:  # rows are inputs: xr feeds (Wr to real, Wi to imag), xi feeds (-Wi, Wr)
        first, second = torch.cat((wr, wi), 2), torch.cat((-wi, wr), 2)
    else:  # rows are outputs: real reads (Wr from xr, -Wi from xi), imag reads (Wi, Wr)
        first, second = torch.cat((wr, -wi), 2), torch.cat((wi, wr), 2)
    return torch.stack((first, second), 1).reshape(2 * a, 2 * bg, *kernel)


def _block_bias(bias: torch.Tensor, groups: int) -> torch.Tensor:
    """(O, 2) -> (2O,) in the stacked channel order."""
    o = bias.shape[0]
    return bias.reshape(groups, o // groups, 2).permute(0, 2, 1).reshape(2 * o)


def _block(x, weight, bias, op: _Bilinear, groups: int, transposed: bool) -> torch.Tensor:
    b = None if bias is None else _block_bias(bias, groups)
    y = op(to_stacked(x, groups), _block_weight(weight, groups, transposed), b)
    return from_stacked(y, groups)


def _gauss_parts(xr, xi, weight, bias, op: _Bilinear) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss's three convolutions on the input's parts -> the output's (real, imag) parts."""
    wr, wi = weight.unbind(-1)
    br, bi = (None, None) if bias is None else (-bias[:, 0], bias[:, 1])
    k1 = op(xr + xi, wr, None)
    k2 = op(xi, wr + wi, br)  # carries -br so that real = k1 - k2 gains +br
    k3 = op(xr, wi - wr, bi)
    return k1 - k2, k1 + k3


def _gauss(x, weight, bias, op: _Bilinear) -> torch.Tensor:
    return torch.stack(_gauss_parts(*x.unbind(-1), weight, bias, op), dim=-1)


def _gauss_stacked(x, weight, bias, op: _Bilinear) -> torch.Tensor:
    """``_gauss`` on the stacked layout (B, 2C, *S) of one group: the parts are channel halves, so no
    copies to split them and one channel concatenation to join them."""
    c = x.shape[1] // 2
    return torch.cat(_gauss_parts(x[:, :c], x[:, c:], weight, bias, op), dim=1)


_REAL_OPS: dict[tuple[int, bool], Callable[..., torch.Tensor]] = {
    (2, False): F.conv2d,
    (3, False): F.conv3d,
    (2, True): F.conv_transpose2d,
    (3, True): F.conv_transpose3d,
}


class _ComplexConvBase(nn.Module):
    """Parameters, initialisation and dispatch; subclasses fix the dimensionality and direction."""

    _spatial_dims: ClassVar[int]
    _transposed: ClassVar[bool]

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: _Size, groups: int, bias: bool, **op_kwargs
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ConfigError(
                type(self).__name__,
                f"in_channels {in_channels} and out_channels {out_channels} must both divide "
                f"by groups {groups}",
            )
        n = self._spatial_dims
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, n)
        self.op_kwargs = {k: v if isinstance(v, str) else _tuple(v, n) for k, v in op_kwargs.items()}
        rows, cols = (in_channels, out_channels) if self._transposed else (out_channels, in_channels)
        self.weight = nn.Parameter(torch.empty(rows, cols // groups, *self.kernel_size, 2))
        self.bias = nn.Parameter(torch.empty(out_channels, 2)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # fan_in counts the complex input terms summed into one output; a transposed convolution's
        # output sees on average prod(kernel / stride) taps of every input channel in its group.
        taps = math.prod(self.kernel_size)
        if self._transposed:
            taps /= math.prod(self.op_kwargs["stride"])
        complex_kaiming_(self.weight, max(1.0, self.in_channels // self.groups * taps))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        real_op = _REAL_OPS[self._spatial_dims, self._transposed]
        return real_op(x, weight, bias, groups=self.groups, **self.op_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *spatial, 2) -> (B, C_out, *spatial_out, 2); spatial_out as PyTorch's real layer."""
        if x.dim() != self._spatial_dims + 3 or x.shape[1] != self.in_channels or x.shape[-1] != 2:
            raise ValueError(
                f"{type(self).__name__}: expected (B, {self.in_channels}, "
                f"<{self._spatial_dims} spatial dims>, 2), got {tuple(x.shape)}"
            )
        if x.device.type == "cpu" and self.in_channels // self.groups >= _GAUSS_MIN_CHANNELS:
            return _gauss(x, self.weight, self.bias, self._op)
        return _block(x, self.weight, self.bias, self._op, self.groups, self._transposed)

    def forward_stacked(self, x: torch.Tensor) -> torch.Tensor:
        """The same map on the stacked layout: (B, 2 C_in, *spatial) -> (B, 2 C_out, *spatial_out), channels
        ordered (group, real/imag, channel in group) as ``to_stacked`` makes them. A network that stays in
        this layout between layers (``medmtl.models.complex_unet``) skips the two layout copies of each
        block-form layer and the part splits and pair stacking of each Gauss-form one."""
        if x.dim() != self._spatial_dims + 2 or x.shape[1] != 2 * self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected stacked (B, {2 * self.in_channels}, "
                f"<{self._spatial_dims} spatial dims>), got {tuple(x.shape)}"
            )
        if x.device.type == "cpu" and self.groups == 1 and self.in_channels >= _GAUSS_MIN_CHANNELS:
            return _gauss_stacked(x, self.weight, self.bias, self._op)
        b = None if self.bias is None else _block_bias(self.bias, self.groups)
        return self._op(x, _block_weight(self.weight, self.groups, self._transposed), b)


class _ComplexConv(_ComplexConvBase):
    _transposed = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Size,
        stride: _Size = 1,
        padding: _Size | str = 0,
        dilation: _Size = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            groups,
            bias,
            stride=stride,
            padding=padding,
            dilation=dilation,
        )


class _ComplexConvTranspose(_ComplexConvBase):
    _transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Size,
        stride: _Size = 1,
        padding: _Size = 0,
        output_padding: _Size = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: _Size = 1,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            groups,
            bias,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
        )


class ComplexConv2d(_ComplexConv):
    """Complex 2D convolution; arguments as ``torch.nn.Conv2d`` (zero padding only).

    ``weight``: (C_out, C_in / groups, kH, kW, 2), ``bias``: (C_out, 2).
    """

    _spatial_dims = 2


class ComplexConv3d(_ComplexConv):
    """Complex 3D convolution; arguments as ``torch.nn.Conv3d`` (zero padding only).

    ``weight``: (C_out, C_in / groups, kD, kH, kW, 2), ``bias``: (C_out, 2).
    """

    _spatial_dims = 3


class ComplexConvTranspose2d(_ComplexConvTranspose):
    """Complex 2D transposed convolution; arguments as ``torch.nn.ConvTranspose2d``.

    ``weight``: (C_in, C_out / groups, kH, kW, 2), ``bias``: (C_out, 2).
    """

    _spatial_dims = 2


class ComplexConvTranspose3d(_ComplexConvTranspose):
    """Complex 3D transposed convolution; arguments as ``torch.nn.ConvTranspose3d``.

    ``weight``: (C_in, C_out / groups, kD, kH, kW, 2), ``bias``: (C_out, 2).
    """

    _spatial_dims = 3
