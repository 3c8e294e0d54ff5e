"""Centred, orthonormal 2D FFTs on real tensors with a trailing (real, imag) pair.

``fft2c(x) == fftshift(fft2(ifftshift(x), norm="ortho"))`` over the two axes before the pair, which is
what ``numpy.fft`` gives with the same shifts.

Two formulations of the same maths:

- eager and training: ``torch.fft`` on a complex view (O(N log N));
- inside ``torch.export`` (ONNX export): products with centred DFT matrices built in the graph from the
  symbolic H and W, so the graph holds only Range/Mul/Mod/Cos/Sin/MatMul and works for any H x W. ONNX's
  ``DFT`` runs slowly in onnxruntime on the CPU and cannot shift by a symbolic H // 2 (DESIGN.md, "Facts
  measured here"); the matrices need no shift, because they index frequencies and positions from the centre.
"""

from __future__ import annotations

import math

import torch

_DIMS = (-2, -1)


def _check(x: torch.Tensor) -> None:
    if x.ndim < 3 or x.shape[-1] != 2:
        raise ValueError(f"expected a tensor of shape (..., H, W, 2), got {tuple(x.shape)}")


def _exporting() -> bool:
    return torch.compiler.is_exporting()


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Image -> k-space. ``x``: (..., H, W, 2) -> (..., H, W, 2)."""
    _check(x)
    if _exporting():
        return dft2c_matmul(x, inverse=False)
    c = torch.view_as_complex(x.contiguous())
    c = torch.fft.ifftshift(c, dim=_DIMS)
    c = torch.fft.fft2(c, dim=_DIMS, norm="ortho")
    return torch.view_as_real(torch.fft.fftshift(c, dim=_DIMS))


def ifft2c(x: torch.Tensor) -> torch.Tensor:
    """k-space -> image. ``x``: (..., H, W, 2) -> (..., H, W, 2)."""
    _check(x)
    if _exporting():
        return dft2c_matmul(x, inverse=True)
    c = torch.view_as_complex(x.contiguous())
    c = torch.fft.ifftshift(c, dim=_DIMS)
    c = torch.fft.ifft2(c, dim=_DIMS, norm="ortho")
    return torch.view_as_real(torch.fft.fftshift(c, dim=_DIMS))


def centred_dft_matrix(
    n: int | torch.SymInt, inverse: bool, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts (n, n) of the orthonormal centred DFT matrix (symmetric).

    Entry (k, m) is exp(-+2 pi i (k - c)(m - c) / n) / sqrt(n) with c = n // 2: output frequency k and input
    position m both counted from the centre, which is what the ifftshift/fftshift pair does. The product is
    reduced modulo n in integers first, so the phase stays exact in float32 for large n.
    """
    positions = torch.arange(n, device=device)
    size = positions[-1:] + 1  # n as a (1,) tensor: exported, a Python-number n would be a symbol
    centred = positions - size // 2
    # Phases and their cosines in float32 at least, whatever ``dtype`` (a float16 phase is off by 1e-3 rad).
    work = torch.promote_types(dtype, torch.float32)
    phase = torch.remainder(centred[:, None] * centred[None, :], size).to(work) * (2 * math.pi)
    phase = phase / size.to(work)
    scale = torch.rsqrt(size.to(work))
    sign = 1.0 if inverse else -1.0
    return (torch.cos(phase) * scale).to(dtype), (torch.sin(phase) * (sign * scale)).to(dtype)


def dft2c_matmul(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    """``fft2c`` (or ``ifft2c`` with ``inverse``) as dense matrix products: F_H X F_W, F symmetric.

    x (..., H, W, 2) -> (..., H, W, 2). O(H W (H + W)) work instead of O(H W log(H W)): use it where the
    graph must not contain FFTs (export), not for training. Six real matrix products.
    """
    _check(x)
    h, w = x.shape[-3], x.shape[-2]
    re, im = x[..., 0], x[..., 1]
    # Each complex product in three real ones (Gauss) rather than four.
    # Along W: X F_W (F_W symmetric, so no transpose).
    fr, fi = centred_dft_matrix(w, inverse, x.dtype, x.device)
    re, im = complex_matmul_right(re, im, fr, fi - fr, fr + fi)
    # Along H: F_H X.
    fr, fi = centred_dft_matrix(h, inverse, x.dtype, x.device)
    k1, k2, k3 = fr @ (re + im), (fi - fr) @ re, (fr + fi) @ im
    return torch.stack((k1 - k3, k1 + k2), dim=-1)


def line_projection_matrix(weights: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts (..., W, W) of Q = F_W diag(m) F_W^H: for a mask m (..., W) that varies along W
    only (Cartesian lines), ``ifft2c(m * fft2c(x)) == x @ Q`` along W, rows untouched.

    The FFT along H commutes with a mask that is constant along H and cancels against its inverse, so the
    whole masked round trip is one W x W product. Built in float32 at least, returned in ``dtype``.
    """
    work = torch.promote_types(dtype, torch.float32)
    m = weights.to(work)
    fr, fi = centred_dft_matrix(m.shape[-1], False, work, m.device)
    # x @ Q: forward along W (x @ F, F symmetric), mask, inverse along W (@ conj(F)).
    ar, ai = fr * m[..., None, :], fi * m[..., None, :]
    qr, qi = ar @ fr + ai @ fi, ai @ fr - ar @ fi
    return qr.to(dtype), qi.to(dtype)


def complex_matmul_right(
    xr: torch.Tensor, xi: torch.Tensor, qr: torch.Tensor, q_diff: torch.Tensor, q_sum: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(xr + i xi) (..., H, W) times the complex matrix qr + i qi (..., W, W) along W, as (real, imag) parts,
    in three real products instead of four (Gauss). The matrix comes as qr, q_diff = qi - qr and
    q_sum = qr + qi, so a caller that applies it many times forms the two sums once."""
    k1 = (xr + xi) @ qr
    return k1 - xi @ q_sum, k1 + xr @ q_diff
