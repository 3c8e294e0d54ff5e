import numpy as np
import pytest
import torch

from medmtl.fft import fft2c, ifft2c


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
