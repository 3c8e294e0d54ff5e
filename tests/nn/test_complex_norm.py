"""Complex batch / instance normalisation: whitening, a float64 eigen-decomposition reference, running
statistics in train and eval mode, and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from medmtl.errors import ConfigError
from medmtl.nn.complex import (
    ComplexBatchNorm2d,
    ComplexBatchNorm3d,
    ComplexInstanceNorm2d,
    ComplexInstanceNorm3d,
)

EPS = 1e-5


def _correlated(shape: tuple[int, ...], seed: int, dtype=torch.float64) -> torch.Tensor:
    """(B, C, *spatial, 2) whose channels have their own mean and strongly correlated real/imag parts."""
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]
    z = torch.randn(*shape, 2, generator=g, dtype=dtype)
    mix = torch.randn(channels, 2, 2, generator=g, dtype=dtype) + 2 * torch.eye(2, dtype=dtype)
    offset = 3 * torch.randn(channels, 2, generator=g, dtype=dtype)
    view = (1, channels) + (1,) * (len(shape) - 2)
    x = torch.einsum("cij,bc...j->bc...i", mix, z)
    return x + offset.reshape(*view, 2)


def _moments(y: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (or per sample and channel) mean (..., 2) and biased covariance (..., 2, 2)."""
    mean = y.mean(dim=dims, keepdim=True)
    yc = y - mean
    cov = torch.einsum("...i,...j->...ij", yc, yc).mean(dim=dims)
    return mean.squeeze_(dims), cov


def _reference(x, dims, gamma, beta, mean=None, cov=None):
    """gamma V^(-1/2) (x - mean) + beta with V^(-1/2) from torch.linalg.eigh, all float64.

    ``dims`` are the reduced axes of (B, C, *spatial, 2); gamma (C, 3) as (grr, gri, gii), beta (C, 2).
    """
    if mean is None:
        mean, cov = _moments(x, dims)
    cov = cov + EPS * torch.eye(2, dtype=x.dtype)
    vals, vecs = torch.linalg.eigh(cov)
    inv_sqrt = vecs @ torch.diag_embed(vals.rsqrt()) @ vecs.transpose(-1, -2)
    g = torch.stack((gamma[:, [0, 1]], gamma[:, [1, 2]]), dim=-2)  # (C, 2, 2) symmetric
    spatial = x.dim() - 3
    # Stats are (C, ...) for batch norm and (B, C, ...) for instance norm; add singleton spatial axes.
    mean_b = mean.reshape(*mean.shape[:-1], *(1,) * spatial, 2)
    mat = g @ inv_sqrt  # (C, 2, 2) against (C, 2, 2) or (B, C, 2, 2)
    mat_b = mat.reshape(*mat.shape[:-2], *(1,) * spatial, 2, 2)
    y = torch.einsum("...ij,...j->...i", mat_b, x - mean_b)
    return y + beta.reshape(beta.shape[0], *(1,) * spatial, 2)


NORMS = [
    (ComplexBatchNorm2d, (3, 2, 5, 7)),
    (ComplexBatchNorm2d, (1, 1, 9, 5)),
    (ComplexBatchNorm3d, (2, 3, 3, 5, 4)),
    (ComplexInstanceNorm2d, (2, 3, 7, 5)),
    (ComplexInstanceNorm2d, (1, 1, 5, 3)),
    (ComplexInstanceNorm3d, (2, 2, 3, 3, 5)),
]


def _reduced_dims(cls, ndim: int) -> tuple[int, ...]:
    spatial = tuple(range(2, ndim - 1))
    return (0, *spatial) if cls in (ComplexBatchNorm2d, ComplexBatchNorm3d) else spatial


@pytest.mark.parametrize(("cls", "shape"), NORMS)
def test_whitened_output_has_zero_mean_and_identity_covariance(cls, shape):
    x = _correlated(shape, 0).float()
    y = cls(shape[1], affine=False)(x).double()
    mean, cov = _moments(y, _reduced_dims(cls, y.dim()))
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-5)
    # V / (V + eps) is I up to the eps the layer adds to the diagonal.
    torch.testing.assert_close(cov, torch.eye(2, dtype=cov.dtype).expand_as(cov), rtol=0, atol=1e-3)


