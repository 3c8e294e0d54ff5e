"""Fused SSIM forward and backward in Triton (imported only when the Triton path runs).

Layout. An image (one of the N = batch x channel images) is seen as (S, R, W): 2D images are
(H, 1, W) and volumes (D, H, W). Each program owns one output row ``r`` (3D), a strip of
``BLOCK_W`` columns and a chunk of ``BLOCK_S`` rows along S, and streams along S:

- the in-plane filter (along W, and along R for volumes) reads shifted vectors straight from global
  memory, so the five moments x, y, x^2, y^2, xy of one input row come out of one pass over x and y;
- the filter along S keeps the last 10 filtered rows of each moment in registers (a ring written out
  as plain variables: Triton has no addressable shared memory, and a loop-carried ring is what it
  keeps in registers), so every input row is read and filtered once per chunk.

Forward (``MAPS=False``): SSIM and CS at every valid output, weighted by the mask at the window
centre, summed per program into a partial buffer that PyTorch sums per image. Two stages rather than
atomics, so the result is deterministic.

Backward: the same streaming pass recomputes the moments (nothing is saved by the forward) and writes
the four derivative maps dG/d(ux, uy, E[x^2]=E[y^2], E[xy]) already scaled by the upstream gradient
and the mask (``MAPS=True``); a second streaming kernel applies the adjoint filter to them and forms
dx = Fa + 2 x Fv + y Fxy, dy = Fb + 2 y Fv + x Fxy. The maps are the only intermediate: the adjoint
needs them at shifted in-plane positions owned by other programs, which in Triton means memory.

Windows of up to ``TAPS`` = 11 taps run here; they are zero-padded to 11 around the centre.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from medmtl.losses._window import TRITON_TAPS as TAPS


@triton.jit
def _inside(i, n, cols):
    """0 <= i < n for a scalar i, as a vector shaped like cols (Triton's interpreter cannot mask a load
    with a scalar condition broadcast against a vector one)."""
    iv = cols * 0 + i
    return (iv >= 0) & (iv < n)


@triton.jit
def _row(px, py, win, cols, ok, W, OFF: tl.constexpr):
    """The horizontal pass of x, y, x^2, y^2, xy for one input row (px, py at its column 0): for the
    output columns ``cols``, sum_k win[k] * v[cols + k - OFF]. Zero taps are skipped at compile time."""
    z = tl.zeros(cols.shape, tl.float32)
    a, b, c, d, e = z, z, z, z, z
    for k in tl.static_range(11):
        if k >= OFF:
            if k <= 10 - OFF:
                cc = cols + (k - OFF)
                m = ok & (cc >= 0) & (cc < W)
                wk = tl.load(win + k)
                xv = tl.load(px + cc, mask=m, other=0.0).to(tl.float32)
                yv = tl.load(py + cc, mask=m, other=0.0).to(tl.float32)
                wx = wk * xv
                wy = wk * yv
                a += wx
                b += wy
                c += wx * xv
                d += wy * yv
                e += wx * yv
    return a, b, c, d, e


@triton.jit
def _plane(px, py, win, r, cols, ok, R, W, OFF: tl.constexpr, IS3D: tl.constexpr):
    """In-plane filtered moments of one input plane (px, py at its first element) for output row r:
    the W pass for 2D; for 3D, the W passes of input rows r - OFF .. r + 10 - OFF, weighted by win."""
    if IS3D:
        z = tl.zeros(cols.shape, tl.float32)
        a, b, c, d, e = z, z, z, z, z
        # A runtime loop: unrolling 11 rows x 11 taps runs out of registers.
        for j in range(OFF, 11 - OFF):
            rr = r + j - OFF
            wj = tl.load(win + j)
            ra, rb, rc, rd, re = _row(px + rr * W, py + rr * W, win, cols, ok & _inside(rr, R, cols), W, OFF)
            a += wj * ra
            b += wj * rb
            c += wj * rc
            d += wj * rd
            e += wj * re
    else:
        a, b, c, d, e = _row(px, py, win, cols, ok, W, OFF)
    return a, b, c, d, e


@triton.jit
def _zeros10(BLOCK_W: tl.constexpr):
    """Ten zero vectors, each a separate tensor. Triton's compiler makes a variable loop-carried only
    when the loop body gives it a value other than the one it entered with. Were the ring's registers
    one shared zero tensor, the shift ``a0, a1, ... = a1, a2, ...`` would hand each the value it
    already had, so none but the newest would be carried and the compiled filter would read zeros
    (the interpreter, running plain Python, would not show it)."""
    return (
        tl.zeros([BLOCK_W], tl.float32), tl.zeros([BLOCK_W], tl.float32), tl.zeros([BLOCK_W], tl.float32),
        tl.zeros([BLOCK_W], tl.float32), tl.zeros([BLOCK_W], tl.float32), tl.zeros([BLOCK_W], tl.float32),
        tl.zeros([BLOCK_W], tl.float32), tl.zeros([BLOCK_W], tl.float32), tl.zeros([BLOCK_W], tl.float32),
        tl.zeros([BLOCK_W], tl.float32),
    )  # fmt: skip


@triton.jit
def _ring(h0, h1, h2, h3, h4, h5, h6, h7, h8, h9, h10, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10,
          OFF: tl.constexpr):  # fmt: skip
    """The filter along S: the ring's 10 older rows h0..h9 and the newest h10, weighted; the zero taps
    of a window shorter than 11 are skipped at compile time."""
    acc = w5 * h5
    if OFF <= 4:
        acc += w4 * h4 + w6 * h6
    if OFF <= 3:
        acc += w3 * h3 + w7 * h7
    if OFF <= 2:
        acc += w2 * h2 + w8 * h8
    if OFF <= 1:
        acc += w1 * h1 + w9 * h9
    if OFF <= 0:
        acc += w0 * h0 + w10 * h10
    return acc


@triton.jit
def _terms(ux, uy, uxx, uyy, uxy, c1, c2):
    """Luminance, contrast-structure and their denominators B, D (population variances)."""
    uxuy = ux * uy
    b = ux * ux + uy * uy + c1
    d = uxx + uyy + c1 + c2 - b
    return (2 * uxuy + c1) / b, (2 * (uxy - uxuy) + c2) / d, b, d


@triton.jit
def _ssim_stream_kernel(
    x_ptr, y_ptr, m_ptr, g_ptr, win, out_ptr,
    S, R, W, So, Ro, Wo, C1, C2, n_wb, n_sb,
    OFF: tl.constexpr, PAD: tl.constexpr, IS3D: tl.constexpr, HAS_MASK: tl.constexpr,
    MAPS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """Forward partial sums (MAPS=False; out (N, programs, 2)) or the backward's derivative maps
    (MAPS=True; out (N, 4, So, Ro, Wo)). C1, C2: the SSIM constants. Grid: (N * n_wb * n_sb * Ro,)."""
    pid = tl.program_id(0)
    per_image = n_wb * n_sb * Ro
    n = (pid // per_image).to(tl.int64)
    local = pid % per_image
    wb = local % n_wb
    sb = (local // n_wb) % n_sb
    r = local // (n_wb * n_sb)
    cols = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    col_ok = cols < Wo
    plane = R * W
    img = n * S * plane
    px = x_ptr + img
    py = y_ptr + img
    w0, w1, w2, w3 = tl.load(win + 0), tl.load(win + 1), tl.load(win + 2), tl.load(win + 3)
    w4, w5, w6, w7 = tl.load(win + 4), tl.load(win + 5), tl.load(win + 6), tl.load(win + 7)
    w8, w9, w10 = tl.load(win + 8), tl.load(win + 9), tl.load(win + 10)
    s0 = sb * BLOCK_S
    # Ring of the 10 input rows before the newest, per moment: a = x, b = y, c = x^2, d = y^2, e = xy.
    # Each starts as its own zero tensor: see _zeros10.
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = _zeros10(BLOCK_W)
    b0, b1, b2, b3, b4, b5, b6, b7, b8, b9 = _zeros10(BLOCK_W)
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = _zeros10(BLOCK_W)
    d0, d1, d2, d3, d4, d5, d6, d7, d8, d9 = _zeros10(BLOCK_W)
    e0, e1, e2, e3, e4, e5, e6, e7, e8, e9 = _zeros10(BLOCK_W)
    for i in range(OFF, 10):  # earlier rows only meet zero taps
        s = s0 - OFF + i
        na, nb, nc, nd, ne = _plane(px + s * plane, py + s * plane, win, r, cols, _inside(s, S, cols), R, W, OFF, IS3D)
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = a1, a2, a3, a4, a5, a6, a7, a8, a9, na
        b0, b1, b2, b3, b4, b5, b6, b7, b8, b9 = b1, b2, b3, b4, b5, b6, b7, b8, b9, nb
        c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = c1, c2, c3, c4, c5, c6, c7, c8, c9, nc
        d0, d1, d2, d3, d4, d5, d6, d7, d8, d9 = d1, d2, d3, d4, d5, d6, d7, d8, d9, nd
        e0, e1, e2, e3, e4, e5, e6, e7, e8, e9 = e1, e2, e3, e4, e5, e6, e7, e8, e9, ne
    acc_s = tl.zeros([BLOCK_W], tl.float32)
    acc_c = tl.zeros([BLOCK_W], tl.float32)
    if MAPS:
        gs = tl.load(g_ptr + 2 * n)
        gc = tl.load(g_ptr + 2 * n + 1)
    if IS3D:
        m_row = r + PAD
    else:
        m_row = r
    for o in range(s0, tl.minimum(s0 + BLOCK_S, So)):
        s = o + 10 - OFF
        na, nb, nc, nd, ne = _plane(px + s * plane, py + s * plane, win, r, cols, _inside(s, S, cols), R, W, OFF, IS3D)
        ux = _ring(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, na, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, OFF)
        uy = _ring(b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, nb, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, OFF)
        uxx = _ring(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, nc, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, OFF)
        uyy = _ring(d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, nd, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, OFF)
        uxy = _ring(e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, ne, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, OFF)
        lum, cs, bden, dden = _terms(ux, uy, uxx, uyy, uxy, C1, C2)
        if HAS_MASK:
            m_off = img + (o + PAD) * plane + m_row * W + cols + PAD
            wt = tl.load(m_ptr + m_off, mask=col_ok, other=0.0).to(tl.float32)
        else:
            wt = tl.where(col_ok, 1.0, 0.0)
        if MAPS:
            # dG with G = gs * l * cs + gc * cs, chained to the five local means (see _ssim_torch).
            t = (gs * lum + gc) / dden
            dvxy = 2 * t
            dv = -t * cs
            q = 2 * gs * cs / bden
            dux = q * (uy - lum * ux) - 2 * ux * dv - uy * dvxy
            duy = q * (ux - lum * uy) - 2 * uy * dv - ux * dvxy
            k_stride = So * Ro * Wo
            mo = out_ptr + n * 4 * k_stride + o * (Ro * Wo) + r * Wo + cols
            tl.store(mo, wt * dux, mask=col_ok)
            tl.store(mo + k_stride, wt * duy, mask=col_ok)
            tl.store(mo + 2 * k_stride, wt * dv, mask=col_ok)
            tl.store(mo + 3 * k_stride, wt * dvxy, mask=col_ok)
        else:
            acc_s += wt * lum * cs
            acc_c += wt * cs
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = a1, a2, a3, a4, a5, a6, a7, a8, a9, na
        b0, b1, b2, b3, b4, b5, b6, b7, b8, b9 = b1, b2, b3, b4, b5, b6, b7, b8, b9, nb
        c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = c1, c2, c3, c4, c5, c6, c7, c8, c9, nc
        d0, d1, d2, d3, d4, d5, d6, d7, d8, d9 = d1, d2, d3, d4, d5, d6, d7, d8, d9, nd
        e0, e1, e2, e3, e4, e5, e6, e7, e8, e9 = e1, e2, e3, e4, e5, e6, e7, e8, e9, ne
    if not MAPS:
        part = out_ptr + pid.to(tl.int64) * 2  # (N, programs, 2) in grid order
        tl.store(part, tl.sum(acc_s, axis=0))
        tl.store(part + 1, tl.sum(acc_c, axis=0))


@triton.jit
def _adj_row(pm, win, cols, ok, Wo, K, OFF: tl.constexpr):
    """Adjoint horizontal pass of one row of the four maps (map k at pm + k * K, column 0):
    F(cols) = sum_l win[l] * M[cols - l + OFF]."""
    z = tl.zeros(cols.shape, tl.float32)
    a, b, c, d = z, z, z, z
    for k in tl.static_range(11):
        if k >= OFF:
            if k <= 10 - OFF:
                cc = cols + (OFF - k)
                m = ok & (cc >= 0) & (cc < Wo)
                wk = tl.load(win + k)
                a += wk * tl.load(pm + cc, mask=m, other=0.0)
                b += wk * tl.load(pm + K + cc, mask=m, other=0.0)
                c += wk * tl.load(pm + 2 * K + cc, mask=m, other=0.0)
                d += wk * tl.load(pm + 3 * K + cc, mask=m, other=0.0)
    return a, b, c, d


@triton.jit
def _adj_plane(pm, win, r, cols, ok, Ro, Wo, K, OFF: tl.constexpr, IS3D: tl.constexpr):
    """Adjoint in-plane filter of one map plane (pm at its first element) for gradient row r."""
    if IS3D:
        z = tl.zeros(cols.shape, tl.float32)
        a, b, c, d = z, z, z, z
        for j in range(OFF, 11 - OFF):
            rr = r + OFF - j
            wj = tl.load(win + j)
            ra, rb, rc, rd = _adj_row(pm + rr * Wo, win, cols, ok & _inside(rr, Ro, cols), Wo, K, OFF)
            a += wj * ra
            b += wj * rb
            c += wj * rc
            d += wj * rd
    else:
        a, b, c, d = _adj_row(pm, win, cols, ok, Wo, K, OFF)
    return a, b, c, d


@triton.jit
def _ssim_adjoint_kernel(
    mp_ptr, x_ptr, y_ptr, win, dx_ptr, dy_ptr,
    S, R, W, So, Ro, Wo, n_wb, n_sb,
    OFF: tl.constexpr, IS3D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """dx, dy (N, S, R, W) from the derivative maps (N, 4, So, Ro, Wo). Grid: (N * n_wb * n_sb * R,)."""
    pid = tl.program_id(0)
    per_image = n_wb * n_sb * R
    n = (pid // per_image).to(tl.int64)
    local = pid % per_image
    wb = local % n_wb
    sb = (local // n_wb) % n_sb
    r = local // (n_wb * n_sb)
    cols = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    col_ok = cols < W
    K = So * Ro * Wo
    map_plane = Ro * Wo
    pm = mp_ptr + n * 4 * K
    img = n * S * R * W
    w0, w1, w2, w3 = tl.load(win + 0), tl.load(win + 1), tl.load(win + 2), tl.load(win + 3)
    w4, w5, w6, w7 = tl.load(win + 4), tl.load(win + 5), tl.load(win + 6), tl.load(win + 7)
    w8, w9, w10 = tl.load(win + 8), tl.load(win + 9), tl.load(win + 10)
    q0 = sb * BLOCK_S
    # Ring of the 10 in-plane filtered map rows before the newest: a = dux, b = duy, c = dv, d = dvxy.
    # Each starts as its own zero tensor: see _zeros10.
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = _zeros10(BLOCK_W)
    b0, b1, b2, b3, b4, b5, b6, b7, b8, b9 = _zeros10(BLOCK_W)
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = _zeros10(BLOCK_W)
    d0, d1, d2, d3, d4, d5, d6, d7, d8, d9 = _zeros10(BLOCK_W)
    for i in range(OFF, 10):  # earlier rows only meet zero taps
        p = q0 + OFF - 10 + i
        na, nb, nc, nd = _adj_plane(pm + p * map_plane, win, r, cols, _inside(p, So, cols), Ro, Wo, K, OFF, IS3D)
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = a1, a2, a3, a4, a5, a6, a7, a8, a9, na
        b0, b1, b2, b3, b4, b5, b6, b7, b8, b9 = b1, b2, b3, b4, b5, b6, b7, b8, b9, nb
        c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = c1, c2, c3, c4, c5, c6, c7, c8, c9, nc
        d0, d1, d2, d3, d4, d5, d6, d7, d8, d9 = d1, d2, d3, d4, d5, d6, d7, d8, d9, nd
    for q in range(q0, tl.minimum(q0 + BLOCK_S, S)):
        p = q + OFF
        na, nb, nc, nd = _adj_plane(pm + p * map_plane, win, r, cols, _inside(p, So, cols), Ro, Wo, K, OFF, IS3D)
        # Adjoint along S: the newest map row (q + OFF) takes w0, the oldest (q + OFF - 10) w10.
        fa = _ring(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, na, w10, w9, w8, w7, w6, w5, w4, w3, w2, w1, w0, OFF)
        fb = _ring(b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, nb, w10, w9, w8, w7, w6, w5, w4, w3, w2, w1, w0, OFF)
        fv = _ring(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, nc, w10, w9, w8, w7, w6, w5, w4, w3, w2, w1, w0, OFF)
        fxy = _ring(d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, nd, w10, w9, w8, w7, w6, w5, w4, w3, w2, w1, w0, OFF)
        off = img + q * (R * W) + r * W + cols
        xv = tl.load(x_ptr + off, mask=col_ok, other=0.0).to(tl.float32)
        yv = tl.load(y_ptr + off, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(dx_ptr + off, fa + 2 * xv * fv + yv * fxy, mask=col_ok)
        tl.store(dy_ptr + off, fb + 2 * yv * fv + xv * fxy, mask=col_ok)
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = a1, a2, a3, a4, a5, a6, a7, a8, a9, na
        b0, b1, b2, b3, b4, b5, b6, b7, b8, b9 = b1, b2, b3, b4, b5, b6, b7, b8, b9, nb
        c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = c1, c2, c3, c4, c5, c6, c7, c8, c9, nc
        d0, d1, d2, d3, d4, d5, d6, d7, d8, d9 = d1, d2, d3, d4, d5, d6, d7, d8, d9, nd


@functools.lru_cache(maxsize=32)
def _padded_window(window: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The window zero-padded to TAPS taps around its centre (cached: no host-to-device copy per call)."""
    off = (TAPS - len(window)) // 2
    taps = [0.0] * off + list(window) + [0.0] * (TAPS - off - len(window))
    return torch.tensor(taps, dtype=torch.float32, device=device)


