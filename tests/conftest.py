"""Shared fixtures: seeded synthetic multi-coil k-space, files in fastMRI's exact layouts, and bad files.

The fastMRI fixtures are written with h5py directly (not with medmtl's writer), the way the fastMRI
multicoil sets store them, at small sizes: training files hold ``kspace`` (S, C, 2h, w) complex64 whose
outer columns are zero padding, ``reconstruction_rss`` (S, h, h) float32 (smaller than k-space, as
320 x 320 beside 640 x 368), ``ismrmrd_header`` bytes and the attributes ``acquisition``, ``max``,
``norm`` and ``patient_id``; test files hold undersampled ``kspace``, a (W,) ``mask`` and no target.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from medmtl.io.kspace import write_kspace_h5


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        default=False,
        help="fuzz tests (tests/fuzz): 5000 examples per reader instead of 200",
    )


# The smallest ReconSegNet that still runs every part (keyword arguments of ``ReconSegNet``).
TINY_NET = {
    "num_cascades": 2,
    "chans": 2,
    "pools": 1,
    "sens_chans": 2,
    "sens_pools": 1,
    "seg_chans": 4,
    "seg_pools": 1,
}


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """Tests use tiny tensors, where intra-op threads only add OpenMP barriers; on a busy 2-core machine
    those stalled steps for seconds. Subprocess tests set ``OMP_NUM_THREADS=1`` themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HEADER_XML = b'<?xml version="1.0"?><ismrmrdHeader><encoding><trajectory>cartesian</trajectory></encoding></ismrmrdHeader>'


