"""The forward model A = M F S and the three data-consistency steps of the unrolled network.

Images are coil-combined (B, H, W, 2); k-space is (B, C, H, W, 2); masks (B, 1, Hm, W, 1) with Hm = 1
(1D) or H (2D) broadcast over coils, rows and the pair. With coil maps normalised so that
sum_c |S_c|^2 = 1 and the orthonormal FFT, ||A|| <= 1, so a gradient step of 1 is stable.

Exported graphs (``torch.export``, ONNX) compute the same steps another way, because their Fourier transforms
are dense products with DFT matrices (``medmtl.fft``), N / log2 N times the work of an FFT. The steps need
the coil images' masked round trip F^H M F and the data's image F^H (M) y, which does not change between
cascades: ``ExportTerms`` holds it, computed once. When the mask is the same in every row (Cartesian lines,
the usual case), F^H M F is one W x W product per coil image (``medmtl.fft.line_projection_matrix``) instead
of two 2D transforms, four times less work; a mask that varies along H takes the 2D transforms. The choice is
made at run time on the mask (``torch.cond``, an ONNX ``If``), so one graph serves both.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from medmtl.cplx import sense_expand, sense_reduce
from medmtl.errors import ConfigError
from medmtl.fft import complex_matmul_right, fft2c, ifft2c, line_projection_matrix


def forward_op(image: torch.Tensor, sens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A x = M F S x. image (B, H, W, 2), sens (B, C, H, W, 2), mask (B, 1, Hm, W, 1) -> (B, C, H, W, 2)."""
    return mask * fft2c(sense_expand(image, sens))


def adjoint_op(kspace: torch.Tensor, sens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A^H k = S^H F^H M k. kspace (B, C, H, W, 2) -> (B, H, W, 2)."""
    return sense_reduce(ifft2c(mask * kspace), sens)


class ExportTerms(NamedTuple):
    """What an exported graph computes once for every cascade's data consistency (module docstring).

    lines: () bool, the mask is the same in every row. qr, q_diff, q_sum: (B or 1, 1, W, W) the round trip
    along W (``medmtl.fft.line_projection_matrix`` of the first row, qr + i qi) as the three real matrices
    of its three-product form: qr, qi - qr and qr + qi. sens_r, sens_i: the coil maps' parts (B, C, H, W). data_r,
    data_i: the parts of F^H M y for soft data consistency, F^H y for the gradient and proximal steps
    (y is zero off the mask there), (B, C, H, W).

    The cascades work on coil images as separate real and imaginary parts: a (..., 2) pair would be split
    and restacked at every complex product, a full pass over the coil images each time in onnxruntime.
    """

    lines: torch.Tensor
    qr: torch.Tensor
    q_diff: torch.Tensor
    q_sum: torch.Tensor
    sens_r: torch.Tensor
    sens_i: torch.Tensor
    data_r: torch.Tensor
    data_i: torch.Tensor


def _in_float32(fn: Callable) -> Callable:
    """Run ``fn`` with autocast off and its floating tensor arguments in float32 at least, when autocast is on.
    Under bf16 autocast the line products would run in bf16 and leave a 4-step CG solve 0.6 % off the float32
    one (64 x 72, 8 coils): data consistency stays in float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not torch.is_autocast_enabled(tensors[0].device.type):
            return fn(*args, **kwargs)

        def up(a):
            return _at_least_float32(a) if isinstance(a, torch.Tensor) else a

        with torch.autocast(tensors[0].device.type, enabled=False):
            return fn(*map(up, args), **{k: up(v) for k, v in kwargs.items()})

    return wrapper


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32)) if t.is_floating_point() else t


@_in_float32
def export_terms(
    measured: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor, soft: bool, measured_image: torch.Tensor
) -> ExportTerms:
    """``ExportTerms`` of measured k-space (B, C, H, W, 2), its mask (B, 1, Hm, W, 1) and the coil maps
    (B, C, H, W, 2); ``measured_image`` is ifft2c(measured), which the network has already computed (the
    gradient step's data image). Built in float32 at least, under autocast too (``_in_float32``)."""
    qr, qi = line_projection_matrix(mask[:, 0, 0, :, 0], measured.dtype)
    qr, qi = qr[:, None], qi[:, None]
    data_image = ifft2c(mask * measured) if soft else measured_image
    sens_r, sens_i = sens.unbind(-1)
    data_r, data_i = data_image.unbind(-1)
    lines = (mask == mask[:, :, :1]).all()
    return ExportTerms(lines, qr, qi - qr, qr + qi, sens_r, sens_i, data_r, data_i)


