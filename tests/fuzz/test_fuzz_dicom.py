"""Fuzzing ``read_dicom_series``: one slice of a real 3-slice series (pydicom's CT_small.dcm and MR_small.dcm)
gets damaged bytes, or a valid file with the wrong structure (huge or zero sizes, odd bit depths, NaN, infinite
or missing geometry, a slice moved onto another, strings where numbers belong). Only one-line ``InputError``s
may come out, within the time and memory bounds of ``fuzz_support``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from dicom_files import write_series
from fuzz_support import fuzz_examples, fuzz_settings, mutations, read_or_typed_error
from hypothesis import given
from hypothesis import strategies as st

from medmtl.errors import InputError, MedmtlError
from medmtl.io.dicom import read_dicom_series

pytestmark = [
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
    # pydicom warns about invalid values before the reader refuses them.
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture
def examples(request) -> int:
    return fuzz_examples(request)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dicom_seed")
    return {
        name: write_series(root / name, num_slices=3, name=f"{name}_small.dcm")[0] for name in ("CT", "MR")
    }


def _read(folder: Path) -> None:
    series = read_dicom_series(folder)
    assert series.image.ndim == 3 and series.image.shape[2] >= 2


def _check(folder: Path) -> None:
    err = read_or_typed_error(_read, folder)
    if isinstance(err, MedmtlError):
        assert isinstance(err, InputError) and "\n" not in str(err), repr(err)


def test_damaged_bytes(tmp_path, seeds, examples):
    folders = {name: shutil.copytree(seed, tmp_path / name) for name, seed in seeds.items()}
    originals = {name: sorted(seed.glob("*.dcm")) for name, seed in seeds.items()}
    blobs = {(name, slot): files[slot].read_bytes() for name, files in originals.items() for slot in range(3)}

    @fuzz_settings(examples)
    @given(target=st.sampled_from(sorted(blobs)), data=st.data())
    def check(target: tuple[str, int], data: st.DataObject) -> None:
        # A slice damaged in place: its own bytes, so that most examples reach the geometry and the pixels.
        name, slot = target
        damaged = data.draw(mutations([blobs[target]], header_bytes=1024))
        path = folders[name] / originals[name][slot].name
        path.write_bytes(damaged)
        try:
            _check(folders[name])
        finally:
            shutil.copy(originals[name][slot], path)

    check()


_NUMBERS = st.one_of(
    st.integers(-(2**31), 2**31),
    st.sampled_from([0, 1, -1, 65535, 2**32 - 1]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)
_DS = st.one_of(
    _NUMBERS.map(lambda v: str(v)[:16]),
    st.sampled_from(["nan", "inf", "-inf", "", "1e308", "abc", "1\\2"]),
)


def _edit(draw_value, keyword: str):
    return st.tuples(st.just(keyword), draw_value)


_EDITS = st.one_of(
    _edit(st.integers(0, 65535), "Rows"),
    _edit(st.integers(0, 65535), "Columns"),
    _edit(st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64, 65535]), "BitsAllocated"),
    _edit(st.sampled_from([0, 1, 8, 12, 16, 17, 255]), "BitsStored"),
    _edit(st.sampled_from([0, 7, 11, 15, 31, 200]), "HighBit"),
    _edit(st.sampled_from([0, 1, 2, 3]), "PixelRepresentation"),
    _edit(st.sampled_from([0, 1, 3, 4]), "SamplesPerPixel"),
    _edit(st.sampled_from(["0", "1", "2", "100000", "-1", "x"]), "NumberOfFrames"),
    _edit(st.lists(_DS, min_size=0, max_size=4), "PixelSpacing"),
    _edit(st.lists(_DS, min_size=0, max_size=8), "ImageOrientationPatient"),
    _edit(st.lists(_DS, min_size=0, max_size=4), "ImagePositionPatient"),
    _edit(_DS, "RescaleSlope"),
    _edit(_DS, "RescaleIntercept"),
    _edit(st.sampled_from(["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL"]), "PhotometricInterpretation"),
    _edit(st.sampled_from(["", "SEG", "SR", "CT"]), "Modality"),
    _edit(st.sampled_from(["", "1.2.3", "x" * 64]), "SeriesInstanceUID"),
    _edit(st.sampled_from(["062Y", "6M", "abc", "", "999D"]), "PatientAge"),
    _edit(st.binary(max_size=64), "PixelData"),
    _edit(st.just(None), "ImagePositionPatient"),
    _edit(st.just(None), "PixelSpacing"),
    _edit(st.just(None), "PixelData"),
)


def test_wrong_structures(tmp_path, seeds, examples):
    folders = {name: shutil.copytree(seed, tmp_path / name) for name, seed in seeds.items()}
    originals = {name: sorted(seed.glob("*.dcm")) for name, seed in seeds.items()}

    @fuzz_settings(examples)
    @given(
        name=st.sampled_from(sorted(seeds)),
        slot=st.integers(0, 2),
        edits=st.lists(_EDITS, min_size=1, max_size=3),
        every=st.booleans(),
    )
    def check(name: str, slot: int, edits: list, every: bool) -> None:
        slots = range(3) if every else [slot]
        for s in slots:
            ds = pydicom.dcmread(originals[name][s])
            for keyword, value in edits:
                if value is None:
                    if keyword in ds:
                        del ds[keyword]
                    continue
                try:
                    setattr(ds, keyword, value)
                except (ValueError, TypeError, OverflowError):
                    continue  # pydicom refuses to store it: not a file anyone can write
            try:
                ds.save_as(folders[name] / originals[name][s].name)
            except (ValueError, TypeError, OverflowError, struct_error()):
                shutil.copy(originals[name][s], folders[name] / originals[name][s].name)
        try:
            _check(folders[name])
        finally:
            for s in slots:
                shutil.copy(originals[name][s], folders[name] / originals[name][s].name)

    check()


def struct_error() -> type[Exception]:
    import struct

    return struct.error