def fft2c_np(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT over the last two axes (the reference the package's FFT matches)."""
    shifted = np.fft.ifftshift(image, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


def ifft2c_np(kspace: np.ndarray) -> np.ndarray:
    shifted = np.fft.ifftshift(kspace, axes=(-2, -1))
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


def synth_kspace(
    seed: int, slices: int, coils: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded fully sampled k-space of smooth blobs seen by smooth coils with sum_c |S_c|^2 = 1.

    Returns kspace (S, C, H, W) complex64 and the true magnitude image (S, H, W) float32, which equals
    the RSS of the coil images.
    """
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    images = np.zeros((slices, height, width), np.complex128)
    for s in range(slices):
        for _ in range(4):
            cy, cx, r = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.2, 0.5)
            images[s] += rng.uniform(0.5, 1.0) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / r**2)
        images[s] *= np.exp(1j * np.pi * rng.uniform(-1, 1) * (x + y) / 2)
    angles = 2 * np.pi * np.arange(coils) / coils
    sens = np.stack(
        [np.exp(-((y - np.sin(a)) ** 2 + (x - np.cos(a)) ** 2)) * np.exp(1j * a * (1 + x)) for a in angles]
    )
    sens /= np.sqrt((np.abs(sens) ** 2).sum(axis=0, keepdims=True))
    kspace = fft2c_np(images[:, None] * sens[None])
    return kspace.astype(np.complex64), np.abs(images).astype(np.float32)


def column_mask(width: int, acceleration: int, center: int, offset: int = 0) -> np.ndarray:
    """Equispaced (W,) bool mask with a fully sampled centre of ``center`` columns."""
    mask = np.zeros(width, bool)
    mask[offset::acceleration] = True
    start = (width - center + 1) // 2
    mask[start : start + center] = True
    return mask


@pytest.fixture(scope="session")
def make_kspace() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``synth_kspace(seed, slices, coils, height, width)`` for tests that build their own files."""
    return synth_kspace


FASTMRI_TRAIN = {"slices": 3, "coils": 4, "height": 32, "width": 24, "pad": 2, "rss": 16}


@pytest.fixture(scope="session")
def fastmri_train_h5(tmp_path_factory) -> Path:
    """A fastMRI multicoil training file; sizes in ``FASTMRI_TRAIN``."""
    p = FASTMRI_TRAIN
    kspace, _ = synth_kspace(1, p["slices"], p["coils"], p["height"], p["width"])
    kspace[..., : p["pad"]] = 0
    kspace[..., -p["pad"] :] = 0
    coil_images = ifft2c_np(kspace)
    rss_full = np.sqrt((np.abs(coil_images) ** 2).sum(axis=1))
    top, left = (p["height"] - p["rss"]) // 2, (p["width"] - p["rss"]) // 2
    rss = rss_full[:, top : top + p["rss"], left : left + p["rss"]].astype(np.float32)
    path = tmp_path_factory.mktemp("fastmri_train") / "file1000001.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("reconstruction_rss", data=rss)
        f.create_dataset("ismrmrd_header", data=np.bytes_(HEADER_XML))
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = float(rss.max())
        f.attrs["norm"] = float(np.linalg.norm(rss))
        f.attrs["patient_id"] = "0" * 64
    return path


@pytest.fixture(scope="session")
def fastmri_test_h5(tmp_path_factory) -> Path:
    """A fastMRI multicoil test-set file: undersampled kspace (2, 4, 32, 22), bool mask (22,), no target."""
    kspace, _ = synth_kspace(2, 2, 4, 32, 22)
    mask = column_mask(22, 4, 4)
    path = tmp_path_factory.mktemp("fastmri_test") / "file1000002.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace * mask)
        f.create_dataset("mask", data=mask)
        f.create_dataset("ismrmrd_header", data=np.bytes_(HEADER_XML))
        f.attrs["acceleration"] = 4
        f.attrs["num_low_frequency"] = 4
        f.attrs["acquisition"] = "CORPDFS_FBK"
        f.attrs["max"] = 1.0
        f.attrs["norm"] = 1.0
        f.attrs["patient_id"] = "1" * 64
    return path


@pytest.fixture(scope="session")
def medmtl_h5(tmp_path_factory) -> Path:
    """A medmtl-written file: kspace (4, 3, 20, 18) fully sampled, a stored column mask at 3x,
    ``target`` (4, 20, 18), ``segmentation`` (4, 20, 18) with labels 0..2 and a ``classes`` attribute."""
    kspace, image = synth_kspace(3, 4, 3, 20, 18)
    segmentation = np.digitize(image, [0.3, 0.6]).astype(np.uint8)
    path = tmp_path_factory.mktemp("medmtl") / "sim_000.h5"
    return write_kspace_h5(
        path,
        kspace,
        mask=column_mask(18, 3, 4),
        target=image,
        segmentation=segmentation,
        attrs={"acceleration": 3.0, "classes": '["other", "grey_matter", "white_matter"]'},
    )


def _write_raw(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
    return path


def _good(path: Path) -> Path:
    kspace, image = synth_kspace(4, 2, 2, 16, 18)
    return _write_raw(path, kspace=kspace, target=image)


def _truncated(path: Path) -> Path:
    _good(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _poisoned(value: complex) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        kspace, _ = synth_kspace(4, 2, 2, 16, 18)
        kspace[1, 0, 3, 5] = value
        return _write_raw(path, kspace=kspace)

    return build


def _plain_text(path: Path) -> Path:
    path.write_text("this is not HDF5\n")
    return path


_K = synth_kspace(4, 2, 2, 16, 18)[0]

# name -> (builder writing a bad file at the given path (or nothing), words the error must contain)
BAD_KSPACE_FILES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "missing": (lambda p: p, ("no such file",)),
    "not_hdf5": (_plain_text, ("not an HDF5 file",)),
    "truncated": (_truncated, ("truncated",)),
    "no_kspace": (
        lambda p: _write_raw(p, reconstruction_rss=np.ones((2, 8, 8), np.float32)),
        ("no `kspace`",),
    ),
    "rank_2": (lambda p: _write_raw(p, kspace=_K[0, 0]), ("2 dimensions", "expected 4")),
    "rank_5": (lambda p: _write_raw(p, kspace=_K[None]), ("5 dimensions", "expected 4")),
    "float_dtype": (lambda p: _write_raw(p, kspace=np.abs(_K)), ("dtype float32", "complex")),
    "empty_dim": (lambda p: _write_raw(p, kspace=_K[:, :0]), ("empty dimension",)),
    "nan": (_poisoned(complex(np.nan, 0)), ("slice 1", "NaN")),
    "inf": (_poisoned(complex(0, np.inf)), ("slice 1", "Inf")),
    "zero_mask": (lambda p: _write_raw(p, kspace=_K, mask=np.zeros(18, np.float32)), ("mask", "all zeros")),
    "mask_length": (
        lambda p: _write_raw(p, kspace=_K, mask=np.ones(20, np.float32)),
        ("mask has length 20", "W = 18"),
    ),
}


@pytest.fixture(params=sorted(BAD_KSPACE_FILES))
def bad_kspace_file(request, tmp_path) -> tuple[Path, tuple[str, ...]]:
    """One bad k-space file per case in ``BAD_KSPACE_FILES``: (path, words its error must contain)."""
    build, words = BAD_KSPACE_FILES[request.param]
    return build(tmp_path / f"{request.param}.h5"), words


def save_fit_checkpoint(
    path: Path, net: torch.nn.Module, init_args: dict, perturb: float = 0.0, **hparams
) -> Path:
    """A checkpoint shaped like the ones `medmtl fit` writes for ``net``: its weights under ``model.``, spread
    by ``perturb`` times Gaussian noise (zero-initialised heads would otherwise hide the rest), and
    LightningCLI's config of it, ``init_args``, in ``hyper_parameters`` with ``hparams`` beside it."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(perturb * torch.randn_like(p))
    class_path = f"{type(net).__module__}.{type(net).__qualname__}"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"model": {"class_path": class_path, "init_args": init_args}, **hparams},
        },
        path,
    )
    return path
