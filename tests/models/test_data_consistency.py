"""Data consistency: exact soft blending, the gradient and proximal steps against numpy, A against its adjoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import fft2c_np, ifft2c_np

from medmtl.errors import ConfigError
from medmtl.fft import complex_matmul_right, ifft2c
from medmtl.models import data_consistency
from medmtl.models.data_consistency import (
    GradientDC,
    ProximalDC,
    SoftDC,
    adjoint_op,
    export_terms,
    forward_op,
)


def _complex(t: torch.Tensor) -> np.ndarray:
    t = t.detach().double()
    return t[..., 0].numpy() + 1j * t[..., 1].numpy()


def _mask(kind: str, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """(1, 1, Hm, W, 1) random 0/1 mask, Hm = 1 for 1D, H for 2D."""
    rows = 1 if kind == "1d" else h
    return (torch.rand(1, 1, rows, w, 1, generator=gen) < 0.4).float()


def _normalised_maps(b: int, c: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    sens = torch.randn(b, c, h, w, 2, generator=gen)
    return sens / (sens**2).sum(dim=(1, 4), keepdim=True).sqrt()


@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (1, 1, 5, 6)])
def test_soft_dc_with_weight_one_keeps_sampled_kspace_exactly(kind, shape):
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = shape
    kspace = torch.randn(b, c, h, w, 2, generator=gen)
    mask = _mask(kind, h, w, gen)
    measured = torch.randn(b, c, h, w, 2, generator=gen) * mask
    dc = SoftDC()
    assert dc.weight.item() == 1.0  # the initial weight
    blended = dc.blend(kspace, measured, mask)
    sampled = mask.expand_as(kspace).bool()
    assert torch.equal(blended[sampled], measured[sampled])
    assert torch.equal(blended[~sampled], kspace[~sampled])


def test_soft_dc_blends_with_its_weight():
    gen = torch.Generator().manual_seed(1)
    kspace, measured = torch.randn(2, 1, 2, 6, 5, 2, generator=gen)
    mask = _mask("1d", 6, 5, gen)
    dc = SoftDC()
    with torch.no_grad():
        dc.weight.fill_(0.3)
    expected = torch.where(mask.bool(), 0.7 * kspace + 0.3 * measured, kspace)
    torch.testing.assert_close(dc.blend(kspace, measured, mask), expected)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_soft_dc_leaves_a_consistent_image_unchanged(kind):
    """With sum_c |S_c|^2 = 1 and y = A x, S^H F^H [(1 - M) F S x + M y] = S^H S x = x."""
    gen = torch.Generator().manual_seed(2)
    b, c, h, w = 2, 3, 8, 7
    image = torch.randn(b, h, w, 2, generator=gen)
    sens = _normalised_maps(b, c, h, w, gen)
    mask = _mask(kind, h, w, gen)
    out = SoftDC()(image, forward_op(image, sens, mask), mask, sens)
    torch.testing.assert_close(out, image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_gradient_step_matches_numpy(kind):
    """step * A^H (A x - y) with A = M F S, written out in complex numpy on a tiny case."""
    gen = torch.Generator().manual_seed(3)
    b, c, h, w = 1, 2, 5, 4
    image = torch.randn(b, h, w, 2, generator=gen)
    sens = torch.randn(b, c, h, w, 2, generator=gen)
    mask = _mask(kind, h, w, gen)
    measured = torch.randn(b, c, h, w, 2, generator=gen) * mask
    dc = GradientDC()
    with torch.no_grad():
        dc.step.fill_(0.7)
    x, s, y = _complex(image), _complex(sens), _complex(measured)
    m = mask[..., 0].double().numpy()  # (1, 1, Hm, W) broadcasts over coils and rows
    residual = m * fft2c_np(s * x[:, None]) - y
    expected = 0.7 * (np.conj(s) * ifft2c_np(m * residual)).sum(axis=1)
    np.testing.assert_allclose(_complex(dc(image, measured, mask, sens)), expected, rtol=1e-5, atol=1e-5)


def test_proximal_step_fully_sampled_is_the_closed_form_after_one_iteration():
    """With every sample taken and sum_c |S_c|^2 = 1, A^H A = I: x' = (A^H y + lam z) / (1 + lam)."""
    gen = torch.Generator().manual_seed(5)
    b, c, h, w = 2, 3, 6, 7
    z = torch.randn(b, h, w, 2, generator=gen)
    sens = _normalised_maps(b, c, h, w, gen)
    mask = torch.ones(1, 1, 1, w, 1)
    measured = torch.randn(b, c, h, w, 2, generator=gen)
    dc = ProximalDC(iterations=1, initial_lam=0.3)
    expected = (adjoint_op(measured, sens, mask) + 0.3 * z) / 1.3
    torch.testing.assert_close(dc(z, measured, mask, sens), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_proximal_step_solves_the_regularised_least_squares_of_numpy(kind):
    """(A^H A + lam I) x = A^H y + lam z solved densely in complex numpy, A = M F S built column by column, for
    two batch items with their own masks and intensity scales (CG's step sizes are per item)."""
    gen = torch.Generator().manual_seed(6)
    b, c, h, w = 2, 2, 5, 4
    scale = torch.tensor([1.0, 30.0])[:, None, None, None]
    z = torch.randn(b, h, w, 2, generator=gen) * scale
    sens = torch.randn(b, c, h, w, 2, generator=gen)
    mask = torch.cat([_mask(kind, h, w, gen) for _ in range(b)])
    measured = torch.randn(b, c, h, w, 2, generator=gen) * mask * scale[..., None]
    lam = 0.2
    dc = ProximalDC(iterations=3 * h * w, initial_lam=lam)  # CG is exact after N steps, up to rounding
    got = _complex(dc(z, measured, mask, sens))
    for i in range(b):
        s, m = _complex(sens)[i], mask[i, ..., 0].double().numpy()
        columns = []
        for k in range(h * w):
            basis = np.zeros(h * w, complex)
            basis[k] = 1
            columns.append((m * fft2c_np(s * basis.reshape(h, w))).ravel())
        a = np.stack(columns, axis=1)
        rhs = a.conj().T @ _complex(measured)[i].ravel() + lam * _complex(z)[i].ravel()
        expected = np.linalg.solve(a.conj().T @ a + lam * np.eye(h * w), rhs).reshape(h, w)
        np.testing.assert_allclose(got[i], expected, rtol=1e-4, atol=1e-4 * float(scale[i]))


@pytest.mark.parametrize(
    ("kind", "shared_terms"),
    # 2d masks take FFTs, which autocast leaves in float32 anyway: that case only guards against regressions.
    [("1d", False), ("1d", True), ("2d", False)],
)
def test_proximal_step_solves_in_float32_under_bf16_autocast(kind, shared_terms, monkeypatch):
    """Under autocast the solve, and the line terms a network shares between its cascades, stay float32: the
    line products run with float32 operands and autocast off, and the answer equals the float32 one to rounding (with bf16 line
    products it was 0.6 % off). The regulariser's image arrives in bf16 there, so both sides start from the
    same bf16 image."""
    seen = set()  # (operand dtype, autocast on) of each line product

    def spy(*args):
        seen.update((a.dtype, torch.is_autocast_enabled("cpu")) for a in args)
        return complex_matmul_right(*args)

    monkeypatch.setattr(data_consistency, "complex_matmul_right", spy)
    gen = torch.Generator().manual_seed(8)
    b, c, h, w = 2, 4, 24, 30
    z = torch.randn(b, h, w, 2, generator=gen).to(torch.bfloat16)
    sens = _normalised_maps(b, c, h, w, gen)
    mask = torch.cat([_mask(kind, h, w, gen) for _ in range(b)])
    measured = torch.randn(b, c, h, w, 2, generator=gen) * mask
    dc = ProximalDC(iterations=4)

    def solve(image: torch.Tensor) -> torch.Tensor:
        terms = None
        if shared_terms and kind == "1d":  # as ReconSegNet builds them, once per forward
            terms = export_terms(measured, mask, sens, False, ifft2c(measured))
        return dc(image, measured, mask, sens, terms)

    expected = solve(z.float())
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = solve(z)
    assert seen == ({(torch.float32, False)} if kind == "1d" else set())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_proximal_step_needs_an_iteration_and_a_positive_weight():
    with pytest.raises(ConfigError, match="iterations"):
        ProximalDC(iterations=0)
    with pytest.raises(ConfigError, match="initial_lam"):
        ProximalDC(initial_lam=0.0)


def test_adjoint_op_is_the_adjoint_of_forward_op():
    gen = torch.Generator().manual_seed(4)
    b, c, h, w = 2, 3, 7, 6
    image = torch.randn(b, h, w, 2, generator=gen)
    kspace = torch.randn(b, c, h, w, 2, generator=gen)
    sens = torch.randn(b, c, h, w, 2, generator=gen)
    mask = _mask("2d", h, w, gen)
    lhs = np.vdot(_complex(kspace), _complex(forward_op(image, sens, mask)))
    rhs = np.vdot(_complex(adjoint_op(kspace, sens, mask)), _complex(image))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


@pytest.mark.parametrize("dc_class", [SoftDC, GradientDC, ProximalDC])
@pytest.mark.parametrize("rows", ["1d", "1d expanded", "2d"])
def test_the_exported_formulation_takes_the_same_step(dc_class, rows):
    # Exported graphs share F^H M y between cascades and, for masks equal in every row, take F^H M F as one
    # W x W product (the `lines` branch); other masks take the 2D transforms. Both give the eager step.
    gen = torch.Generator().manual_seed(3)
    b, c, h, w = 2, 3, 9, 10
    mask = _mask("2d" if rows == "2d" else "1d", h, w, gen)
    if rows == "1d expanded":  # what an ONNX caller passes: the 1D mask repeated in every row
        mask = mask.expand(1, 1, h, w, 1).contiguous()
    measured = torch.randn(b, c, h, w, 2, generator=gen) * mask
    sens = _normalised_maps(b, c, h, w, gen)
    image = torch.randn(b, h, w, 2, generator=gen)
    dc = dc_class()
    with torch.no_grad():  # ProximalDC: lam = 0.05, a solve far from the identity
        next(dc.parameters()).fill_(math.log(0.05) if dc_class is ProximalDC else 0.7)
        terms = export_terms(measured, mask, sens, dc_class is SoftDC, ifft2c(measured))
        assert bool(terms.lines) == (rows != "2d")
        torch.testing.assert_close(
            dc(image, measured, mask, sens, terms), dc(image, measured, mask, sens), atol=1e-5, rtol=1e-5
        )
