"""Dice and cross-entropy sums in pure PyTorch: the CPU path and the reference for the Triton kernels.

Shapes: ``logits`` (B, C, V) with V the flattened voxels; ``target`` either labels (B, V) (any
integer or float dtype, values in [0, C)) or dense one-hot / probabilities (B, C, V); ``weight``
optional voxel weights (B, V); ``class_weight`` optional (C,).

Per image and class the op reduces I = sum w p t, P = sum w p^q and T = sum w t^q (q = 2 when
``squared``, else 1) with p = activation(logits), and, when ``with_ce``, the cross-entropy numerator
and denominator of one image:

- softmax, labels: sum w cw[y] (lse - z_y) and sum w cw[y] (torch's weighted mean);
- softmax, dense targets: sum w sum_c cw_c t_c (lse - z_c) and sum w;
- sigmoid: binary cross-entropy with ``class_weight`` as pos_weight, summed over classes, and C sum w.

The backward is written out so that the custom op carries it and the Triton backward has a formula.
Labels with softmax (or no activation) take a path that gathers and scatters at the label instead of
building the one-hot (B, C, V) target: about half the passes over the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("softmax", "sigmoid", "none")


def _prob(logits: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    return logits


def _dense(target: torch.Tensor, c: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, C, V) targets: one-hot of (B, V) labels, or the dense targets as given."""
    if target.dim() == 2:
        classes = torch.arange(c, device=target.device).view(1, c, 1)
        return (target.long().unsqueeze(1) == classes).to(dtype)
    return target.to(dtype)


