"""Fuzzing the lesion readers: ``DeepLesionIndex`` (DL_info.csv, PNG slices, tag file) and
``read_lesion_nifti`` (image, labels, tag file) get damaged bytes of valid files, and valid files with the
wrong structure (odd fields, wrong dtypes, huge declared shapes, NaN or zero spacing, broken scaling).
Only ``MedmtlError`` may come out, within the time and memory bounds of ``fuzz_support``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzz_support import fuzz_examples, fuzz_settings, memory_bound, mutations, read_or_typed_error
from hypothesis import given
from hypothesis import strategies as st
from lesion_files import (
    DL_HEADER,
    DL_ROWS,
    NIFTI_SHAPE,
    NIFTI_SPACING,
    nifti_stored,
    raw_nifti,
    write_deeplesion,
    write_dl_csv,
    write_nifti_case,
)

from medmtl.data.deeplesion import DeepLesionIndex
from medmtl.data.lesion_nifti import read_lesion_nifti
from medmtl.errors import InputError, MedmtlError

# Hypothesis warns when it prints a damaged file's bytes.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


@pytest.fixture
def examples(request) -> int:
    return fuzz_examples(request)


@pytest.fixture(scope="module")
def dl_seed(tmp_path_factory) -> Path:
    return write_deeplesion(tmp_path_factory.mktemp("dl_seed"))


@pytest.fixture(scope="module")
def nifti_seed(tmp_path_factory) -> tuple[Path, Path, Path]:
    return write_nifti_case(tmp_path_factory.mktemp("nifti_seed"))


def _copy(seed: Path, dest: Path) -> Path:
    shutil.copytree(seed, dest)
    return dest


def _read_deeplesion(root: Path, tags: Path | None, context_mm: float | None = None) -> None:
    index = DeepLesionIndex(root, tags_json=tags, context_mm=context_mm)
    for i in range(len(index)):
        volume = index[i]
        assert volume.image.shape == volume.instances.shape


def _read_nifti(image: Path, labels: Path | None, tags: Path | None) -> None:
    volume = read_lesion_nifti(image, labels, tags)
    assert volume.image.shape == volume.instances.shape and volume.image.dtype == np.float32


def _check(read, *args: Any) -> None:
    err = read_or_typed_error(read, *args)
    if isinstance(err, MedmtlError):
        # One line naming the file, the format the CLI prints.
        assert isinstance(err, InputError) and "\n" not in str(err), repr(err)


# --- damaged bytes ------------------------------------------------------------------------------------------


def test_damaged_csv(tmp_path, dl_seed, examples):
    root = _copy(dl_seed, tmp_path / "dl")
    seeds = [(dl_seed / "DL_info.csv").read_bytes()]

    @fuzz_settings(examples)
    @given(data=mutations(seeds))
    def check(data: bytes) -> None:
        (root / "DL_info.csv").write_bytes(data)
        _check(_read_deeplesion, root, root / "tags.json")

    check()


def test_damaged_png(tmp_path, dl_seed, examples):
    root = _copy(dl_seed, tmp_path / "dl")
    folder = dl_seed / "Images_png" / "000001_01_01"
    seeds = [(folder / name).read_bytes() for name in ("001.png", "003.png")]

    @fuzz_settings(examples)
    @given(data=mutations(seeds, header_bytes=64), number=st.sampled_from([1, 3]))
    def check(data: bytes, number: int) -> None:
        target = root / "Images_png" / "000001_01_01" / f"{number:03d}.png"
        target.write_bytes(data)
        try:
            _check(_read_deeplesion, root, None)
        finally:
            shutil.copy(folder / target.name, target)

    check()


def test_damaged_tags(tmp_path, dl_seed, nifti_seed, examples):
    root = _copy(dl_seed, tmp_path / "dl")
    image, labels, nifti_tags = nifti_seed
    seeds = [(dl_seed / "tags.json").read_bytes(), nifti_tags.read_bytes()]
    tags = tmp_path / "tags.json"

    @fuzz_settings(examples)
    @given(data=mutations(seeds))
    def check(data: bytes) -> None:
        tags.write_bytes(data)
        _check(_read_deeplesion, root, tags)
        _check(_read_nifti, image, labels, tags)

    check()


def test_damaged_nifti(tmp_path, nifti_seed, examples):
    image, labels, tags = nifti_seed
    plain = raw_nifti(tmp_path / "plain.nii", NIFTI_SHAPE, "int16", nifti_stored().tobytes("F"))
    seeds = [image.read_bytes(), labels.read_bytes(), plain.read_bytes()]

    @fuzz_settings(examples)
    @given(data=mutations(seeds, header_bytes=400))
    def check(data: bytes) -> None:
        # Named by content, so that damaged gzip streams reach the gzip reader and plain files the header.
        damaged = tmp_path / ("x.nii.gz" if data[:2] == b"\x1f\x8b" else "x.nii")
        damaged.write_bytes(data)
        _check(_read_nifti, damaged, None, None)
        _check(_read_nifti, image, damaged, tags)

    check()


# --- valid files, wrong structure ---------------------------------------------------------------------------

ODD_FIELDS = [
    "",
    " ",
    "nan",
    "inf",
    "-inf",
    "0",
    "-1",
    "1e308",
    "4096",
    "4097",
    "99999999999",
    "a",
    "1,,2",
    "F",
]
_number = st.one_of(
    st.integers(-10, 5000).map(str), st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr)
)
FIELD_VALUES = st.one_of(
    st.sampled_from(ODD_FIELDS),
    st.lists(_number, min_size=1, max_size=9).map(", ".join),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
)


@st.composite
def dl_tables(draw) -> tuple[list[str], list[dict[str, str]]]:
    """A header (mostly as released, else shuffled or one column short) and 1-6 fixture rows with up to
    three fields changed."""
    header = draw(
        st.sampled_from(["released"] * 4 + ["shuffled", "short"]).flatmap(
            lambda kind: {
                "released": st.just(DL_HEADER),
                "shuffled": st.permutations(DL_HEADER),
                "short": st.sampled_from(DL_HEADER).map(lambda gone: [c for c in DL_HEADER if c != gone]),
            }[kind]
        )
    )
    picks = draw(st.lists(st.integers(0, len(DL_ROWS) - 1), min_size=1, max_size=6))
    rows = []
    for pick in picks:
        edits = draw(st.dictionaries(st.sampled_from(DL_HEADER), FIELD_VALUES, max_size=3))
        rows.append({**DL_ROWS[pick], **edits})
    return header, rows


def test_wrong_csv_structures(tmp_path, dl_seed, examples):
    root = _copy(dl_seed, tmp_path / "dl")

    @fuzz_settings(examples)
    @given(table=dl_tables(), context=st.sampled_from([None, 0.0, 7.5]))
    def check(table: tuple[list[str], list[dict[str, str]]], context: float | None) -> None:
        header, rows = table
        write_dl_csv(root / "DL_info.csv", tuple(rows), header)
        _check(_read_deeplesion, root, None, context)

    check()


NIFTI_DTYPES = [
    "uint8",
    "int8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "float32",
    "float64",
    "complex64",
    "RGB",
]
ZOOMS = [0.8, 2.5, 1e-30, 1e30, 0.0, -0.9, float("nan"), float("inf")]
SCALING = [(0.0, 0.0), (2.0, -1024.0), (0.5, 0.25), (float("nan"), 5.0), (1.0, float("inf")), (1e38, 0.0)]


FAULTS = ("shape", "dtype", "zooms", "offset", "scaling", "values")


@st.composite
def nifti_recipes(draw) -> dict[str, Any]:
    """The fixture's header and data with up to two faults, kept as plain data so failures print readably."""
    recipe: dict[str, Any] = {
        "shape": NIFTI_SHAPE,
        "dtype": "int16",
        "zooms": NIFTI_SPACING,
        "vox_offset": 352,
        "scaling": (1.0, 0.0),
        "values": "labels",
        "seed": draw(st.integers(0, 2**16)),
        "gzip": draw(st.booleans()),
    }
    for fault in sorted(draw(st.sets(st.sampled_from(FAULTS), max_size=2))):
        if fault == "shape":
            recipe["shape"] = draw(
                st.one_of(
                    st.sampled_from([(*NIFTI_SHAPE, 1), (*NIFTI_SHAPE, 2), NIFTI_SHAPE[:2]]),
                    st.lists(st.integers(0, 5), min_size=1, max_size=7).map(tuple),
                    st.lists(st.sampled_from([1, 512, 4096, 32767]), min_size=3, max_size=4).map(tuple),
                )
            )
        elif fault == "dtype":
            recipe["dtype"] = draw(st.sampled_from(NIFTI_DTYPES))
        elif fault == "zooms":
            recipe["zooms"] = tuple(draw(st.lists(st.sampled_from(ZOOMS), min_size=3, max_size=3)))
        elif fault == "offset":
            recipe["vox_offset"] = draw(st.sampled_from([0, 200, 356, 10**9]))
        elif fault == "scaling":
            recipe["scaling"] = draw(st.sampled_from(SCALING))
        else:
            recipe["values"] = draw(st.sampled_from(["random", "nan", "short", "none"]))
    return recipe


