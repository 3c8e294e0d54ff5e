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
    x_ptr, y_ptr, m_ptr, g_ptr, win, part_ptr, maps_ptr,
    S, R, W, So, Ro, Wo, C1, C2, n_wb, n_sb,
    OFF: tl.constexpr, PAD: tl.constexpr, IS3D: tl.constexpr, HAS_MASK: tl.constexpr,
    SUMS: tl.constexpr, MAPS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """SUMS: the forward's partial sums (part (N, programs, 2)). MAPS: the derivative maps (maps
    (N, 4, So, Ro, Wo)) for the upstream gradient g (N, 2), or, with SUMS too, for g = (1, 0) (the SSIM
    sum alone; the adjoint kernel scales them per image). C1, C2: the SSIM constants.
    Grid: (N * n_wb * n_sb * Ro,)."""
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
        if SUMS:
            gs = 1.0
            gc = 0.0
        else:
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
            mo = maps_ptr + n * 4 * k_stride + o * (Ro * Wo) + r * Wo + cols
            tl.store(mo, wt * dux, mask=col_ok)
            tl.store(mo + k_stride, wt * duy, mask=col_ok)
            tl.store(mo + 2 * k_stride, wt * dv, mask=col_ok)
            tl.store(mo + 3 * k_stride, wt * dvxy, mask=col_ok)
        if SUMS:
            acc_s += wt * lum * cs
            acc_c += wt * cs
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = a1, a2, a3, a4, a5, a6, a7, a8, a9, na
        b0, b1, b2, b3, b4, b5, b6, b7, b8, b9 = b1, b2, b3, b4, b5, b6, b7, b8, b9, nb
        c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = c1, c2, c3, c4, c5, c6, c7, c8, c9, nc
        d0, d1, d2, d3, d4, d5, d6, d7, d8, d9 = d1, d2, d3, d4, d5, d6, d7, d8, d9, nd
        e0, e1, e2, e3, e4, e5, e6, e7, e8, e9 = e1, e2, e3, e4, e5, e6, e7, e8, e9, ne
    if SUMS:
        part = part_ptr + pid.to(tl.int64) * 2  # (N, programs, 2) in grid order
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
    mp_ptr, x_ptr, y_ptr, g_ptr, win, dx_ptr, dy_ptr,
    S, R, W, So, Ro, Wo, n_wb, n_sb,
    OFF: tl.constexpr, IS3D: tl.constexpr, SCALE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """dx, dy (N, S, R, W) from the derivative maps (N, 4, So, Ro, Wo); with SCALE, times the upstream
    gradient of the SSIM sum g[n, 0] (maps made for g = (1, 0)). Grid: (N * n_wb * n_sb * R,)."""
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
    if SCALE:
        gs = tl.load(g_ptr + 2 * n)
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
        gx = fa + 2 * xv * fv + yv * fxy
        gy = fb + 2 * yv * fv + xv * fxy
        if SCALE:
            gx = gs * gx
            gy = gs * gy
        tl.store(dx_ptr + off, gx, mask=col_ok)
        tl.store(dy_ptr + off, gy, mask=col_ok)
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


# Launch shapes (block_s, block_w, num_warps) per kernel ("stream": the forward and the backward's
# derivative maps; "adjoint": the backward's second kernel) and dimensionality. block_w is capped at the
# next power of two of the image width. Chosen from ``benchmarks/losses.py --tune`` (kernels alone,
# replayed from a CUDA graph); see benchmarks/README.md.
LAUNCH: dict[tuple[str, bool], tuple[int, int, int]] = {
    ("stream", False): (16, 64, 2),
    ("adjoint", False): (16, 128, 2),
    ("stream", True): (16, 128, 4),
    ("adjoint", True): (16, 128, 4),
}


