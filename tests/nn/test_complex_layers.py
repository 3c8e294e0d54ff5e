"""Complex layers on (real, imag) pairs against torch.complex64 references, for outputs and gradients.

Gradients: for a real loss L, PyTorch's complex autograd gives dL/dRe + i dL/dIm, which
``view_as_real`` turns into exactly the gradient of the pair layout.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medmtl.errors import ConfigError
from medmtl.nn.complex import (
    Cardioid,
    ComplexConv2d,
    ComplexConv3d,
    ComplexConvTranspose2d,
    ComplexConvTranspose3d,
    ComplexLinear,
    CReLU,
    ModReLU,
    ZReLU,
    complex_kaiming_,
)
from medmtl.nn.complex.conv import _REAL_OPS, _block, _gauss, from_stacked, to_stacked

TOL = {"rtol": 1e-4, "atol": 1e-4}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _complex_leaf(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_complex(x.detach().clone()).requires_grad_()


def _backward_with(out_pair: torch.Tensor, seed: int) -> None:
    """Backward of sum(out * G) for a fixed random G, so every output element gets its own weight."""
    g = torch.randn(out_pair.shape, generator=_gen(seed))
    (out_pair * g).sum().backward()


def _as_native(layer: nn.Module, native: nn.Module) -> nn.Module:
    """Copy the pair-layout parameters of ``layer`` into the complex64 ``native`` layer."""
    with torch.no_grad():
        native.weight.copy_(torch.view_as_complex(layer.weight.detach().contiguous()))
        if layer.bias is not None:
            native.bias.copy_(torch.view_as_complex(layer.bias.detach().contiguous()))
    return native


def _check_against_native(layer: nn.Module, native: nn.Module, x: torch.Tensor) -> None:
    _as_native(layer, native)
    x = x.clone().requires_grad_()
    xc = _complex_leaf(x)
    out = layer(x)
    ref = torch.view_as_real(native(xc))
    torch.testing.assert_close(out, ref, **TOL)
    _backward_with(out, 7)
    _backward_with(ref, 7)
    torch.testing.assert_close(x.grad, torch.view_as_real(xc.grad), **TOL)
    torch.testing.assert_close(layer.weight.grad, torch.view_as_real(native.weight.grad), **TOL)
    if layer.bias is not None:
        torch.testing.assert_close(layer.bias.grad, torch.view_as_real(native.bias.grad), **TOL)


# (pair layer, native layer, spatial dims). in_channels 32 takes Gauss's path on CPU, fewer the block path.
CONV_CASES = [
    # cls, native, in, out, kwargs, spatial
    (ComplexConv2d, nn.Conv2d, 1, 1, {"kernel_size": 3}, (7, 5)),
    (ComplexConv2d, nn.Conv2d, 3, 4, {"kernel_size": 3, "padding": 1}, (9, 6)),
    (ComplexConv2d, nn.Conv2d, 4, 6, {"kernel_size": (3, 2), "stride": 2, "padding": 1, "groups": 2}, (9, 7)),
    (
        ComplexConv2d,
        nn.Conv2d,
        2,
        3,
        {"kernel_size": 3, "dilation": 2, "padding": "same", "bias": False},
        (8, 7),
    ),
    (ComplexConv2d, nn.Conv2d, 32, 3, {"kernel_size": 3, "padding": 1}, (5, 7)),
    (ComplexConv2d, nn.Conv2d, 64, 4, {"kernel_size": 1, "groups": 2}, (3, 5)),
    (ComplexConv3d, nn.Conv3d, 2, 3, {"kernel_size": 3, "padding": 1}, (3, 5, 4)),
    (ComplexConv3d, nn.Conv3d, 32, 2, {"kernel_size": (1, 3, 3), "stride": (1, 2, 2)}, (2, 5, 5)),
    (ComplexConvTranspose2d, nn.ConvTranspose2d, 1, 2, {"kernel_size": 2, "stride": 2}, (5, 3)),
    (
        ComplexConvTranspose2d,
        nn.ConvTranspose2d,
        4,
        6,
        {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1, "groups": 2},
        (5, 4),
    ),
    (ComplexConvTranspose2d, nn.ConvTranspose2d, 32, 2, {"kernel_size": 3, "stride": 2}, (3, 5)),
    (
        ComplexConvTranspose3d,
        nn.ConvTranspose3d,
        2,
        2,
        {"kernel_size": 2, "stride": 2, "bias": False},
        (2, 3, 3),
    ),
]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    ("cls", "native_cls", "cin", "cout", "kwargs", "spatial"),
    CONV_CASES,
    ids=[f"{c[0].__name__}-{c[2]}to{c[3]}-{i}" for i, c in enumerate(CONV_CASES)],
)
def test_conv_matches_complex64(batch, cls, native_cls, cin, cout, kwargs, spatial):
    torch.manual_seed(0)
    layer = cls(cin, cout, **kwargs)
    native = native_cls(cin, cout, dtype=torch.complex64, **kwargs)
    x = torch.randn(batch, cin, *spatial, 2, generator=_gen(1))
    _check_against_native(layer, native, x)


@pytest.mark.parametrize(("spatial_dims", "transposed"), [(2, False), (3, False), (2, True), (3, True)])
def test_block_and_gauss_formulations_agree(spatial_dims, transposed):
    """Both formulations on the same layer, whichever one the CPU dispatch would pick."""
    groups, cin, cout = 2, 4, 6
    rows, cols = (cin, cout) if transposed else (cout, cin)
    weight = torch.randn(rows, cols // groups, *(3,) * spatial_dims, 2, generator=_gen(2))
    bias = torch.randn(cout, 2, generator=_gen(3))
    x = torch.randn(2, cin, *(5,) * spatial_dims, 2, generator=_gen(4))
    real_op = _REAL_OPS[spatial_dims, transposed]

    def op(a, w, b):
        return real_op(a, w, b, stride=2, padding=1, groups=groups)

    ref = torch.view_as_real(
        real_op(
            torch.view_as_complex(x),
            torch.view_as_complex(weight),
            torch.view_as_complex(bias),
            stride=2,
            padding=1,
            groups=groups,
        )
    )
    torch.testing.assert_close(_block(x, weight, bias, op, groups, transposed), ref, **TOL)
    torch.testing.assert_close(_gauss(x, weight, bias, op), ref, **TOL)


@pytest.mark.parametrize(
    ("cls", "cin", "cout", "groups"),
    [
        (ComplexConv2d, 3, 5, 1),  # block form
        (ComplexConv2d, 32, 4, 1),  # Gauss form on CPU
        (ComplexConv2d, 4, 6, 2),  # grouped: block form
        (ComplexConvTranspose2d, 32, 8, 1),
        (ComplexConvTranspose2d, 4, 2, 2),
        (ComplexConv3d, 2, 3, 1),
    ],
)
def test_stacked_forward_is_the_same_map(cls, cin, cout, groups):
    """``forward_stacked`` on ``to_stacked(x)`` gives ``to_stacked(forward(x))``, values and gradients."""
    torch.manual_seed(0)
    kwargs = {"stride": 2} if cls is ComplexConvTranspose2d else {"padding": 1}
    layer = cls(cin, cout, 3, groups=groups, **kwargs)
    nn.init.normal_(layer.bias)
    spatial = (5, 6, 4) if cls is ComplexConv3d else (7, 6)
    x = torch.randn(2, cin, *spatial, 2, generator=_gen(5), requires_grad=True)
    xs = to_stacked(x.detach(), groups).requires_grad_(True)
    torch.testing.assert_close(from_stacked(to_stacked(x, groups), groups), x)
    expected = layer(x)
    got = layer.forward_stacked(xs)
    torch.testing.assert_close(from_stacked(got, groups), expected, **TOL)
    up = torch.randn(expected.shape, generator=_gen(6))
    (gx,) = torch.autograd.grad(expected, x, up)
    (gs,) = torch.autograd.grad(got, xs, to_stacked(up, groups))
    torch.testing.assert_close(from_stacked(gs, groups), gx, **TOL)
    with pytest.raises(ValueError, match="expected stacked"):
        layer.forward_stacked(x)


@pytest.mark.parametrize("lead", [(1,), (3,), (2, 5)])
@pytest.mark.parametrize(("fin", "fout", "bias"), [(1, 1, True), (7, 3, True), (5, 9, False)])
def test_linear_matches_complex64(lead, fin, fout, bias):
    torch.manual_seed(0)
    layer = ComplexLinear(fin, fout, bias=bias)
    native = nn.Linear(fin, fout, bias=bias, dtype=torch.complex64)
    x = torch.randn(*lead, fin, 2, generator=_gen(5))
    _check_against_native(layer, native, x)


@pytest.mark.parametrize(
    ("layer", "fan_in"),
    [
        (ComplexConv2d(48, 40, 3), 48 * 9),
        (ComplexConv3d(16, 24, 3, groups=4), 4 * 27),
        (ComplexConvTranspose2d(64, 32, 4, stride=2), 64 * 4),
        (ComplexLinear(300, 200), 300),
    ],
)
def test_init_is_complex_he(layer, fan_in):
    """Rayleigh magnitude with E|w|^2 = 2 / fan_in and uniform phase (Trabelsi et al.); bias zero."""
    w = layer.weight.detach().reshape(-1, 2).double()
    energy = (w**2).sum(-1)
    assert energy.mean().item() * fan_in == pytest.approx(2.0, rel=0.08)
    phase = torch.atan2(w[:, 1], w[:, 0])
    assert abs(torch.cos(phase).mean().item()) < 0.05
    assert abs(torch.sin(phase).mean().item()) < 0.05
    assert torch.count_nonzero(layer.bias) == 0


def test_init_rejects_non_pair_weight():
    with pytest.raises(ValueError, match="pair"):
        complex_kaiming_(torch.empty(3, 4), 4)


def test_bad_configuration_and_input_shapes():
    with pytest.raises(ConfigError, match="groups"):
        ComplexConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="expected"):
        ComplexConv2d(3, 4, 3)(torch.randn(1, 2, 5, 5, 2))
    with pytest.raises(ValueError, match="expected"):
        ComplexConv2d(3, 4, 3)(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="expected"):
        ComplexLinear(3, 4)(torch.randn(2, 4, 2))


# Activations: the pair layer and the complex64 formula, with the per-channel bias of modReLU.
def _modrelu_ref(z, bias):
    b = bias.reshape(1, -1, *([1] * (z.dim() - 2)))
    return torch.relu(z.abs() + b) * z / z.abs()


def _crelu_ref(z):
    return torch.complex(torch.relu(z.real), torch.relu(z.imag))


def _zrelu_ref(z):
    phase = z.angle()
    return torch.where((phase >= 0) & (phase <= math.pi / 2), z, torch.zeros_like(z))


def _cardioid_ref(z):
    return 0.5 * (1 + torch.cos(z.angle())) * z


@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 3, 5, 7), (1, 2, 3, 4, 5)])
@pytest.mark.parametrize("name", ["modrelu", "crelu", "zrelu", "cardioid"])
def test_activation_matches_complex64(name, shape):
    x = torch.randn(*shape, 2, generator=_gen(6)).requires_grad_()
    xc = _complex_leaf(x)
    if name == "modrelu":
        layer = ModReLU(shape[1])
        with torch.no_grad():
            layer.bias.uniform_(-0.8, 0.3, generator=_gen(8))
        bias_ref = layer.bias.detach().clone().requires_grad_()
        ref = _modrelu_ref(xc, bias_ref)
    else:
        layer = {"crelu": CReLU(), "zrelu": ZReLU(), "cardioid": Cardioid()}[name]
        ref = {"crelu": _crelu_ref, "zrelu": _zrelu_ref, "cardioid": _cardioid_ref}[name](xc)
    out = layer(x)
    ref = torch.view_as_real(ref)
    torch.testing.assert_close(out, ref, **TOL)
    _backward_with(out, 9)
    _backward_with(ref, 9)
    torch.testing.assert_close(x.grad, torch.view_as_real(xc.grad), **TOL)
    if name == "modrelu":
        torch.testing.assert_close(layer.bias.grad, bias_ref.grad, **TOL)


def test_modrelu_dead_zone_and_identity_at_zero_bias():
    x = torch.randn(2, 3, 4, 4, 2, generator=_gen(10))
    torch.testing.assert_close(ModReLU(3)(x), x)
    layer = ModReLU(3, bias_init=-1.0)
    dead = (x**2).sum(-1) < 1.0
    assert torch.all(layer(x)[dead] == 0)
    assert torch.all(layer(x)[~dead] != 0)


@pytest.mark.parametrize(
    "layer", [ModReLU(2, bias_init=0.5), ModReLU(2, bias_init=-0.5), Cardioid(), ZReLU()]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activation_finite_at_zero(layer, dtype):
    x = torch.zeros(1, 2, 3, 3, 2, dtype=dtype, requires_grad=True)
    out = layer.to(dtype)(x)
    out.sum().backward()
    assert torch.all(out == 0)
    assert torch.isfinite(x.grad).all()