def _nifti_bytes(recipe: dict[str, Any]) -> bytes:
    """Data for ``recipe``: the whole declared size where that is small, else a few KiB."""
    dtype = (
        np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
        if recipe["dtype"] == "RGB"
        else np.dtype(recipe["dtype"])
    )
    count = int(np.prod(recipe["shape"]))
    if recipe["values"] == "none":
        return b""
    rng = np.random.default_rng(recipe["seed"])
    if count * dtype.itemsize > 1 << 16 or recipe["values"] in ("random", "short"):
        size = (
            int(rng.integers(0, 4096)) if recipe["values"] != "short" else max(count * dtype.itemsize - 1, 0)
        )
        return rng.bytes(min(size, 1 << 16))
    if recipe["values"] == "nan" and dtype.kind in "fc":
        return np.full(count, np.nan, dtype).tobytes()
    if dtype.fields:
        return rng.bytes(count * dtype.itemsize)
    return rng.integers(0, 4, count).astype(dtype).tobytes()


def test_wrong_nifti_structures(tmp_path, examples):
    # The image written the same way, so that labels with the fixture's header share its affine.
    image = raw_nifti(tmp_path / "image.nii", NIFTI_SHAPE, "int16", nifti_stored().tobytes("F"))

    @fuzz_settings(examples)
    @given(recipe=nifti_recipes())
    def check(recipe: dict[str, Any]) -> None:
        path = tmp_path / ("x.nii.gz" if recipe["gzip"] else "x.nii")
        slope, inter = recipe["scaling"]
        raw_nifti(
            path,
            recipe["shape"],
            "RGB" if recipe["dtype"] == "RGB" else recipe["dtype"],
            _nifti_bytes(recipe),
            zooms=recipe["zooms"],
            vox_offset=recipe["vox_offset"],
            scl_slope=slope,
            scl_inter=inter,
        )
        _check(_read_nifti, path, None, None)
        _check(_read_nifti, image, path, None)

    check()


# --- declared sizes are limited before anything is read ---------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("shape", [(512, 512, 1024), (32767, 32767, 32767), (4096, 4096, 16, 1)])
def test_huge_declared_nifti_is_refused_without_allocating(tmp_path, shape, suffix):
    path = raw_nifti(tmp_path / f"huge{suffix}", shape, "int16", bytes(1000))
    with memory_bound(64 << 20), pytest.raises(InputError, match=r"truncated|above the limit"):
        read_lesion_nifti(path)


@pytest.mark.parametrize(
    "size, slices", [("4096, 4096", "1, 1024"), ("4096, 4096", "1, 16"), ("512, 512", "1, 1024")]
)
def test_huge_declared_deeplesion_volume_is_refused_without_allocating(tmp_path, dl_seed, size, slices):
    root = _copy(dl_seed, tmp_path / "dl")
    write_dl_csv(root / "DL_info.csv", ({**DL_ROWS[0], "Image_size": size, "Slice_range": slices},))
    index = DeepLesionIndex(root)
    with memory_bound(64 << 20), pytest.raises(InputError, match=r"above the limit|Image_size"):
        index[0]