def _expand(image: torch.Tensor, terms: ExportTerms) -> tuple[torch.Tensor, torch.Tensor]:
    """S x as parts: image (B, H, W, 2) -> coil images (B, C, H, W) twice."""
    ir, ii = image[:, None, ..., 0], image[:, None, ..., 1]
    return ir * terms.sens_r - ii * terms.sens_i, ir * terms.sens_i + ii * terms.sens_r


def _reduce(xr: torch.Tensor, xi: torch.Tensor, terms: ExportTerms) -> torch.Tensor:
    """S^H of coil images given as parts (B, C, H, W) twice -> (B, H, W, 2)."""
    real = (terms.sens_r * xr + terms.sens_i * xi).sum(1)
    imag = (terms.sens_r * xi - terms.sens_i * xr).sum(1)
    return torch.stack((real, imag), dim=-1)


def _round_trip_by_lines(xr, xi, mask, qr, q_diff, q_sum):
    return complex_matmul_right(xr, xi, qr, q_diff, q_sum)


def _round_trip_by_planes(xr, xi, mask, qr, q_diff, q_sum):
    y = ifft2c(mask * fft2c(torch.stack((xr, xi), dim=-1)))
    return y[..., 0].contiguous(), y[..., 1].contiguous()  # the branches' outputs must match in layout too


def masked_round_trip(
    xr: torch.Tensor, xi: torch.Tensor, mask: torch.Tensor, terms: ExportTerms
) -> tuple[torch.Tensor, torch.Tensor]:
    """F^H M F of coil images given as parts (B, C, H, W) twice: one W x W product when ``terms.lines``,
    else 2D transforms."""
    args = (xr, xi, mask, terms.qr, terms.q_diff, terms.q_sum)
    return torch.cond(terms.lines, _round_trip_by_lines, _round_trip_by_planes, args)


class SoftDC(nn.Module):
    """Soft data consistency: where sampled, blend the image's k-space towards the measurement.

    k' = (1 - w M) F S x + w M y, then back to the image with S^H F^H. The learned weight ``w`` starts at 1,
    where sampled k-space becomes exactly the measurement (0 * k + 1 * y has no rounding).
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def blend(self, kspace: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W, 2) coil k-space and measurement, (B, 1, Hm, W, 1) mask -> blended (B, C, H, W, 2)."""
        wm = self.weight * mask
        return (1 - wm) * kspace + wm * measured

    def forward(
        self,
        image: torch.Tensor,
        measured: torch.Tensor,
        mask: torch.Tensor,
        sens: torch.Tensor,
        terms: ExportTerms | None = None,
    ) -> torch.Tensor:
        """image (B, H, W, 2) -> data-consistent image (B, H, W, 2). With ``terms`` (exported graphs), the
        same step as S^H (S x - w F^H M F S x + w F^H M y)."""
        if terms is not None:
            w = self.weight
            xr, xi = _expand(image, terms)
            rr, ri = masked_round_trip(xr, xi, mask, terms)
            return _reduce(xr - w * rr + w * terms.data_r, xi - w * ri + w * terms.data_i, terms)
        coil_images = sense_expand(image, sens)
        return sense_reduce(ifft2c(self.blend(fft2c(coil_images), measured, mask)), sens)


class GradientDC(nn.Module):
    """One gradient step on ||A x - y||^2 / 2 with a learned step size ``step`` (starts at 1).

    ``forward`` returns the step's update, step * A^H (A x - y), for the caller to subtract.
    """

    def __init__(self):
        super().__init__()
        self.step = nn.Parameter(torch.ones(()))

    def forward(
        self,
        image: torch.Tensor,
        measured: torch.Tensor,
        mask: torch.Tensor,
        sens: torch.Tensor,
        terms: ExportTerms | None = None,
    ) -> torch.Tensor:
        """image (B, H, W, 2), measured (B, C, H, W, 2) zero off the mask -> update (B, H, W, 2). With
        ``terms`` (exported graphs), the same update as step * S^H (F^H M F S x - F^H y)."""
        if terms is not None:
            rr, ri = masked_round_trip(*_expand(image, terms), mask, terms)
            return self.step * _reduce(rr - terms.data_r, ri - terms.data_i, terms)
        residual = forward_op(image, sens, mask) - measured
        return self.step * sense_reduce(ifft2c(residual), sens)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Re <a, b> per batch item of trailing-pair tensors (B, ..., 2) -> (B, 1, ..., 1), broadcastable."""
    return (a * b).flatten(1).sum(dim=1).reshape((-1,) + (1,) * (a.dim() - 1))


def conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    iterations: int,
    x0: torch.Tensor | None = None,
) -> torch.Tensor:
    """``iterations`` conjugate-gradient steps on normal(x) = rhs, per batch item, from ``x0`` (zero when None).

    ``normal`` must be Hermitian positive semi-definite on (B, ..., 2) images. A zero residual (an exact solve,
    an all-zero input) stops the update instead of dividing by zero. A fixed iteration count and no
    data-dependent branch, so the loop unrolls into exported graphs and backpropagates like any layer.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0
    residual = rhs if x0 is None else rhs - normal(x0)
    direction = residual
    rr = _dot(residual, residual)
    for _ in range(iterations):
        q = normal(direction)
        alpha = torch.where(rr > 0, rr / _dot(direction, q).clamp_min(1e-30), 0.0)
        x = x + alpha * direction
        residual = residual - alpha * q
        rr_new = _dot(residual, residual)
        direction = residual + torch.where(rr > 0, rr_new / rr.clamp_min(1e-30), 0.0) * direction
        rr = rr_new
    return x