def _class_weight(class_weight: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    if class_weight is None:
        return logits.new_ones(logits.shape[1]).view(1, -1, 1)
    return class_weight.to(logits.dtype).view(1, -1, 1)


def _voxel_weight(weight: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    if weight is None:
        return logits.new_ones(1, 1, 1)
    return weight.to(logits.dtype).unsqueeze(1)


def _dense_sums(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    class_weight: torch.Tensor | None,
    activation: str,
    squared: bool,
    with_ce: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, _ = logits.shape
    p = _prob(logits, activation)
    t = _dense(target, c, logits.dtype)
    w = _voxel_weight(weight, logits)
    wp = w * p
    q = 2 if squared else 1
    sums = torch.stack([(wp * t).sum(-1), (wp * p if squared else wp).sum(-1), (w * t**q).sum(-1)], -1)
    if not with_ce:
        return sums, logits.new_zeros(b, 2)
    cw = _class_weight(class_weight, logits)
    w = w.expand(b, 1, logits.shape[2])
    if activation == "softmax":
        nll = torch.logsumexp(logits, dim=1, keepdim=True) - logits
        if target.dim() == 2:
            wy = w * (cw * t).sum(1, keepdim=True)
            ce = torch.stack([(wy * (t * nll).sum(1, keepdim=True)).sum((1, 2)), wy.sum((1, 2))], -1)
        else:
            ce = torch.stack([(w * cw * t * nll).sum((1, 2)), w.sum((1, 2))], -1)
    else:
        bce = cw * t * F.softplus(-logits) + (1 - t) * F.softplus(logits)
        ce = torch.stack([(w * bce).sum((1, 2)), c * w.sum((1, 2))], -1)
    return sums, ce


def _dense_backward(
    grad_sums: torch.Tensor,
    grad_ce: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    class_weight: torch.Tensor | None,
    activation: str,
    squared: bool,
    with_ce: bool,
) -> torch.Tensor:
    c = logits.shape[1]
    p = _prob(logits, activation)
    t = _dense(target, c, logits.dtype)
    w = _voxel_weight(weight, logits)
    g_i, g_p = grad_sums[..., 0:1], grad_sums[..., 1:2]
    dp = w * (g_i * t + g_p * (2 * p if squared else 1))
    if activation == "softmax":
        dz = p * (dp - (p * dp).sum(1, keepdim=True))
    elif activation == "sigmoid":
        dz = p * (1 - p) * dp
    else:
        dz = dp
    if with_ce:
        g = grad_ce[:, 0].view(-1, 1, 1) * w
        cw = _class_weight(class_weight, logits)
        if activation == "softmax":
            # d/dz of s * lse - sum_c cw_c t_c z_c with s = sum_c cw_c t_c (cw[y] for labels).
            dz = dz + g * ((cw * t).sum(1, keepdim=True) * p - cw * t)
        else:
            dz = dz + g * (p * (cw * t + 1 - t) - cw * t)
    return dz


def _label_path(target: torch.Tensor, activation: str, with_ce: bool) -> bool:
    return target.dim() == 2 and (activation == "softmax" or (activation == "none" and not with_ce))


def _label_sums(logits, labels, weight, class_weight, activation, squared, with_ce):
    b, c, v = logits.shape
    y = labels.long()
    if activation == "softmax":
        # p and the log-sum-exp in one sweep: faster on CPU than log_softmax over the class axis, and
        # the CE at the label (lse - z_y) stays finite where p_y underflows.
        top = logits.amax(1, keepdim=True)
        e = (logits - top).exp_()
        total = e.sum(1, keepdim=True)
        p, lse = e.div_(total), (top + total.log())[:, 0]
    else:
        p = logits
    wv = weight if weight is not None else logits.new_ones(b, v)
    pp = p * p if squared else p
    # Float64 accumulators: scatter_add adds one value at a time (on CUDA through atomics), and a
    # float32 matrix-vector product over a million voxels drifted by 1e-3 relative on CPU.
    acc = torch.float64
    sums = torch.stack(
        [
            logits.new_zeros(b, c, dtype=acc).scatter_add_(1, y, (wv * p.gather(1, y[:, None])[:, 0]).to(acc)),
            (pp * wv[:, None]).sum(-1, dtype=acc),
            logits.new_zeros(b, c, dtype=acc).scatter_add_(1, y, wv.to(acc)),
        ],
        -1,
    ).to(logits.dtype)
    if not with_ce:
        return sums, logits.new_zeros(b, 2)
    wy = wv * class_weight[y] if class_weight is not None else wv
    nll = lse - logits.gather(1, y[:, None])[:, 0]
    return sums, torch.stack([(wy * nll).sum(1), wy.sum(1)], -1)


def _label_backward(grad_sums, grad_ce, logits, labels, weight, class_weight, activation, squared, with_ce):
    y = labels.long()
    p = torch.softmax(logits, dim=1) if activation == "softmax" else logits
    g_i, g_p = grad_sums[..., 0], grad_sums[..., 1]
    gpt = g_p[:, :, None] * (2 * p if squared else 1)  # the P term of dp / w
    py = p.gather(1, y[:, None])[:, 0]
    giy = g_i.gather(1, y)
    if activation == "softmax":
        # dz_c = w p_c (gpt_c - s + a) + [c = y] w (g_i[y] p_y - a), with s = sum_k p_k dp_k / w and
        # a = g_ce cw[y] the cross-entropy's share.
        s = giy * py + (p * gpt).sum(1)
        a = grad_ce[:, :1] * (class_weight[y] if class_weight is not None else 1) if with_ce else 0
        dz = p * (gpt - (s - a)[:, None])
        at_label = giy * py - a
    else:
        dz = gpt.expand_as(p).clone()
        at_label = giy
    if weight is not None:
        dz = dz * weight[:, None]
        at_label = at_label * weight
    return dz.scatter_add_(1, y[:, None], at_label[:, None])


def dice_sums(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    class_weight: torch.Tensor | None,
    activation: str,
    squared: bool,
    with_ce: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns sums (B, C, 3) = [I, P, T] and ce (B, 2) = [numerator, denominator]."""
    fn = _label_sums if _label_path(target, activation, with_ce) else _dense_sums
    return fn(logits, target, weight, class_weight, activation, squared, with_ce)


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
) -> torch.Tensor:
    """d/dlogits (B, C, V) of sum(grad_sums * sums) + sum(grad_ce * ce); targets get no gradient."""
    fn = _label_backward if _label_path(target, activation, with_ce) else _dense_backward
    return fn(grad_sums, grad_ce, logits, target, weight, class_weight, activation, squared, with_ce)
