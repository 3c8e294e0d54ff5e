"""Fuzzing the k-space HDF5 readers: ``KSpaceFile``, ``validate_kspace_file``, ``KSpaceSliceDataset`` and
``inspect_file`` get damaged bytes of valid files and valid HDF5 files with the wrong structure (dtypes,
shapes, NaN, declared-but-unwritten huge dimensions, links, groups, odd attributes). Only ``MedmtlError``
may come out, within the time and memory bounds of ``fuzz_support``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import HEADER_XML, column_mask, synth_kspace
from fuzz_support import fuzz_examples, fuzz_settings, memory_bound, mutations, read_or_typed_error
from hypothesis import given
from hypothesis import strategies as st

from medmtl.data.files import KSpaceSliceDataset
from medmtl.data.inspect import inspect_file
from medmtl.errors import KSpaceFileError
from medmtl.io import kspace as kspace_module
from medmtl.io.kspace import KSpaceFile, validate_kspace_file, write_kspace_h5

# Hypothesis warns when it prints a damaged file's bytes; skimage's SSIM warns on values near the float32 maximum.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Generating overly large repr", "ignore::RuntimeWarning:skimage"
)


@pytest.fixture
def examples(request) -> int:
    return fuzz_examples(request)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> list[bytes]:
    return seed_files(tmp_path_factory.mktemp("kspace_seeds"))


def seed_files(root: Path) -> list[bytes]:
    """Small valid files: medmtl's chunked layout, fastMRI's contiguous one with a mask, and single-coil."""
    kspace, image = synth_kspace(5, 2, 2, 8, 6)
    write_kspace_h5(
        root / "medmtl.h5",
        kspace,
        mask=column_mask(6, 2, 2),
        target=image,
        segmentation=(image > 0.5).astype(np.uint8),
        attrs={"acceleration": 2.0, "classes": '["a", "b"]'},
        ismrmrd_header=HEADER_XML,
    )
    with h5py.File(root / "fastmri.h5", "w") as f:
        f.create_dataset("kspace", data=kspace * column_mask(6, 2, 2))
        f.create_dataset("mask", data=column_mask(6, 2, 2))
        f.create_dataset("reconstruction_rss", data=image[:, 2:6, 1:5])
        f.create_dataset("ismrmrd_header", data=np.bytes_(HEADER_XML))
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = 1.0
    with h5py.File(root / "single.h5", "w") as f:
        f.create_dataset("kspace", data=kspace[:, 0], chunks=(1, 8, 6), compression="gzip")
    return [(root / name).read_bytes() for name in ("medmtl.h5", "fastmri.h5", "single.h5")]


def _inspect_dataset(path: Path) -> None:
    dataset = KSpaceSliceDataset(path)
    try:
        for i in range(len(dataset)):
            dataset[i]
    finally:
        dataset.close()


def _walk(path: Path) -> None:
    with KSpaceFile(path) as f:
        repr(f)
        header = f.ismrmrd_header
        assert header is None or isinstance(header, bytes)
        f.mask()
        for i in range(f.num_slices):
            f.read_slice(i)


READERS = (_walk, validate_kspace_file, _inspect_dataset, inspect_file)


def _read_with_every_reader(path: Path) -> None:
    for read in READERS:
        err = read_or_typed_error(read, path)
        if isinstance(err, KSpaceFileError):
            # One line naming the file, the format the CLI prints.
            assert err.where == str(path) and "\n" not in str(err)


def test_damaged_bytes(tmp_path_factory, seeds, examples):
    path = tmp_path_factory.mktemp("kspace_bytes") / "case.h5"

    @fuzz_settings(examples)
    @given(data=mutations(seeds))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        _read_with_every_reader(path)

    check()


# --- valid HDF5, wrong structure -------------------------------------------------------------------------

# Declared shapes far beyond memory, created chunked and never written, so the file stays a few KiB.
HUGE_SHAPES = [(10**6, 64, 640, 640), (1, 1, 10**6, 10**6), (2**31, 1, 2, 2), (3, 2**20, 2**10, 2**10)]
DTYPES = [
    "c8",
    "c16",
    "f4",
    "f2",
    "i2",
    "u1",
    "?",
    "S3",
    [("r", "<f2"), ("i", "<f2")],
    [("r", "<f4"), ("i", "<f4")],
]
VALUES = ["random", "zeros", "ones", "nan", "inf", "huge"]


WILD_KINDS = ["data", "huge", "partial", "empty", "group"]


@st.composite
def arrays(draw, shape: st.SearchStrategy[tuple[int, ...]], dtypes: list[Any], wild: bool) -> dict[str, Any]:
    """A recipe for one dataset; ``_write_array`` makes it. Kept as plain data so failures print readably.

    Not ``wild``: written data of one of ``shape`` and ``dtypes``. ``wild``: any small shape and dtype, or a
    declared-but-unwritten huge one, a partly written one, a null dataspace or a group.
    """
    kind = draw(st.sampled_from(WILD_KINDS)) if wild else "data"
    recipe: dict[str, Any] = {"kind": kind, "dtype": draw(st.sampled_from(DTYPES if wild else dtypes))}
    if kind == "huge":
        recipe["shape"] = draw(st.sampled_from(HUGE_SHAPES))[-draw(st.integers(1, 4)) :]
    elif wild:
        recipe["shape"] = draw(st.integers(0, 5).flatmap(lambda r: st.tuples(*[st.integers(0, 7)] * r)))
    else:
        recipe["shape"] = draw(shape)
    recipe["values"] = draw(st.sampled_from(VALUES))
    recipe["seed"] = draw(st.integers(0, 2**16))
    recipe["compressed"] = draw(st.booleans())
    return recipe


def _values(recipe: dict[str, Any]) -> np.ndarray:
    dtype, shape = np.dtype(recipe["dtype"]), recipe["shape"]
    rng = np.random.default_rng(recipe["seed"])
    raw = {
        "random": lambda: rng.normal(size=shape) + 1j * rng.normal(size=shape),
        "zeros": lambda: np.zeros(shape),
        "ones": lambda: np.ones(shape),
        "nan": lambda: np.where(rng.random(shape) < 0.3, np.nan, 1.0),
        "inf": lambda: np.where(rng.random(shape) < 0.3, -np.inf, 1.0),
        "huge": lambda: np.full(shape, 3e38 + 3e38j),
    }[recipe["values"]]()
    if dtype.names:
        out = np.zeros(shape, dtype)
        with np.errstate(all="ignore"):
            out["r"], out["i"] = np.real(raw), np.imag(raw)
        return out
    if dtype.kind == "S":
        return np.real(raw).astype(str).astype(dtype)
    with np.errstate(all="ignore"):
        return (raw if dtype.kind == "c" else np.real(raw)).astype(dtype)


def _write_array(f: h5py.File, name: str, recipe: dict[str, Any]) -> None:
    kind, shape, dtype = recipe["kind"], recipe["shape"], np.dtype(recipe["dtype"])
    if kind == "group":
        f.create_group(name)
    elif kind == "empty":
        f.create_dataset(name, data=h5py.Empty(dtype))
    elif kind == "huge":
        chunks = tuple(min(n, 64) for n in shape)
        f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=np.zeros((), dtype))
    elif kind == "partial" and len(shape) > 0 and shape[0] > 1 and 0 not in shape:
        # A writer killed after its first slice: the other chunks were never allocated.
        ds = f.create_dataset(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]))
        ds[0] = _values(recipe)[0]
    else:
        options = {"compression": "gzip", "chunks": True} if recipe["compressed"] and shape else {}
        f.create_dataset(name, data=_values(recipe), **options)


KSPACE_LINKS = ["soft_missing", "soft_loop", "external_missing"]
ATTRIBUTE_VALUES = st.one_of(
    # HDF5 strings end at a NUL, so h5py refuses to write one inside.
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20),
    st.binary(max_size=20).map(lambda b: b.replace(b"\x00", b"\x01")),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.sampled_from(
        [
            np.arange(6, dtype="f4").reshape(2, 3),
            h5py.Empty("f4"),
            np.bytes_(b"\xff\xfe not utf-8"),
            np.array([b"a", b"bc"]),
            np.bool_(True),
            np.complex64(1 + 2j),
        ]
    ),
)


@st.composite
def layouts(draw) -> dict[str, Any]:
    """A whole k-space file: each dataset of the layout present or not; mostly fitting the k-space (wrong
    values, dtypes and sizes within the rules), sometimes wild, so that both the checks on open and the
    reads behind them run."""
    s, c, h, w = draw(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 8), st.integers(1, 8)))
    per_slice = st.tuples(st.just(s), st.integers(1, h), st.integers(1, w))
    fitting = {
        "kspace": (st.sampled_from([(s, c, h, w), (s, h, w)]), ["c8", "c16"]),
        "mask": (st.sampled_from([(w,), (1, w), (h, w)]), ["f4", "f2", "?", "u1", "i8"]),
        "target": (per_slice, ["f4", "f2", "f8", "i2", "u1"]),
        "reconstruction_rss": (per_slice, ["f4", "f8"]),
        "segmentation": (per_slice, ["u1", "u2", "i8", "?"]),
        "ismrmrd_header": (st.just(()), ["S40"]),
    }
    layout: dict[str, Any] = {}
    for name, (shape, dtypes) in fitting.items():
        if name == "kspace" and draw(st.integers(0, 9)) == 0:
            layout[name] = draw(st.sampled_from(KSPACE_LINKS))
        elif name == "kspace" or draw(st.booleans()):
            layout[name] = draw(arrays(shape, dtypes, wild=draw(st.integers(0, 3)) == 0))
    names = st.sampled_from(["max", "norm", "acceleration", "classes", "x"])
    layout["attrs"] = draw(st.dictionaries(names, ATTRIBUTE_VALUES, max_size=3))
    # fastMRI's files use HDF5's oldest format; the newest one has other chunk indexes and allows
    # attributes above 64 KiB (dense attribute storage).
    layout["libver"] = draw(st.sampled_from(["earliest", "latest"]))
    if layout["libver"] == "latest" and draw(st.booleans()):
        layout["attrs"]["big"] = np.zeros(20_000, "f8")
    return layout


def _write_layout(path: Path, layout: dict[str, Any]) -> None:
    with h5py.File(path, "w", libver=layout["libver"]) as f:
        kspace = layout["kspace"]
        if kspace == "soft_missing":
            f["kspace"] = h5py.SoftLink("/nowhere")
        elif kspace == "soft_loop":
            f["kspace"] = h5py.SoftLink("/kspace")
        elif kspace == "external_missing":
            f["kspace"] = h5py.ExternalLink("missing_file.h5", "/kspace")
        for name, recipe in layout.items():
            if isinstance(recipe, dict) and name != "attrs":
                _write_array(f, name, recipe)
        for key, value in layout["attrs"].items():
            f.attrs[key] = value


def test_wrong_structures(tmp_path_factory, examples):
    path = tmp_path_factory.mktemp("kspace_layouts") / "case.h5"

    @fuzz_settings(examples)
    @given(layout=layouts())
    def check(layout: dict[str, Any]) -> None:
        _write_layout(path, layout)
        _read_with_every_reader(path)

    check()


# --- declared sizes are limited before anything is read ---------------------------------------------------


@pytest.mark.parametrize("shape", HUGE_SHAPES)
@pytest.mark.parametrize("name", ["kspace", "target", "segmentation", "mask"])
def test_huge_declared_dataset_is_refused_at_once(tmp_path, name, shape):
    """Unwritten datasets declaring terabytes: refused on open, with no big allocation and no hang."""
    path = tmp_path / "huge.h5"
    kspace, _ = synth_kspace(1, 2, 1, 4, 4)
    with h5py.File(path, "w") as f:
        if name != "kspace":
            f.create_dataset("kspace", data=kspace)
            shape = (2, *shape[-2:]) if name != "mask" else shape[-2:]
        dtype = {"kspace": "c8", "segmentation": "u1"}.get(name, "f4")
        f.create_dataset(name, shape=shape, dtype=dtype, chunks=tuple(min(n, 64) for n in shape))
    with memory_bound(64 << 20), pytest.raises(KSpaceFileError):
        validate_kspace_file(path)


def test_unwritten_slices_are_refused(tmp_path):
    path = tmp_path / "partial.h5"
    kspace, _ = synth_kspace(1, 3, 2, 4, 4)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=kspace.shape, dtype="c8", chunks=(1, 2, 4, 4))[0] = kspace[0]
    with pytest.raises(KSpaceFileError, match="not completely written"):
        KSpaceFile(path)


# name -> (extra datasets beside a (1, 1, 4, 4) complex64 k-space, bytes of the read that must trip the limit)
LIMIT_CASES: dict[str, tuple[dict[str, Any], int]] = {
    "kspace": ({"kspace": np.ones((1, 3, 8, 8), "c8")}, 3 * 8 * 8 * 8),
    "target": ({"target": np.ones((1, 16, 16), "f4")}, 16 * 16 * 4),
    "segmentation": ({"segmentation": np.ones((1, 16, 16), "i8")}, 16 * 16 * 8),
    "mask": ({"mask": np.ones((4, 4), "f8")}, 4 * 4 * 8),
    "ismrmrd_header": ({"ismrmrd_header": np.bytes_(b"x" * 2000)}, 2000),
    "attribute 'big'": ({}, 300 * 8),
}


@pytest.mark.parametrize("name", sorted(LIMIT_CASES))
def test_read_limit_is_checked_before_reading(tmp_path, monkeypatch, name):
    """With the documented limit lowered to one byte below a read, that read is refused, naming it."""
    datasets, size = LIMIT_CASES[name]
    path = tmp_path / "ok.h5"
    with h5py.File(path, "w") as f:
        for key, data in {"kspace": np.ones((1, 1, 4, 4), "c8"), **datasets}.items():
            f.create_dataset(key, data=data)
        f.attrs["big"] = np.zeros(300 if name == "attribute 'big'" else 1)
    monkeypatch.setattr(kspace_module, "MAX_READ_BYTES", size - 1)
    with pytest.raises(KSpaceFileError, match="above the read limit") as err:
        _walk(path)
    assert name in err.value.what
    monkeypatch.setattr(kspace_module, "MAX_READ_BYTES", size)
    _walk(path)
