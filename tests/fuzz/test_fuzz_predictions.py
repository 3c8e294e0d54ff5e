"""Fuzzing the one place the predictions writer reads a file: before ``write_predictions`` replaces an
existing output it opens it to make sure it holds no k-space. Damaged copies of a predictions file and of a
k-space file sit at the destination; the writer must either replace it with a complete predictions file or
raise ``InputError`` and leave it byte for byte as it was.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import synth_kspace
from fuzz_support import fuzz_examples, fuzz_settings, mutations, read_or_typed_error
from hypothesis import given

from medmtl.errors import InputError
from medmtl.inference import write_predictions
from medmtl.io.kspace import write_kspace_h5

RECON = np.linspace(0, 1, 2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4)
SEG = (RECON > 0.5).astype(np.uint8)
CLASSES = ["background", "lesion"]


# Hypothesis warns when it prints a damaged file's bytes.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


@pytest.fixture
def examples(request) -> int:
    return fuzz_examples(request)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> list[bytes]:
    root = tmp_path_factory.mktemp("prediction_seeds")
    write_predictions(root / "pred.h5", RECON, SEG, CLASSES)
    write_kspace_h5(root / "kspace.h5", synth_kspace(3, 1, 2, 6, 4)[0])
    return [(root / name).read_bytes() for name in ("pred.h5", "kspace.h5")]


def test_damaged_destination(tmp_path_factory, seeds, examples):
    dest = tmp_path_factory.mktemp("prediction_dest") / "out.h5"

    @fuzz_settings(examples)
    @given(data=mutations(seeds))
    def check(data: bytes) -> None:
        dest.write_bytes(data)
        result = read_or_typed_error(write_predictions, dest, RECON, SEG, CLASSES)
        if isinstance(result, InputError):
            assert result.where == str(dest)
            assert dest.read_bytes() == data, "a refused destination must be left as it was"
        else:
            with h5py.File(dest, "r") as f:
                np.testing.assert_array_equal(f["reconstruction"][()], RECON)
                np.testing.assert_array_equal(f["segmentation"][()], SEG)
                assert json.loads(f.attrs["classes"]) == CLASSES

    check()


def test_damaged_hdf5_destination_is_kept(tmp_path, seeds):
    """A truncated HDF5 file cannot be checked for k-space, so it is not replaced."""
    dest = tmp_path / "out.h5"
    dest.write_bytes(seeds[1][: len(seeds[1]) // 2])
    with pytest.raises(InputError, match="damaged HDF5"):
        write_predictions(dest, RECON, SEG, CLASSES)
    assert dest.read_bytes() == seeds[1][: len(seeds[1]) // 2]
