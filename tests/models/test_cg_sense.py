"""CG-SENSE: exact where the problem is well posed, better than zero-filling, and typed errors for bad input."""

from __future__ import annotations

import pytest
import torch

from medmtl.cplx import complex_abs
from medmtl.errors import InputError
from medmtl.models.cg_sense import cg_sense
from medmtl.models.data_consistency import forward_op


def _problem(coils: int, h: int, w: int, acceleration: int):
    g = torch.Generator().manual_seed(3)
    image = torch.randn(1, h, w, 2, generator=g)
    maps = torch.randn(1, coils, h, w, 2, generator=g)
    maps = maps / complex_abs(maps).square().sum(1, keepdim=True).sqrt()[..., None]  # sum_c |S_c|^2 = 1
    mask = torch.zeros(1, 1, 1, w, 1)
    mask[..., ::acceleration, :] = 1
    mask[..., w // 2 - 2 : w // 2 + 2, :] = 1
    return image, maps, mask, forward_op(image, maps, mask)


@pytest.mark.parametrize("shape", [(17, 23), (32, 32)])
def test_fully_sampled_is_exact_after_one_iteration(shape):
    image, maps, _, _ = _problem(4, *shape, 1)
    full = torch.ones(1, 1, 1, shape[1], 1)
    x = cg_sense(forward_op(image, maps, full), full, maps, iterations=1)
    torch.testing.assert_close(x, image, atol=1e-5, rtol=1e-5)


def test_undersampled_noise_free_converges_to_the_image():
    image, maps, mask, kspace = _problem(8, 24, 30, 2)
    errors = [(cg_sense(kspace, mask, maps, iterations=n) - image).norm() / image.norm() for n in (1, 5, 40)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_regularisation_shrinks_the_solution():
    _, maps, mask, kspace = _problem(4, 20, 20, 3)
    plain, shrunk = (cg_sense(kspace, mask, maps, iterations=30, reg=r).norm() for r in (0.0, 1.0))
    assert shrunk < plain


def test_all_zero_input_gives_zeros_not_nan():
    _, maps, mask, kspace = _problem(2, 16, 16, 2)
    x = cg_sense(torch.zeros_like(kspace), mask, maps, iterations=3)
    assert torch.equal(x, torch.zeros_like(x))


@pytest.mark.parametrize(
    "kwargs, words",
    [({"iterations": 0}, "iterations"), ({"reg": -1.0}, "reg"), ({"reg": float("nan")}, "reg")],
)
def test_bad_arguments(kwargs, words):
    _, maps, mask, kspace = _problem(2, 16, 16, 2)
    with pytest.raises(InputError, match=words):
        cg_sense(kspace, mask, maps, **kwargs)


def test_shape_mismatch():
    _, maps, mask, kspace = _problem(2, 16, 16, 2)
    with pytest.raises(InputError, match="must both be"):
        cg_sense(kspace, mask, maps[:, :1])
