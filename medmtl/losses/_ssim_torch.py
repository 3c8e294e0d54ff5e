"""SSIM sums in pure PyTorch: the CPU path, the reference for the Triton kernels, and the custom op's default.

Shapes: ``x``, ``y`` are (N, *S) with N = batch x channels and S the 2 or 3 spatial sizes; the window
(K,) is applied separably along every spatial axis in "valid" mode, so the SSIM map has the cropped
shape (N, *(S - K + 1)). That is skimage's convention: it filters with reflection and then crops
(K - 1) / 2 pixels from every border, which leaves exactly the valid region. An optional ``mask``
(N, *S) weights each map pixel by its value at the window centre.

The backward is written out rather than left to autograd so that the op carries its own gradient
(``torch.library.register_autograd``) and the Triton backward has a formula to match.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=64)
def _depthwise_weight(
    window: tuple[float, ...], channels: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The window as a depthwise filter (channels, 1, *shape); cached, as building it on CUDA would
    cost a host-to-device copy per call."""
    w = torch.tensor(window, dtype=dtype, device=device)
    return w.view(1, 1, *shape).expand(channels, 1, *shape).contiguous()


def _conv_axis(t: torch.Tensor, window: tuple[float, ...], axis: int, padding: int) -> torch.Tensor:
    """Depthwise correlation of (N, M, *S) with the 1D window (K,) along spatial ``axis``."""
    nd, m = t.dim() - 2, t.shape[1]
    if nd == 3 and axis == 0:
        # conv3d along D takes a slow CPU kernel for some shapes; the rows of a conv2d over (D, H*W) do not.
        return _conv_axis(t.flatten(3), window, 0, padding).unflatten(3, t.shape[3:])
    shape = [1] * nd
    shape[axis] = len(window)
    pads = [0] * nd
    pads[axis] = padding
    conv = F.conv2d if nd == 2 else F.conv3d
    return conv(t, _depthwise_weight(window, m, tuple(shape), t.dtype, t.device), padding=pads, groups=m)


@contextlib.contextmanager
def _ieee_convs(t: torch.Tensor):
    """cuDNN may run float32 convolutions in TF32 (a 10-bit mantissa), which the variances
    E[x^2] - E[x]^2 cannot afford: keep this filter's convolutions in IEEE float32 on CUDA."""
    if not (t.is_cuda and torch.backends.cudnn.allow_tf32):
        yield
        return
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = True


def _separable(t: torch.Tensor, window: list[float], adjoint: bool) -> torch.Tensor:
    """Valid correlation of every channel of (N, M, *S) with the separable window, giving
    (N, M, *(S - K + 1)); or its adjoint (a full convolution, (N, M, *(S + K - 1))).

    The adjoint pads by K - 1: through the convolution's argument in 2D, explicitly in 3D, where a
    padding argument sends CPU conv3d to a slow kernel (8 times slower here).
    """
    nd, k = t.dim() - 2, len(window)
    w = tuple(window[::-1] if adjoint else window)
    out = t
    with _ieee_convs(t):
        for axis in range(nd):
            padding = k - 1 if adjoint else 0
            if adjoint and nd == 3:
                pad = [0] * (2 * nd)
                pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = k - 1
                out, padding = F.pad(out, pad), 0
            out = _conv_axis(out, w, axis, padding)
    return out


def _stack(maps: list[torch.Tensor]) -> torch.Tensor:
    """M maps (N, *S) as one (N, M, *S) tensor for the depthwise filter. 2D: channels last, where
    CPU oneDNN's depthwise kernel is about 40 times faster than on M single-channel images; 3D: plain
    layout, as its channels-last path is slower there."""
    if maps[0].dim() == 3:
        return torch.stack(maps, dim=-1).movedim(-1, 1)
    return torch.stack(maps, dim=1)