@pytest.mark.parametrize(("cls", "shape"), NORMS)
def test_matches_float64_eigen_reference(cls, shape):
    x = _correlated(shape, 1)
    layer = cls(shape[1]).double()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(shape[1], 3, generator=g, dtype=torch.float64))
        layer.bias.copy_(torch.randn(shape[1], 2, generator=g, dtype=torch.float64))
    dims = _reduced_dims(cls, x.dim())
    ref = _reference(x, dims, layer.weight.detach(), layer.bias.detach())
    torch.testing.assert_close(layer(x), ref, rtol=1e-9, atol=1e-9)


def test_affine_starts_at_unit_energy():
    """gamma = I / sqrt(2) on whitened parts gives E|z|^2 = 1, beta = 0 gives zero mean."""
    x = _correlated((4, 2, 8, 8), 3).float()
    y = ComplexBatchNorm2d(2)(x)
    assert (y**2).sum(-1).mean().item() == pytest.approx(1.0, abs=1e-3)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2, 2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", [ComplexBatchNorm2d, ComplexInstanceNorm2d])
def test_gradcheck(cls):
    x = _correlated((2, 2, 3, 3), 4).requires_grad_()
    layer = cls(2).double()
    with torch.no_grad():
        layer.weight.add_(
            0.1 * torch.randn(2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        )

    def f(x, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(
        f, (x, layer.weight.detach().requires_grad_(), layer.bias.detach().requires_grad_())
    )


def test_batch_norm_running_stats_and_eval_mode():
    momentum = 0.25
    layer = ComplexBatchNorm2d(3, momentum=momentum).double()
    x1, x2 = _correlated((2, 3, 5, 7), 6), _correlated((3, 3, 4, 5), 7)
    mean, covar = (
        torch.zeros(3, 2, dtype=torch.float64),
        torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64).repeat(3, 1),
    )
    for x in (x1, x2):
        layer(x)
        batch_mean, batch_cov = _moments(x, (0, 2, 3))
        n = x.numel() // (3 * 2)
        unbiased = batch_cov * n / (n - 1)
        mean = (1 - momentum) * mean + momentum * batch_mean
        covar = (1 - momentum) * covar + momentum * torch.stack(
            (unbiased[:, 0, 0], unbiased[:, 0, 1], unbiased[:, 1, 1]), -1
        )
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_covar, covar)

    layer.eval()
    x3 = _correlated((1, 3, 3, 5), 8)
    out = layer(x3)
    cov = torch.stack((covar[:, [0, 1]], covar[:, [1, 2]]), dim=-2)
    ref = _reference(x3, None, layer.weight.detach(), layer.bias.detach(), mean=mean, cov=cov)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    # Eval mode neither uses nor changes the batch statistics.
    torch.testing.assert_close(layer.running_mean, mean)
    assert not torch.allclose(out, layer.train()(x3))


def test_batch_norm_eval_before_training_is_the_affine_part():
    layer = ComplexBatchNorm2d(2).eval()
    x = torch.randn(1, 2, 3, 3, 2)
    torch.testing.assert_close(layer(x), x / math.sqrt(2) * (1 / (1 + EPS)) ** 0.5, rtol=1e-6, atol=1e-6)


def test_instance_norm_is_per_sample_and_mode_free():
    layer = ComplexInstanceNorm2d(2)
    x = _correlated((3, 2, 5, 5), 9).float()
    out = layer(x)
    torch.testing.assert_close(out[1:2], layer(x[1:2]))
    torch.testing.assert_close(layer.eval()(x), out)


def test_errors():
    with pytest.raises(ValueError, match="more than 1 value"):
        ComplexBatchNorm2d(2)(torch.randn(1, 2, 1, 1, 2))
    with pytest.raises(ValueError, match="expected"):
        ComplexBatchNorm2d(2)(torch.randn(2, 3, 4, 4, 2))
    with pytest.raises(ValueError, match="expected"):
        ComplexInstanceNorm3d(2)(torch.randn(2, 2, 4, 4, 2))
    with pytest.raises(ConfigError, match="momentum"):
        ComplexBatchNorm2d(2, momentum=0.0)


@pytest.mark.parametrize("cls", [ComplexBatchNorm2d, ComplexInstanceNorm2d])
def test_half_precision_input_is_normalised_in_float32(cls):
    x = _correlated((2, 3, 6, 5), 10).float()
    layer = cls(3)
    out = layer(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, cls(3)(x.bfloat16().float()))
