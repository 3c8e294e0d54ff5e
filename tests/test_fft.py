import numpy as np
import pytest
import torch

from medmtl.fft import complex_matmul_right, dft2c_matmul, fft2c, ifft2c, line_projection_matrix


def _numpy_fft2c(z):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(z, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _numpy_ifft2c(z):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(z, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _pair(z):
    return torch.from_numpy(np.stack([z.real, z.imag], -1).astype(np.float32))


def _complex(x):
    return x[..., 0].double().numpy() + 1j * x[..., 1].double().numpy()


SHAPES = [(8, 8), (7, 9), (1, 5), (16, 11), (3, 2, 13, 10)]


@pytest.mark.parametrize("shape", SHAPES)
def test_numpy_parity(shape):
    rng = np.random.default_rng(0)
    z = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    x = _pair(z)
    np.testing.assert_allclose(_complex(fft2c(x)), _numpy_fft2c(z), atol=1e-5, rtol=0)
    np.testing.assert_allclose(_complex(ifft2c(x)), _numpy_ifft2c(z), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_and_energy(shape):
    x = torch.randn(*shape, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ifft2c(fft2c(x)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(fft2c(ifft2c(x)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(fft2c(x).pow(2).sum(), x.pow(2).sum(), rtol=1e-5, atol=1e-4)  # orthonormal


@pytest.mark.parametrize("n", [8, 9])
def test_dc_is_at_the_centre(n):
    image = torch.zeros(n, n, 2)
    image[..., 0] = 1.0
    kspace = fft2c(image)
    assert float(kspace[n // 2, n // 2, 0]) == pytest.approx(n)  # sum / sqrt(n * n)
    kspace[n // 2, n // 2] = 0
    assert float(kspace.abs().max()) < 1e-5


def test_batched_equals_one_by_one():
    x = torch.randn(4, 3, 6, 7, 2, generator=torch.Generator().manual_seed(2))
    batched = fft2c(x)
    for i in range(4):
        torch.testing.assert_close(batched[i], fft2c(x[i]))


def test_rejects_a_missing_pair_dimension():
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, 2\)"):
        fft2c(torch.zeros(4, 4, 3))


@pytest.mark.parametrize("shape", [*SHAPES, (2, 197, 233)])
def test_matrix_formulation_matches_the_fft(shape):
    """The formulation the exported graph uses (DFT matrices from the sizes) equals torch.fft's."""
    x = torch.randn(*shape, 2, generator=torch.Generator().manual_seed(2))
    scale = x.abs().max()
    torch.testing.assert_close(dft2c_matmul(x, inverse=False), fft2c(x), atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(dft2c_matmul(x, inverse=True), ifft2c(x), atol=1e-5 * scale, rtol=0)


def test_export_traces_the_matrix_formulation():
    """Under torch.export the graph holds matrix products and no FFT, for symbolic H and W."""

    class Round(torch.nn.Module):
        def forward(self, x):
            return ifft2c(fft2c(x) * 2)

    x = torch.randn(3, 6, 5, 2)
    auto = torch.export.Dim.AUTO
    program = torch.export.export(Round(), (x,), dynamic_shapes=({0: auto, 1: auto, 2: auto},))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [op for op in ops if "fft" in op], ops
    assert any("matmul" in op or "bmm" in op or "mm" in op for op in ops), ops
    y = torch.randn(2, 9, 7, 2)
    torch.testing.assert_close(program.module()(y), 2 * y, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("h", "w"), [(6, 8), (7, 9), (4, 1)])
def test_a_line_mask_round_trip_is_one_product_along_w(h, w):
    # ifft2c(m * fft2c(x)) for a mask that varies along W only, against numpy's transforms, in float64
    rng = np.random.default_rng(2)
    z = rng.standard_normal((2, 3, h, w)) + 1j * rng.standard_normal((2, 3, h, w))
    m = (rng.random((2, 1, 1, w)) < 0.5).astype(np.float64)
    expected = _numpy_ifft2c(m * _numpy_fft2c(z))
    qr, qi = line_projection_matrix(torch.from_numpy(m[:, 0, 0]), torch.float64)
    x = torch.from_numpy(np.stack([z.real, z.imag], -1))
    qr, qi = qr[:, None], qi[:, None]
    got = torch.stack(complex_matmul_right(x[..., 0], x[..., 1], qr, qi - qr, qr + qi), dim=-1)
    np.testing.assert_allclose(_complex(got), expected, atol=1e-12, rtol=0)
