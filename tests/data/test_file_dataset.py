"""KSpaceSliceDataset: (file, slice) indexing, sample contents, transforms and worker processes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import column_mask

from medmtl.data import files as files_module
from medmtl.data.files import KSpaceSliceDataset, kspace_to_tensor
from medmtl.errors import KSpaceFileError
from medmtl.io.kspace import KSpaceFile, write_kspace_h5
from medmtl.keys import Keys


@pytest.fixture(scope="module")
def folder(tmp_path_factory, make_kspace):
    """Three files with 1, 3 and 2 slices, written out of name order; one has a mask, target and labels."""
    root = tmp_path_factory.mktemp("folder")
    k, image = make_kspace(20, 3, 2, 12, 10)
    write_kspace_h5(
        root / "b.h5",
        k,
        mask=column_mask(10, 3, 2),
        target=image,
        segmentation=(image > 0.5).astype(np.uint8),
    )
    write_kspace_h5(root / "a.h5", make_kspace(21, 1, 3, 9, 7)[0])
    write_kspace_h5(root / "c.h5", make_kspace(22, 2, 1, 8, 8)[0])
    return root


def test_kspace_to_tensor():
    x = (np.arange(6) + 1j * np.arange(6, 12)).reshape(1, 2, 3)
    t = kspace_to_tensor(x)
    assert t.shape == (1, 2, 3, 2) and t.dtype == torch.float32
    np.testing.assert_array_equal(t[..., 0].numpy(), x.real)
    np.testing.assert_array_equal(t[..., 1].numpy(), x.imag)


def test_indexes_files_in_name_order_then_slices(folder):
    ds = KSpaceSliceDataset(folder)
    assert len(ds) == 6
    assert [(ds[i][Keys.FNAME], ds[i][Keys.SLICE]) for i in range(len(ds))] == [
        ("a.h5", 0), ("b.h5", 0), ("b.h5", 1), ("b.h5", 2), ("c.h5", 0), ("c.h5", 1),
    ]  # fmt: skip
    assert ds[-1][Keys.FNAME] == "c.h5"
    with pytest.raises(IndexError):
        ds[6]


def test_file_and_list_inputs(folder):
    assert len(KSpaceSliceDataset(folder / "b.h5")) == 3
    assert len(KSpaceSliceDataset([folder / "c.h5", str(folder / "a.h5")])) == 3
    with pytest.raises(KSpaceFileError, match="no such file"):
        KSpaceSliceDataset([folder / "a.h5", folder / "missing.h5"])


def test_sample_contents_with_mask_target_and_labels(folder):
    ds = KSpaceSliceDataset(folder / "b.h5")
    sample = ds[1]
    with KSpaceFile(folder / "b.h5") as f:
        raw = f.read_slice(1)
    mask = column_mask(10, 3, 2).astype(np.float32)
    assert set(sample) == {Keys.KSPACE, Keys.MASK, Keys.TARGET, Keys.SEG, Keys.FNAME, Keys.SLICE}
    assert sample[Keys.KSPACE].shape == (2, 12, 10, 2) and sample[Keys.KSPACE].dtype == torch.float32
    assert sample[Keys.MASK].shape == (1, 1, 10, 1) and sample[Keys.MASK].dtype == torch.float32
    np.testing.assert_array_equal(sample[Keys.MASK][0, 0, :, 0].numpy(), mask)
    # Stored k-space is fully sampled; the sample is zero off the mask and unchanged on it.
    expected = raw["kspace"] * mask
    np.testing.assert_array_equal(torch.view_as_complex(sample[Keys.KSPACE]).numpy(), expected)
    assert not expected[..., mask == 0].any() and expected[..., mask == 1].all()
    assert sample[Keys.TARGET].shape == (12, 10) and sample[Keys.TARGET].dtype == torch.float32
    assert sample[Keys.SEG].dtype == torch.int64
    np.testing.assert_array_equal(sample[Keys.SEG].numpy(), raw["segmentation"])


def test_fastmri_file_keeps_its_smaller_target(fastmri_train_h5):
    sample = KSpaceSliceDataset(fastmri_train_h5)[0]
    assert sample[Keys.KSPACE].shape == (4, 32, 24, 2)
    assert sample[Keys.TARGET].shape == (16, 16)
    assert Keys.SEG not in sample


def test_transform_is_applied(folder):
    def drop_kspace(sample):
        return {key: value for key, value in sample.items() if key != Keys.KSPACE}

    sample = KSpaceSliceDataset(folder, transform=drop_kspace)[0]
    assert Keys.KSPACE not in sample and sample[Keys.FNAME] == "a.h5"


def test_open_files_are_capped(folder, monkeypatch):
    monkeypatch.setattr(files_module, "MAX_OPEN_FILES", 1)
    ds = KSpaceSliceDataset(folder)
    first = ds[0][Keys.KSPACE]
    for i in range(len(ds)):
        ds[i]
        assert len(ds._handles) == 1
    torch.testing.assert_close(ds[0][Keys.KSPACE], first)
    ds.close()
    assert not ds._handles


def test_pickles_after_use(folder):
    ds = KSpaceSliceDataset(folder)
    before = ds[3]
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[3][Keys.KSPACE], before[Keys.KSPACE])


def test_dataloader_with_two_workers(folder):
    ds = KSpaceSliceDataset(folder / "b.h5")
    ds[0]  # the parent holds an open handle before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    seen = {}
    for batch in loader:
        seen[int(batch[Keys.SLICE])] = batch[Keys.KSPACE][0]
    assert sorted(seen) == [0, 1, 2]
    for i, kspace in seen.items():
        torch.testing.assert_close(kspace, ds[i][Keys.KSPACE])
