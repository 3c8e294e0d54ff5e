"""Fused Dice / cross-entropy forward and backward in Triton (imported only when the Triton path runs).

One program owns ``ITERS`` consecutive blocks of ``BLOCK`` voxels of one image and loads each block's
logits as a (C, BLOCK) tile: the softmax (or sigmoid), the one-hot comparison with the labels, the
products for I, P, T and the cross-entropy all happen in registers, and the per-class sums are
reduced once at the end into a partial buffer that PyTorch sums per image (two stages, so the result
is deterministic). The backward reads the same tile again, recomputes p and writes d/dlogits once:
the logits are read twice and written once in all, the least a two-pass loss can do.

Formulas and shapes are those of ``medmtl.losses._dice_torch``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_SOFTMAX, _SIGMOID, _NONE = 0, 1, 2


@triton.jit
def _tile(z_ptr, t_ptr, w_ptr, cw_ptr, b, v, C, V,
          ACT: tl.constexpr, LABELS: tl.constexpr, HAS_W: tl.constexpr, HAS_CW: tl.constexpr,
          C_P2: tl.constexpr):  # fmt: skip
    """Load one (C_P2, BLOCK) tile: logits z, probabilities p, targets t, voxel weights wv (BLOCK,),
    class weights cw (C_P2,), the tile's validity, and for softmax the log-sum-exp (BLOCK,)."""
    ch = tl.arange(0, C_P2)
    cm = ch < C
    vm = v < V
    m2 = cm[:, None] & vm[None, :]
    z = tl.load(z_ptr + b * C * V + ch[:, None] * V + v[None, :], mask=m2, other=0.0).to(tl.float32)
    lse = tl.zeros(v.shape, tl.float32)
    if ACT == 0:
        zz = tl.where(cm[:, None], z, float("-inf"))
        mx = tl.max(zz, axis=0)
        e = tl.exp(zz - mx[None, :])
        se = tl.sum(e, axis=0)
        p = e / se[None, :]
        lse = mx + tl.log(se)
    elif ACT == 1:
        p = tl.where(m2, tl.sigmoid(z), 0.0)
    else:
        p = z
    if LABELS:
        lab = tl.load(t_ptr + b * V + v, mask=vm, other=0).to(tl.int32)
        t = tl.where(m2 & (ch[:, None] == lab[None, :]), 1.0, 0.0)
    else:
        t = tl.load(t_ptr + b * C * V + ch[:, None] * V + v[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_W:
        wv = tl.load(w_ptr + b * V + v, mask=vm, other=0.0).to(tl.float32)
    else:
        wv = tl.where(vm, 1.0, 0.0)
    if HAS_CW:
        cw = tl.load(cw_ptr + ch, mask=cm, other=0.0).to(tl.float32)
    else:
        cw = tl.where(cm, 1.0, 0.0)
    return z, p, t, wv, cw, m2, lse


@triton.jit
def _dice_fwd_kernel(z_ptr, t_ptr, w_ptr, cw_ptr, out_ptr, C, V, iters,
                     ACT: tl.constexpr, LABELS: tl.constexpr, HAS_W: tl.constexpr, HAS_CW: tl.constexpr,
                     SQUARED: tl.constexpr, WITH_CE: tl.constexpr, C_P2: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """Partial sums out (B, programs, 3 * C_P2 + 2): I, P, T per class, then CE numerator, denominator.
    Grid: (programs, B)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    acc_i = tl.zeros([C_P2, BLOCK], tl.float32)
    acc_p = tl.zeros([C_P2, BLOCK], tl.float32)
    acc_t = tl.zeros([C_P2, BLOCK], tl.float32)
    acc_num = tl.zeros([BLOCK], tl.float32)
    acc_den = tl.zeros([BLOCK], tl.float32)
    for it in range(iters):
        v = (pid * iters + it) * BLOCK + tl.arange(0, BLOCK)
        z, p, t, wv, cw, m2, lse = _tile(z_ptr, t_ptr, w_ptr, cw_ptr, b, v, C, V,
                                         ACT, LABELS, HAS_W, HAS_CW, C_P2)  # fmt: skip
        wt = tl.where(m2, wv[None, :], 0.0)
        wp = wt * p
        acc_i += wp * t
        if SQUARED:
            acc_p += wp * p
            acc_t += wt * t * t
        else:
            acc_p += wp
            acc_t += wt * t
        if WITH_CE:
            if ACT == 0:
                # sum_c cw_c t_c (lse - z_c): for labels that is cw[y] (lse - z_y).
                acc_num += wv * tl.sum(tl.where(m2, cw[:, None] * t * (lse[None, :] - z), 0.0), axis=0)
                if LABELS:
                    acc_den += wv * tl.sum(cw[:, None] * t, axis=0)
                else:
                    acc_den += wv
            else:
                # BCE with pos_weight cw: cw t softplus(-z) + (1 - t) softplus(z).
                sp = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))
                bce = cw[:, None] * t * (sp - z) + (1.0 - t) * sp
                acc_num += wv * tl.sum(tl.where(m2, bce, 0.0), axis=0)
                acc_den += wv * C
    ch = tl.arange(0, C_P2)
    part = out_ptr + (b * tl.num_programs(0) + pid) * (3 * C_P2 + 2)
    tl.store(part + ch, tl.sum(acc_i, axis=1))
    tl.store(part + C_P2 + ch, tl.sum(acc_p, axis=1))
    tl.store(part + 2 * C_P2 + ch, tl.sum(acc_t, axis=1))
    tl.store(part + 3 * C_P2, tl.sum(acc_num, axis=0))
    tl.store(part + 3 * C_P2 + 1, tl.sum(acc_den, axis=0))


@triton.jit
def _dice_bwd_kernel(z_ptr, t_ptr, w_ptr, cw_ptr, gs_ptr, gce_ptr, dz_ptr, C, V, iters,
                     ACT: tl.constexpr, LABELS: tl.constexpr, HAS_W: tl.constexpr, HAS_CW: tl.constexpr,
                     SQUARED: tl.constexpr, WITH_CE: tl.constexpr, C_P2: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """dz (B, C, V) from the gradients of the sums gs (B, C, 3) and of the CE gce (B, 2)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    ch = tl.arange(0, C_P2)
    cm = ch < C
    g_i = tl.load(gs_ptr + (b * C + ch) * 3, mask=cm, other=0.0)
    g_p = tl.load(gs_ptr + (b * C + ch) * 3 + 1, mask=cm, other=0.0)
    g_ce = tl.load(gce_ptr + b * 2)
    for it in range(iters):
        v = (pid * iters + it) * BLOCK + tl.arange(0, BLOCK)
        _z, p, t, wv, cw, m2, _lse = _tile(z_ptr, t_ptr, w_ptr, cw_ptr, b, v, C, V,
                                         ACT, LABELS, HAS_W, HAS_CW, C_P2)  # fmt: skip
        if SQUARED:
            dp = wv[None, :] * (g_i[:, None] * t + 2.0 * g_p[:, None] * p)
        else:
            dp = wv[None, :] * (g_i[:, None] * t + g_p[:, None])
        if ACT == 0:
            dz = p * (dp - tl.sum(p * dp, axis=0)[None, :])
        elif ACT == 1:
            dz = p * (1.0 - p) * dp
        else:
            dz = dp
        if WITH_CE:
            g = g_ce * wv[None, :]
            ct = cw[:, None] * t
            if ACT == 0:
                dz += g * (tl.sum(ct, axis=0)[None, :] * p - ct)
            else:
                dz += g * (p * (ct + 1.0 - t) - ct)
        tl.store(dz_ptr + b * C * V + ch[:, None] * V + v[None, :], dz, mask=m2)


def _launch_shape(c: int, v: int, block: int | None, iters: int | None) -> tuple[int, int, int, int]:
    """(C_P2, BLOCK, programs per image, iterations per program). Default: tiles of about 2048
    logits (at least 16 voxels wide, so more for over 128 classes), each program sweeping up to 4 of them
    so the partial buffer stays small (with 4 warps, the fastest of ``benchmarks/losses.py --tune`` on an
    H200 at 4x4x128x128x64: forward 0.069 ms against 0.092 for 4096-logit tiles and 8 warps; see
    benchmarks/README.md)."""
    c_p2 = triton.next_power_of_2(c)
    block = block or max(16, min(512, 2048 // c_p2, triton.next_power_of_2(v)))
    blocks = triton.cdiv(v, block)
    iters = min(iters or 4, blocks)
    return c_p2, block, triton.cdiv(blocks, iters), iters


def _common(logits, target, weight, class_weight, activation):
    logits = logits.contiguous()
    target = target.contiguous()
    weight = weight.contiguous() if weight is not None else None
    class_weight = class_weight.contiguous() if class_weight is not None else None
    act = {"softmax": _SOFTMAX, "sigmoid": _SIGMOID, "none": _NONE}[activation]
    return logits, target, weight, class_weight, act


def dice_sums(logits, target, weight, class_weight, activation, squared, with_ce,
              block=None, iters=None, num_warps=4):  # fmt: skip
    """Triton twin of ``_dice_torch.dice_sums``: sums (B, C, 3) and ce (B, 2), float32. ``block``,
    ``iters`` and ``num_warps`` override the launch shape (for tuning)."""
    logits, target, weight, class_weight, act = _common(logits, target, weight, class_weight, activation)
    b, c, v = logits.shape
    c_p2, block, programs, iters = _launch_shape(c, v, block, iters)
    part = torch.empty((b, programs, 3 * c_p2 + 2), dtype=torch.float32, device=logits.device)
    _dice_fwd_kernel[(programs, b)](
        logits, target, weight if weight is not None else logits,
        class_weight if class_weight is not None else logits, part, c, v, iters,
        ACT=act, LABELS=target.dim() == 2, HAS_W=weight is not None, HAS_CW=class_weight is not None,
        SQUARED=squared, WITH_CE=with_ce, C_P2=c_p2, BLOCK=block, num_warps=num_warps,
    )  # fmt: skip
    total = part.sum(1)
    sums = total[:, : 3 * c_p2].view(b, 3, c_p2)[:, :, :c].transpose(1, 2)
    return sums.contiguous(), total[:, 3 * c_p2 :].contiguous()


def dice_sums_backward(grad_sums, grad_ce, logits, target, weight, class_weight, activation, squared, with_ce,
                       block=None, iters=None, num_warps=4):  # fmt: skip
    """Triton twin of ``_dice_torch.dice_sums_backward``: d/dlogits (B, C, V) in the logits' dtype."""
    logits, target, weight, class_weight, act = _common(logits, target, weight, class_weight, activation)
    b, c, v = logits.shape
    c_p2, block, programs, iters = _launch_shape(c, v, block, iters)
    dz = torch.empty_like(logits)
    _dice_bwd_kernel[(programs, b)](
        logits, target, weight if weight is not None else logits,
        class_weight if class_weight is not None else logits,
        grad_sums.to(torch.float32).contiguous(), grad_ce.to(torch.float32).contiguous(), dz, c, v, iters,
        ACT=act, LABELS=target.dim() == 2, HAS_W=weight is not None, HAS_CW=class_weight is not None,
        SQUARED=squared, WITH_CE=with_ce, C_P2=c_p2, BLOCK=block, num_warps=num_warps,
    )  # fmt: skip
    return dz
