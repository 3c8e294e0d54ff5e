"""``medmtl::ssim_sums`` and its backward as ``torch.library`` custom ops.

The default (any-device) body is the pure-PyTorch path; a CUDA kernel registration launches Triton
when the caller asked for it (``use_triton``), Triton can take the input (float32/float16/bfloat16,
windows of at most 11 taps) and is installed. Fake implementations let ``torch.compile`` trace through
the ops, and ``register_autograd`` gives the forward op the backward op as its gradient.

Dtypes: float64 stays float64 (for gradcheck); everything else accumulates and returns float32 sums.
Gradients come back in the input's dtype.

``sums`` is what the losses call. In eager mode it takes the Triton kernels through a plain
``torch.autograd.Function`` rather than the custom op: the same launches with about 0.1 ms less host
time per forward + backward (the custom op's dispatch and autograd wrappers). Under ``torch.compile``
it takes the custom op, which the compiler traces.
"""

from __future__ import annotations

import torch

from medmtl.losses import _ssim_torch
from medmtl.losses._window import TRITON_TAPS
from medmtl.losses.dispatch import refuse_double_backward


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _triton_takes(x: torch.Tensor, window: list[float], use_triton: bool) -> bool:
    return use_triton and x.dtype != torch.float64 and len(window) <= TRITON_TAPS


def _as_compute(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(_sum_dtype(t.dtype))


def _forward_torch(x, y, mask, window, c1, c2):
    return _ssim_torch.ssim_sums(_as_compute(x), _as_compute(y), _as_compute(mask), window, c1, c2)


def _backward_torch(grad, x, y, mask, window, c1, c2):
    dx, dy = _ssim_torch.ssim_sums_backward(
        _as_compute(grad), _as_compute(x), _as_compute(y), _as_compute(mask), window, c1, c2
    )
    return dx.to(x.dtype), dy.to(y.dtype)


@torch.library.custom_op("medmtl::ssim_sums", mutates_args=())
def ssim_sums(
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    window: list[float],
    c1: float,
    c2: float,
    use_triton: bool,
) -> torch.Tensor:
    """(N, 2) = [sum w SSIM, sum w CS] over the valid region of each of the N images (N, *S)."""
    return _forward_torch(x, y, mask, window, c1, c2)


@ssim_sums.register_kernel("cuda")
def _ssim_sums_cuda(x, y, mask, window, c1, c2, use_triton):
    if _triton_takes(x, window, use_triton):
        from medmtl.losses import _triton_ssim

        return _triton_ssim.ssim_sums(x, y, mask, window, c1, c2)
    return _forward_torch(x, y, mask, window, c1, c2)


@ssim_sums.register_fake
def _ssim_sums_fake(x, y, mask, window, c1, c2, use_triton):
    return x.new_empty((x.shape[0], 2), dtype=_sum_dtype(x.dtype))


@torch.library.custom_op("medmtl::ssim_sums_backward", mutates_args=())
def ssim_sums_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    window: list[float],
    c1: float,
    c2: float,
    use_triton: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (dx, dy) of sum(grad * ssim_sums(...)), in the dtypes of x and y."""
    return _backward_torch(grad, x, y, mask, window, c1, c2)


@ssim_sums_backward.register_kernel("cuda")
def _ssim_sums_backward_cuda(grad, x, y, mask, window, c1, c2, use_triton):
    if _triton_takes(x, window, use_triton):
        from medmtl.losses import _triton_ssim

        return _triton_ssim.ssim_sums_backward(grad, x, y, mask, window, c1, c2)
    return _backward_torch(grad, x, y, mask, window, c1, c2)


@ssim_sums_backward.register_fake
def _ssim_sums_backward_fake(grad, x, y, mask, window, c1, c2, use_triton):
    return x.new_empty(x.shape), y.new_empty(y.shape)


def _setup_context(ctx, inputs, output):
    x, y, mask, window, c1, c2, use_triton = inputs
    ctx.save_for_backward(x, y, mask)
    ctx.params = (window, c1, c2, use_triton)


def _backward(ctx, grad):
    x, y, mask = ctx.saved_tensors
    dx, dy = torch.ops.medmtl.ssim_sums_backward(grad, x, y, mask, *ctx.params)
    return dx, dy, None, None, None, None, None


ssim_sums.register_autograd(_backward, setup_context=_setup_context)


class _TritonSums(torch.autograd.Function):
    """Eager route to the Triton kernels: ``ssim_sums`` and its backward without the custom op. With
    ``fuse`` (a gradient will follow and the caller promises that the CS sums get none, as ``ssim`` does),
    the forward also writes the backward's derivative maps, so the backward is one kernel instead of two
    (the maps are kept in between: 16 bytes per valid output pixel). The backward is a kernel, so it has
    no gradient of its own: a second-order gradient raises, as through the custom op."""

    @staticmethod
    def forward(ctx, x, y, mask, window, c1, c2, fuse):
        from medmtl.losses import _triton_ssim

        ctx.params = (window, c1, c2)
        maps = None
        if fuse:
            out, maps = _triton_ssim.ssim_sums_and_maps(x, y, mask, window, c1, c2)
        else:
            out = _triton_ssim.ssim_sums(x, y, mask, window, c1, c2)
        ctx.save_for_backward(x, y, mask, maps)
        return out

    @staticmethod
    def backward(ctx, grad):
        from medmtl.losses import _triton_ssim

        x, y, mask, maps = ctx.saved_tensors
        refuse_double_backward(x, y, where="ssim")
        if maps is not None:
            dx, dy = _triton_ssim.backward_from_maps(grad, maps, x, y, ctx.params[0])
        else:
            dx, dy = _triton_ssim.ssim_sums_backward(grad, x, y, mask, *ctx.params)
        return dx, dy, None, None, None, None, None


def sums(x, y, mask, window, c1, c2, use_triton: bool, cs_grad: bool = True) -> torch.Tensor:
    """``ssim_sums`` through the cheapest route: the eager Triton function when Triton takes the call
    and nothing is being compiled, else the custom op. ``cs_grad`` False: the caller will not
    differentiate the CS sums (column 1), which lets the eager route fuse (see ``_TritonSums``)."""
    if x.is_cuda and _triton_takes(x, window, use_triton) and not torch.compiler.is_compiling():
        fuse = not cs_grad and torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
        return _TritonSums.apply(x, y, mask, window, c1, c2, fuse)
    return torch.ops.medmtl.ssim_sums(x, y, mask, window, c1, c2, use_triton)