def _planar(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(N, M, *S) -> M maps (N, *S); 2D channels-last data gets one copy first, so that the pointwise
    maths runs on unit-stride data (about 10 times faster on CPU than on the stride-M views)."""
    if t.dim() == 4:
        t = t.movedim(1, 0).contiguous().movedim(0, 1)
    return t.unbind(1)


def _moments(x: torch.Tensor, y: torch.Tensor, window: list[float]) -> list[torch.Tensor]:
    """Local means of x, y, x^2, y^2, xy, each (N, *S_out): one filter pass over the 5 stacked maps."""
    return list(_planar(_separable(_stack([x, y, x * x, y * y, x * y]), window, adjoint=False)))


def crop_valid(mask: torch.Tensor, k: int) -> torch.Tensor:
    """The (N, *S) mask at the window centres of the valid region: (N, *(S - K + 1))."""
    pad = (k - 1) // 2
    index = (slice(None), *tuple(slice(pad, s - (k - 1 - pad)) for s in mask.shape[1:]))
    return mask[index]


def _terms(m: list[torch.Tensor], c1: float, c2: float) -> tuple[torch.Tensor, ...]:
    """Luminance l, contrast-structure cs and their denominators B = ux^2 + uy^2 + C1 and
    D = vx + vy + C2, with the biased ('population') variances vx = E[x^2] - ux^2 etc.

    In-place arithmetic on fresh temporaries keeps the CPU path memory-light; nothing here is
    differentiated by autograd (the op carries its own backward).
    """
    ux, uy, uxx, uyy, uxy = m
    uxuy = ux * uy
    b = torch.addcmul(ux * ux, uy, uy).add_(c1)
    d = (uxx + uyy).add_(c1 + c2).sub_(b)
    lum = uxuy.mul(2).add_(c1).div_(b)
    cs = uxy.sub(uxuy).mul_(2).add_(c2).div_(d)
    return lum, cs, b, d


def ssim_sums(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, window: list[float], c1: float, c2: float
) -> torch.Tensor:
    """Per-image weighted sums over the valid region: (N, 2) = [sum w * SSIM, sum w * CS]."""
    lum, cs, _, _ = _terms(_moments(x, y, window), c1, c2)
    s = lum * cs
    if mask is not None:
        w = crop_valid(mask, len(window))
        s, cs = s * w, cs * w
    return torch.stack([s.flatten(1).sum(1), cs.flatten(1).sum(1)], dim=1)


def ssim_sums_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    window: list[float],
    c1: float,
    c2: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (dx, dy), each (N, *S), of sum_n grad[n, 0] * sums[n, 0] + grad[n, 1] * sums[n, 1]."""
    m = _moments(x, y, window)
    ux, uy = m[0], m[1]
    lum, cs, b, d = _terms(m, c1, c2)
    view = (-1,) + (1,) * (x.dim() - 1)
    gs, gc = grad[:, 0].view(view), grad[:, 1].view(view)
    # G = gs * l * cs + gc * cs, so dG = (gs * cs) dl + (gs * l + gc) dcs, with dl/dux = 2 (uy - l ux) / B,
    # dcs/dvxy = 2 / D and dcs/dvx = dcs/dvy = -cs / D. The variances (vx = E[x^2] - ux^2,
    # vxy = E[xy] - ux uy) then chain back to the five local means; E[x^2] and E[y^2] share dG/dvx.
    t = lum.mul(gs).add_(gc).div_(d)
    dvxy = t * 2
    dv = t.mul_(cs).neg_()
    q = cs.mul(gs).mul_(2).div_(b)
    dux = torch.addcmul(uy, lum, ux, value=-1).mul_(q).addcmul_(ux, dv, value=-2).addcmul_(uy, dvxy, value=-1)
    duy = torch.addcmul(ux, lum, uy, value=-1).mul_(q).addcmul_(uy, dv, value=-2).addcmul_(ux, dvxy, value=-1)
    maps = [dux, duy, dv, dvxy]  # dG/d(ux, uy, E[x^2] = E[y^2], E[xy])
    if mask is not None:
        w = crop_valid(mask, len(window))
        maps = [m.mul_(w) for m in maps]
    fx, fy, fv, fxy = _planar(_separable(_stack(maps), window, adjoint=True))
    return torch.addcmul(fx, x, fv, value=2).addcmul_(y, fxy), torch.addcmul(fy, y, fv, value=2).addcmul_(
        x, fxy
    )
