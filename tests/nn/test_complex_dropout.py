"""Complex dropout: one mask for both parts, 1 / (1 - p) scaling, expectation kept, per-channel variants."""

from __future__ import annotations

import pytest
import torch

from medmtl.errors import ConfigError
from medmtl.nn.complex import ComplexDropout, ComplexDropout2d, ComplexDropout3d


def _nonzero(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    x = torch.randn(*shape, 2, generator=torch.Generator().manual_seed(seed))
    return x + torch.sign(x)  # |each part| >= 1, so a zero in the output means "dropped"


@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 3, 7, 5), (1, 2, 3, 5, 3)])
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_mask_is_shared_by_real_and_imag(shape, p):
    torch.manual_seed(0)
    x = _nonzero(shape, 1)
    out = ComplexDropout(p)(x)
    dropped = out == 0
    assert torch.equal(dropped[..., 0], dropped[..., 1])
    kept = ~dropped[..., 0]
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_expectation_and_drop_rate(p):
    torch.manual_seed(1)
    x = torch.ones(4, 8, 64, 64, 2)
    out = ComplexDropout(p)(x)
    n = x[..., 0].numel()
    # Standard error of the mean of a scaled Bernoulli: sqrt(p / (1 - p) / n); allow 5 of them.
    assert out.mean().item() == pytest.approx(1.0, abs=5 * (p / (1 - p) / n) ** 0.5)
    assert (out[..., 0] == 0).float().mean().item() == pytest.approx(p, abs=5 * (p * (1 - p) / n) ** 0.5)


@pytest.mark.parametrize(
    ("cls", "shape"), [(ComplexDropout2d, (3, 16, 5, 7)), (ComplexDropout3d, (2, 16, 3, 5, 3))]
)
def test_channel_variants_drop_whole_channels(cls, shape):
    torch.manual_seed(2)
    x = _nonzero(shape, 3)
    out = cls(0.5)(x)
    dropped = (out == 0).flatten(2)
    per_channel = dropped.all(-1)
    assert torch.equal(per_channel, dropped.any(-1))  # each channel is either all dropped or all kept
    assert 0 < per_channel.sum() < per_channel.numel()
    kept = ~per_channel
    torch.testing.assert_close(out[kept], x[kept] / 0.5)


@pytest.mark.parametrize("layer", [ComplexDropout(0.5), ComplexDropout2d(0.5), ComplexDropout3d(0.5)])
def test_eval_mode_is_identity(layer):
    x = (
        torch.randn(2, 3, 4, 5, 2)
        if not isinstance(layer, ComplexDropout3d)
        else torch.randn(2, 3, 2, 4, 5, 2)
    )
    assert layer.eval()(x) is x


def test_p_zero_is_identity_and_gradient_uses_the_mask():
    x = torch.randn(2, 3, 4, 4, 2)
    torch.testing.assert_close(ComplexDropout(0.0)(x), x)
    torch.manual_seed(4)
    x = _nonzero((2, 3, 4, 4), 5).requires_grad_()
    out = ComplexDropout(0.4)(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, (out != 0).float() / 0.6)


def test_errors():
    for p in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="p must lie"):
            ComplexDropout(p)
    with pytest.raises(ValueError, match="expected"):
        ComplexDropout2d(0.5)(torch.randn(2, 3, 4, 2))
