"""k-space HDF5 I/O: round trip, fastMRI layouts, masks, lazy reading and layout validation."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import FASTMRI_TRAIN, HEADER_XML, column_mask

from medmtl.errors import InputError, KSpaceFileError
from medmtl.io.kspace import KSpaceFile, expand_kspace_paths, validate_kspace_file, write_kspace_h5


@pytest.mark.parametrize(
    ("slices", "coils", "height", "width", "mask_shape"),
    [(1, 1, 9, 7, "1d"), (3, 2, 16, 13, "row"), (2, 5, 11, 20, "2d"), (2, 3, 12, 12, None)],
)
def test_round_trip(tmp_path, make_kspace, slices, coils, height, width, mask_shape):
    kspace, image = make_kspace(10, slices, coils, height, width)
    rng = np.random.default_rng(0)
    mask = {
        "1d": rng.random(width) < 0.5,
        "row": (rng.random((1, width)) < 0.5).astype(np.float64),
        "2d": rng.random((height, width)) < 0.5,
        None: None,
    }[mask_shape]
    if mask is not None:
        mask.reshape(-1)[0] = 1
    seg = rng.integers(0, 4, (slices, height, width))
    attrs = {"acceleration": 4.0, "classes": '["a", "b"]', "num": np.int64(3)}
    out = write_kspace_h5(
        tmp_path / "x.h5",
        kspace,
        mask=mask,
        target=image,
        segmentation=seg,
        attrs=attrs,
        ismrmrd_header="<h/>",
    )
    assert out == tmp_path / "x.h5"
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]  # no temp file left behind
    with KSpaceFile(out) as f:
        assert (f.num_slices, f.num_coils, f.shape) == (slices, coils, (height, width))
        assert f.attrs == {"acceleration": 4.0, "classes": '["a", "b"]', "num": 3}
        assert f.ismrmrd_header == b"<h/>"
        assert f.has_target and f.has_segmentation and f.target_shape == (height, width)
        expected_mask = np.ones((1, width)) if mask is None else (mask != 0).reshape(-1, width)
        np.testing.assert_array_equal(f.mask(), expected_mask)
        assert f.mask().dtype == np.float32
        for i in range(slices):
            s = f.read_slice(i)
            assert s["kspace"].dtype == np.complex64 and s["target"].dtype == np.float32
            assert s["segmentation"].dtype == np.uint8
            np.testing.assert_array_equal(s["kspace"], kspace[i])
            np.testing.assert_array_equal(s["target"], image[i])
            np.testing.assert_array_equal(s["segmentation"], seg[i])


def test_writer_chunks_one_slice(medmtl_h5):
    with h5py.File(medmtl_h5, "r") as f:
        assert f["kspace"].chunks == (1, *f["kspace"].shape[1:])
        assert f["kspace"].dtype == np.complex64 and f["segmentation"].dtype == np.uint8


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"kspace": np.ones((2, 3, 4), np.complex64)}, "kspace"),
        ({"kspace": np.ones((2, 1, 4, 5), np.float32)}, "kspace"),
        ({"kspace": np.full((2, 1, 4, 5), np.nan, np.complex64)}, "kspace"),
        ({"mask": np.ones(4)}, "mask"),
        ({"mask": np.zeros(5)}, "mask"),
        ({"target": np.ones((3, 4, 5))}, "target"),
        ({"reconstruction_rss": np.ones((2, 4, 5), np.complex64)}, "reconstruction_rss"),
        ({"segmentation": np.full((2, 4, 5), 300)}, "segmentation"),
        ({"segmentation": np.ones((2, 4, 5), np.float32)}, "segmentation"),
        ({"attrs": {"classes": ["a", "b"]}}, "attrs['classes']"),
    ],
)
def test_writer_rejects_bad_arrays_before_writing(tmp_path, change, where):
    args = {"kspace": np.ones((2, 1, 4, 5), np.complex64), **change}
    kspace = args.pop("kspace")
    with pytest.raises(InputError) as err:
        write_kspace_h5(tmp_path / "x.h5", kspace, **args)
    assert err.value.where == where
    assert list(tmp_path.iterdir()) == []


def test_fastmri_training_file_loads_unchanged(fastmri_train_h5):
    p = FASTMRI_TRAIN
    with h5py.File(fastmri_train_h5, "r") as raw:
        kspace, rss = raw["kspace"][()], raw["reconstruction_rss"][()]
    with KSpaceFile(fastmri_train_h5) as f:
        assert (f.num_slices, f.num_coils, f.shape) == (p["slices"], p["coils"], (p["height"], p["width"]))
        assert f.has_target and not f.has_segmentation
        assert f.target_shape == (p["rss"], p["rss"])  # smaller than k-space, returned as stored
        assert f.attrs["acquisition"] == "CORPD_FBK" and f.attrs["patient_id"] == "0" * 64
        assert f.attrs["max"] == pytest.approx(float(rss.max()))
        assert set(f.attrs) == {"acquisition", "max", "norm", "patient_id"}
        assert f.ismrmrd_header == HEADER_XML
        # No stored mask: the zero-padded outer columns are the only unsampled ones.
        expected = np.ones((1, p["width"]), np.float32)
        expected[:, : p["pad"]] = expected[:, -p["pad"] :] = 0
        np.testing.assert_array_equal(f.mask(), expected)
        s = f.read_slice(p["slices"] - 1)
        np.testing.assert_array_equal(s["kspace"], kspace[-1])
        np.testing.assert_array_equal(s["target"], rss[-1])
        assert set(s) == {"kspace", "mask", "target"}


@pytest.mark.parametrize("dtype", [bool, np.float32, np.float64, np.uint8])
def test_stored_mask_honoured(tmp_path, make_kspace, dtype):
    kspace, _ = make_kspace(5, 2, 3, 12, 16)
    acquired = column_mask(16, 4, 2)
    stored = acquired.copy()
    stored[1] = True  # a sampled column whose data happen to be zero: the stored mask still wins
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace * acquired)
        f.create_dataset("mask", data=stored.astype(dtype))
    with KSpaceFile(path) as f:
        np.testing.assert_array_equal(f.mask(), stored[None].astype(np.float32))
        np.testing.assert_array_equal(f.read_slice(0)["mask"], stored[None])


def test_fastmri_test_file_uses_stored_mask(fastmri_test_h5):
    with h5py.File(fastmri_test_h5, "r") as raw:
        stored = raw["mask"][()]
    with KSpaceFile(fastmri_test_h5) as f:
        assert not f.has_target and f.attrs["acceleration"] == 4
        np.testing.assert_array_equal(f.mask(), stored[None].astype(np.float32))


@pytest.mark.parametrize("width", [15, 16])
def test_undersampled_kspace_without_mask_derives_it(tmp_path, make_kspace, width):
    kspace, _ = make_kspace(6, 3, 2, 10, width)
    mask = column_mask(width, 3, 3, offset=1)
    write_kspace_h5(tmp_path / "x.h5", kspace * mask)
    with KSpaceFile(tmp_path / "x.h5") as f:
        np.testing.assert_array_equal(f.mask(), mask[None].astype(np.float32))


def test_fully_sampled_without_mask_is_all_ones(tmp_path, make_kspace):
    kspace, _ = make_kspace(7, 2, 2, 8, 9)
    write_kspace_h5(tmp_path / "x.h5", kspace)
    with KSpaceFile(tmp_path / "x.h5") as f:
        np.testing.assert_array_equal(f.mask(), np.ones((1, 9), np.float32))


def test_blank_middle_slice_without_mask_is_an_error(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("kspace", data=np.zeros((3, 1, 4, 4), np.complex64))
    with KSpaceFile(tmp_path / "x.h5") as f, pytest.raises(KSpaceFileError, match="slice 1 is all zeros"):
        f.mask()


def test_single_coil_3d_kspace_reads_as_one_coil(tmp_path, make_kspace):
    kspace, _ = make_kspace(8, 2, 1, 10, 11)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("kspace", data=kspace[:, 0])
    with KSpaceFile(tmp_path / "x.h5") as f:
        assert (f.num_coils, f.shape) == (1, (10, 11))
        np.testing.assert_array_equal(f.read_slice(1)["kspace"], kspace[1])


def test_read_slice_reads_only_that_slice(tmp_path, monkeypatch):
    """Every h5py read is recorded: a slice read asks for exactly that slice's hyperslab."""
    kspace = np.ones((20, 2, 8, 8), np.complex64)
    write_kspace_h5(tmp_path / "x.h5", kspace, target=np.ones((20, 8, 8)), mask=np.ones(8))
    requests = []
    original = h5py.Dataset.__getitem__

    def recording(self, key, *args, **kwargs):
        requests.append((self.name, key))
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    with KSpaceFile(tmp_path / "x.h5") as f:
        assert requests == [("/mask", ())]  # opening reads the small stored mask and nothing else
        requests.clear()
        f.read_slice(13)
    assert requests == [("/kspace", 13), ("/target", 13)]


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
@pytest.mark.parametrize("chunked", [True, False])
def test_read_slice_bytes_do_not_scale_with_file(tmp_path, chunked):
    """Bytes the process reads from disk for one slice stay near one slice, far below the file size."""
    slices, shape = 64, (4, 32, 32)
    kspace = np.ones((slices, *shape), np.complex64)
    path = tmp_path / "x.h5"
    if chunked:
        write_kspace_h5(path, kspace)
    else:  # fastMRI's own files are contiguous
        with h5py.File(path, "w") as f:
            f.create_dataset("kspace", data=kspace)

    def bytes_read() -> int:
        with open("/proc/self/io") as io:
            return next(int(line.split()[1]) for line in io if line.startswith("rchar"))

    slice_bytes = kspace[0].nbytes
    with KSpaceFile(path) as f:
        f.mask()
        before = bytes_read()
        f.read_slice(40)
        used = bytes_read() - before
    assert used < 3 * slice_bytes < path.stat().st_size / 10