class _Geometry:
    """(N, S, R, W) view of (N, H, W) images or (N, D, H, W) volumes and the valid output sizes."""

    def __init__(self, x: torch.Tensor, k: int):
        self.is3d = x.dim() == 4
        self.n = x.shape[0]
        self.s, self.r, self.w = x.shape[1:] if self.is3d else (x.shape[1], 1, x.shape[2])
        self.so, self.wo = self.s - k + 1, self.w - k + 1
        self.ro = self.r - k + 1 if self.is3d else 1
        self.off = (TAPS - k) // 2
        self.pad = (k - 1) // 2

    def launch(self, kernel: str, block_s: int | None, block_w: int | None, num_warps: int | None):
        """(block_s, block_w, num_warps): the table's, each overridden when given."""
        bs, bw, warps = LAUNCH[(kernel, self.is3d)]
        bw = block_w or min(bw, max(16, triton.next_power_of_2(self.w)))
        if num_warps is None:
            warps = max(1, min(warps, bw // 32)) if block_w is None else max(1, bw // 32)
        return block_s or bs, bw, num_warps or warps

    def grid(self, rows: int, length: int, width: int, block_s: int, block_w: int) -> tuple[int, int, tuple[int]]:
        """Strips along W, chunks along S and the 1D grid over all images (an image's programs are
        contiguous, so a partial-sum buffer in grid order is (N, programs, ...))."""
        n_wb, n_sb = triton.cdiv(width, block_w), triton.cdiv(length, block_s)
        return n_wb, n_sb, (self.n * n_wb * n_sb * rows,)


def _check(x: torch.Tensor, window: list[float]) -> None:
    if len(window) > TAPS:
        raise ValueError(f"the Triton SSIM kernels take windows of at most {TAPS} taps, got {len(window)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"expected (N, H, W) or (N, D, H, W), got shape {tuple(x.shape)}")


def stream(x, y, mask, g: _Geometry, win, c1, c2, shape, grad=None, fused=False):
    """One launch of the streaming kernel; returns (partial sums (N, programs, 2), derivative maps
    (N, 4, So, Ro, Wo)), either None when not asked for: the sums alone by default; the maps alone for
    an upstream gradient ``grad`` (N, 2); with ``fused``, both, the maps for the SSIM sum alone (g = (1, 0))."""
    block_s, block_w, warps = shape
    n_wb, n_sb, grid = g.grid(g.ro, g.so, g.wo, block_s, block_w)
    with_sums, with_maps = grad is None, grad is not None or fused
    part = maps = None
    if with_sums:
        part = torch.empty((g.n, grid[0] // g.n, 2), dtype=torch.float32, device=x.device)
    if with_maps:
        maps = torch.empty((g.n, 4, g.so, g.ro, g.wo), dtype=torch.float32, device=x.device)
    some = part if part is not None else maps  # a valid pointer for the arguments a mode ignores
    _ssim_stream_kernel[grid](
        x, y, mask if mask is not None else x, grad if grad is not None else some, win,
        part if part is not None else some, maps if maps is not None else some,
        g.s, g.r, g.w, g.so, g.ro, g.wo, c1, c2, n_wb, n_sb,
        OFF=g.off, PAD=g.pad, IS3D=g.is3d, HAS_MASK=mask is not None, SUMS=with_sums, MAPS=with_maps,
        BLOCK_S=block_s, BLOCK_W=block_w, num_warps=warps,
    )  # fmt: skip
    return part, maps


def adjoint(maps, x, y, g: _Geometry, win, shape, scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch of the adjoint kernel: (dx, dy) from the derivative maps; ``scale`` (N, 2): the
    upstream gradient whose SSIM column multiplies maps made by a fused forward."""
    block_s, block_w, warps = shape
    dx, dy = torch.empty_like(x), torch.empty_like(y)
    n_wb, n_sb, grid = g.grid(g.r, g.s, g.w, block_s, block_w)
    _ssim_adjoint_kernel[grid](
        maps, x, y, scale if scale is not None else maps, win, dx, dy,
        g.s, g.r, g.w, g.so, g.ro, g.wo, n_wb, n_sb,
        OFF=g.off, IS3D=g.is3d, SCALE=scale is not None, BLOCK_S=block_s, BLOCK_W=block_w, num_warps=warps,
    )  # fmt: skip
    return dx, dy


def _prepare(x, y, mask, window):
    _check(x, window)
    mask = mask.contiguous() if mask is not None else None
    g = _Geometry(x, len(window))
    return x.contiguous(), y.contiguous(), mask, g, _padded_window(tuple(window), x.device)


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
    """Triton twin of ``_ssim_torch.ssim_sums``: (N, 2) float32 = [sum w SSIM, sum w CS] per image.
    ``block_s``, ``block_w``, ``num_warps`` override the launch shape (tests, tuning)."""
    x, y, mask, g, win = _prepare(x, y, mask, window)
    part, _ = stream(x, y, mask, g, win, c1, c2, g.launch("stream", block_s, block_w, num_warps))
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
    x, y, mask, g, win = _prepare(x, y, mask, window)
    grad = grad.to(torch.float32).contiguous()
    _, maps = stream(x, y, mask, g, win, c1, c2, g.launch("stream", block_s, block_w, num_warps), grad=grad)
    return adjoint(maps, x, y, g, win, g.launch("adjoint", block_s, block_w, num_warps))


def ssim_sums_and_maps(x, y, mask, window, c1, c2, block_s=None, block_w=None, num_warps=None):
    """The forward and the first half of the backward in one pass, for a caller that will only need
    the gradient of the SSIM sums (not the CS sums): ((N, 2) sums as ``ssim_sums``, the derivative maps
    for a unit gradient of each image's SSIM sum). ``backward_from_maps`` finishes the backward: two
    kernels per step instead of three, at the price of keeping the maps (4 floats per valid output)."""
    x, y, mask, g, win = _prepare(x, y, mask, window)
    part, maps = stream(x, y, mask, g, win, c1, c2, g.launch("stream", block_s, block_w, num_warps), fused=True)
    return part.sum(1), maps


def backward_from_maps(grad, maps, x, y, window, block_s=None, block_w=None, num_warps=None):
    """(dx, dy) of sum(grad[:, 0] * SSIM sums) from ``ssim_sums_and_maps``'s maps; grad[:, 1] (the CS
    sums' gradient) must be zero and is not read."""
    x, y, _, g, win = _prepare(x, y, None, window)
    grad = grad.to(torch.float32).contiguous()
    return adjoint(maps, x, y, g, win, g.launch("adjoint", block_s, block_w, num_warps), scale=grad)
