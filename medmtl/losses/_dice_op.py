"""``medmtl::dice_sums`` and its backward as ``torch.library`` custom ops (see ``_ssim_op`` for the
pattern: PyTorch default body, Triton on CUDA when asked, fake implementations, autograd).

Dtypes: float64 logits stay float64; everything else accumulates in and returns float32 sums. The
logits' gradient comes back in the logits' dtype.

``sums`` is what the losses call: in eager mode the Triton path skips the custom op's dispatch through a
plain ``torch.autograd.Function`` (as in ``_ssim_op``); under ``torch.compile`` it takes the custom op.
"""

from __future__ import annotations

import torch

from medmtl.losses import _dice_torch
from medmtl.losses.dispatch import refuse_double_backward


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _compute(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Floating tensors in the accumulation dtype; integer labels unchanged."""
    if t is None or not t.is_floating_point():
        return t
    return t.to(_sum_dtype(like.dtype))


def _triton_takes(logits: torch.Tensor, use_triton: bool) -> bool:
    return use_triton and logits.dtype != torch.float64


def _forward_torch(logits, target, weight, class_weight, activation, squared, with_ce):
    return _dice_torch.dice_sums(
        _compute(logits, logits), _compute(target, logits), _compute(weight, logits),
        _compute(class_weight, logits), activation, squared, with_ce,
    )  # fmt: skip


def _backward_torch(grad_sums, grad_ce, logits, target, weight, class_weight, activation, squared, with_ce):
    dz = _dice_torch.dice_sums_backward(
        _compute(grad_sums, logits), _compute(grad_ce, logits), _compute(logits, logits),
        _compute(target, logits), _compute(weight, logits), _compute(class_weight, logits),
        activation, squared, with_ce,
    )  # fmt: skip
    return dz.to(logits.dtype)


@torch.library.custom_op("medmtl::dice_sums", mutates_args=())
def dice_sums(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    class_weight: torch.Tensor | None,
    activation: str,
    squared: bool,
    with_ce: bool,
    use_triton: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image sums (B, C, 3) = [I, P, T] and cross-entropy (B, 2) = [numerator, denominator] of
    logits (B, C, V) against labels (B, V) or dense targets (B, C, V); see ``_dice_torch``."""
    return _forward_torch(logits, target, weight, class_weight, activation, squared, with_ce)


@dice_sums.register_kernel("cuda")
def _dice_sums_cuda(logits, target, weight, class_weight, activation, squared, with_ce, use_triton):
    if _triton_takes(logits, use_triton):
        from medmtl.losses import _triton_dice

        return _triton_dice.dice_sums(logits, target, weight, class_weight, activation, squared, with_ce)
    return _forward_torch(logits, target, weight, class_weight, activation, squared, with_ce)


@dice_sums.register_fake
def _dice_sums_fake(logits, target, weight, class_weight, activation, squared, with_ce, use_triton):
    b, c = logits.shape[:2]
    dtype = _sum_dtype(logits.dtype)
    return logits.new_empty((b, c, 3), dtype=dtype), logits.new_empty((b, 2), dtype=dtype)


@torch.library.custom_op("medmtl::dice_sums_backward", mutates_args=())
def dice_sums_backward(
    grad_sums: torch.Tensor,
    grad_ce: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    class_weight: torch.Tensor | None,
    activation: str,
    squared: bool,
    with_ce: bool,
    use_triton: bool,
) -> torch.Tensor:
    """Gradient (B, C, V) of sum(grad_sums * sums) + sum(grad_ce * ce) w.r.t. logits."""
    return _backward_torch(grad_sums, grad_ce, logits, target, weight, class_weight, activation, squared, with_ce)


@dice_sums_backward.register_kernel("cuda")
def _dice_sums_backward_cuda(
    grad_sums, grad_ce, logits, target, weight, class_weight, activation, squared, with_ce, use_triton
):
    if _triton_takes(logits, use_triton):
        from medmtl.losses import _triton_dice

        return _triton_dice.dice_sums_backward(
            grad_sums, grad_ce, logits, target, weight, class_weight, activation, squared, with_ce
        )
    return _backward_torch(grad_sums, grad_ce, logits, target, weight, class_weight, activation, squared, with_ce)


@dice_sums_backward.register_fake
def _dice_sums_backward_fake(
    grad_sums, grad_ce, logits, target, weight, class_weight, activation, squared, with_ce, use_triton
):
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output):
    logits, target, weight, class_weight, activation, squared, with_ce, use_triton = inputs
    ctx.save_for_backward(logits, target, weight, class_weight)
    ctx.params = (activation, squared, with_ce, use_triton)


def _backward(ctx, grad_sums, grad_ce):
    logits, target, weight, class_weight = ctx.saved_tensors
    dz = torch.ops.medmtl.dice_sums_backward(grad_sums, grad_ce, logits, target, weight, class_weight, *ctx.params)
    return dz, None, None, None, None, None, None, None


dice_sums.register_autograd(_backward, setup_context=_setup_context)


class _TritonSums(torch.autograd.Function):
    """Eager route to the Triton kernels: ``dice_sums`` and its backward without the custom op."""

    @staticmethod
    def forward(ctx, logits, target, weight, class_weight, activation, squared, with_ce):
        from medmtl.losses import _triton_dice

        ctx.save_for_backward(logits, target, weight, class_weight)
        ctx.params = (activation, squared, with_ce)
        return _triton_dice.dice_sums(logits, target, weight, class_weight, activation, squared, with_ce)

    @staticmethod
    def backward(ctx, grad_sums, grad_ce):
        from medmtl.losses import _triton_dice

        logits, target, weight, class_weight = ctx.saved_tensors
        refuse_double_backward(logits, where="dice")  # a kernel: no second-order gradient
        dz = _triton_dice.dice_sums_backward(grad_sums, grad_ce, logits, target, weight, class_weight, *ctx.params)
        return dz, None, None, None, None, None, None


def sums(logits, target, weight, class_weight, activation, squared, with_ce, use_triton: bool):
    """``dice_sums`` through the cheapest route: the eager Triton function when Triton takes the call
    and nothing is being compiled, else the custom op."""
    if logits.is_cuda and _triton_takes(logits, use_triton) and not torch.compiler.is_compiling():
        return _TritonSums.apply(logits, target, weight, class_weight, activation, squared, with_ce)
    return torch.ops.medmtl.dice_sums(logits, target, weight, class_weight, activation, squared, with_ce, use_triton)