def test_bad_files_raise_typed_errors(bad_kspace_file):
    path, words = bad_kspace_file
    with pytest.raises(KSpaceFileError) as err:
        validate_kspace_file(path)
    assert err.value.where == str(path)
    assert "\n" not in str(err.value)
    for word in words:
        assert word in err.value.what


def test_nan_is_found_by_read_slice_not_on_open(tmp_path, make_kspace):
    kspace, _ = make_kspace(9, 3, 1, 6, 6)
    kspace[2, 0, 1, 1] = np.nan
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("kspace", data=kspace)
    with KSpaceFile(tmp_path / "x.h5") as f:
        f.read_slice(0)
        with pytest.raises(KSpaceFileError, match="slice 2 contains NaN"):
            f.read_slice(2)
        with pytest.raises(IndexError):
            f.read_slice(3)


def test_folder_expansion(tmp_path, make_kspace):
    kspace, _ = make_kspace(11, 1, 1, 4, 4)
    for name in ("b.h5", "a.h5", "c.h5"):
        write_kspace_h5(tmp_path / name, kspace)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in expand_kspace_paths(tmp_path)] == ["a.h5", "b.h5", "c.h5"]
    assert expand_kspace_paths([tmp_path / "c.h5", tmp_path]) == [
        tmp_path / n for n in ("c.h5", "a.h5", "b.h5", "c.h5")
    ]
    with pytest.raises(KSpaceFileError, match="no such file"):
        expand_kspace_paths([tmp_path / "nope.h5"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(KSpaceFileError, match=r"no \*\.h5 files"):
        expand_kspace_paths(tmp_path / "empty")
    with pytest.raises(InputError):
        expand_kspace_paths([])