class _Geometry:
    """(N, S, R, W) view of (N, H, W) images or (N, D, H, W) volumes, the valid output sizes and blocks."""

    def __init__(self, x: torch.Tensor, k: int, block_s: int | None, block_w: int | None):
        self.is3d = x.dim() == 4
        self.n = x.shape[0]
        self.s, self.r, self.w = x.shape[1:] if self.is3d else (x.shape[1], 1, x.shape[2])
        self.so, self.wo = self.s - k + 1, self.w - k + 1
        self.ro = self.r - k + 1 if self.is3d else 1
        self.off = (TAPS - k) // 2
        self.pad = (k - 1) // 2
        self.block_s = block_s or 32
        self.block_w = block_w or min(64, max(16, triton.next_power_of_2(self.w)))

    def grid(self, rows: int, length: int, width: int) -> tuple[int, int, tuple[int]]:
        """Strips along W, chunks along S and the 1D grid over all images (an image's programs are
        contiguous, so a partial-sum buffer in grid order is (N, programs, ...))."""
        n_wb, n_sb = triton.cdiv(width, self.block_w), triton.cdiv(length, self.block_s)
        return n_wb, n_sb, (self.n * n_wb * n_sb * rows,)


def _check(x: torch.Tensor, window: list[float]) -> None:
    if len(window) > TAPS:
        raise ValueError(f"the Triton SSIM kernels take windows of at most {TAPS} taps, got {len(window)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"expected (N, H, W) or (N, D, H, W), got shape {tuple(x.shape)}")


def ssim_sums(
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    window: list[float],
    c1: float,
    c2: float,
    block_s: int | None = None,
    block_w: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Triton twin of ``_ssim_torch.ssim_sums``: (N, 2) float32 = [sum w SSIM, sum w CS] per image."""
    _check(x, window)
    x, y = x.contiguous(), y.contiguous()
    mask = mask.contiguous() if mask is not None else None
    g = _Geometry(x, len(window), block_s, block_w)
    n_wb, n_sb, grid = g.grid(g.ro, g.so, g.wo)
    part = torch.empty((g.n, grid[0] // g.n, 2), dtype=torch.float32, device=x.device)
    _ssim_stream_kernel[grid](
        x, y, mask if mask is not None else x, part, _padded_window(tuple(window), x.device), part,
        g.s, g.r, g.w, g.so, g.ro, g.wo, c1, c2, n_wb, n_sb,
        OFF=g.off, PAD=g.pad, IS3D=g.is3d, HAS_MASK=mask is not None, MAPS=False,
        BLOCK_S=g.block_s, BLOCK_W=g.block_w, num_warps=num_warps or max(1, g.block_w // 32),
    )  # fmt: skip
    return part.sum(1)


def ssim_sums_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    window: list[float],
    c1: float,
    c2: float,
    block_s: int | None = None,
    block_w: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of ``_ssim_torch.ssim_sums_backward``: (dx, dy) in x's dtype, each (N, *S)."""
    _check(x, window)
    x, y = x.contiguous(), y.contiguous()
    mask = mask.contiguous() if mask is not None else None
    grad = grad.to(torch.float32).contiguous()
    g = _Geometry(x, len(window), block_s, block_w)
    win = _padded_window(tuple(window), x.device)
    warps = num_warps or max(1, g.block_w // 32)
    maps = torch.empty((g.n, 4, g.so, g.ro, g.wo), dtype=torch.float32, device=x.device)
    n_wb, n_sb, grid = g.grid(g.ro, g.so, g.wo)
    _ssim_stream_kernel[grid](
        x, y, mask if mask is not None else x, grad, win, maps,
        g.s, g.r, g.w, g.so, g.ro, g.wo, c1, c2, n_wb, n_sb,
        OFF=g.off, PAD=g.pad, IS3D=g.is3d, HAS_MASK=mask is not None, MAPS=True,
        BLOCK_S=g.block_s, BLOCK_W=g.block_w, num_warps=warps,
    )  # fmt: skip
    dx, dy = torch.empty_like(x), torch.empty_like(y)
    n_wb, n_sb, grid = g.grid(g.r, g.s, g.w)
    _ssim_adjoint_kernel[grid](
        maps, x, y, win, dx, dy, g.s, g.r, g.w, g.so, g.ro, g.wo, n_wb, n_sb,
        OFF=g.off, IS3D=g.is3d, BLOCK_S=g.block_s, BLOCK_W=g.block_w, num_warps=warps,
    )  # fmt: skip
    return dx, dy