class ProximalDC(nn.Module):
    """Data consistency as a proximal step (MoDL, Aggarwal et al. 2019):

        x' = argmin_x ||A x - y||^2 + lam ||x - z||^2,   i.e.   (A^H A + lam I) x' = A^H y + lam z,

    solved by ``iterations`` conjugate-gradient steps from z, the regularised image. Unlike one gradient
    step, it moves every sampled frequency most of the way to the data at once, with the learned ``lam``
    (= exp(``log_lam``), starts at ``initial_lam``) setting how far against the prior. ``forward`` returns x'.
    """

    def __init__(self, iterations: int = 5, initial_lam: float = 0.05):
        super().__init__()
        if iterations < 1:
            raise ConfigError("iterations", f"must be at least 1, got {iterations}")
        if not initial_lam > 0:
            raise ConfigError("initial_lam", f"must be > 0, got {initial_lam}")
        self.iterations = int(iterations)
        self.log_lam = nn.Parameter(torch.tensor(math.log(initial_lam)))

    @_in_float32
    def forward(
        self,
        image: torch.Tensor,
        measured: torch.Tensor,
        mask: torch.Tensor,
        sens: torch.Tensor,
        terms: ExportTerms | None = None,
    ) -> torch.Tensor:
        """image z (B, H, W, 2), measured (B, C, H, W, 2) zero off the mask -> x' (B, H, W, 2), in float32 at
        least under autocast too (``_in_float32``). With ``terms`` (exported graphs), the same solve with
        A^H A x = S^H F^H M F S x as one masked round trip; there ``measured`` must be zero off the mask (the
        network's ``kspace * mask``)."""
        lam = self.log_lam.exp()
        # Cartesian lines (a mask constant along H) in eager PyTorch too: the CG steps' round trips F^H M F
        # are then one W x W product each (the exported form), several times faster than the 2D FFTs at the
        # template's prime sizes (197 x 233) on the CPU. ReconSegNet builds the terms once for all cascades.
        lines = mask.shape[2] == 1 and not torch.compiler.is_exporting()
        if lines and terms is None:
            terms = export_terms(measured, mask, sens, True, measured)  # soft: F^H M y, masked here
        if terms is not None:

            def normal(x: torch.Tensor) -> torch.Tensor:
                xr, xi = _expand(x, terms)
                if lines:
                    rr, ri = complex_matmul_right(xr, xi, terms.qr, terms.q_diff, terms.q_sum)
                else:
                    rr, ri = masked_round_trip(xr, xi, mask, terms)
                return _reduce(rr, ri, terms) + lam * x

            data = _reduce(terms.data_r, terms.data_i, terms)
        else:

            def normal(x: torch.Tensor) -> torch.Tensor:
                return adjoint_op(forward_op(x, sens, mask), sens, mask) + lam * x

            data = adjoint_op(measured, sens, mask)
        return conjugate_gradient(normal, data + lam * image, self.iterations, x0=image)


def proximal_steps(network: nn.Module) -> set[int]:
    """The conjugate-gradient step counts of the ``ProximalDC`` steps in ``network``; empty when it has none."""
    return {m.iterations for m in network.modules() if isinstance(m, ProximalDC)}


def set_proximal_steps(network: nn.Module, iterations: int) -> None:
    """Let every ``ProximalDC`` step in ``network`` run ``iterations`` conjugate-gradient steps."""
    for module in network.modules():
        if isinstance(module, ProximalDC):
            module.iterations = iterations
