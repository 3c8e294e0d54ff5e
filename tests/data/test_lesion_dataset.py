"""Key-slice lesion samples: per-slice boxes, tags, masks, diameters, normalisation, slice draws, collation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medmtl.data.lesion_dataset import (
    LesionSliceDataset,
    collate_lesion_samples,
    intensity_range,
    slice_sample,
)
from medmtl.data.lesion_geometry import measure_recist
from medmtl.data.lesion_record import Lesion, LesionVolume
from medmtl.data.lesion_sim import LesionSimOptions, SimulatedLesionVolumes
from medmtl.data.online import EpochSampler
from medmtl.errors import ConfigError
from medmtl.keys import Keys

TAGS = ("a", "b", "c")


def make_volume(shape=(21, 17, 12), spacing=(0.8, 1.1, 2.5), seed=0, with_lesions=True) -> LesionVolume:
    """Gaussian noise (100 +- 20) with two box-shaped lesions: one over slices 3-6 (key slice 4, where it has two
    pieces; recorded diameters 9 x 5 mm), one on slice 5 only (diameters unknown)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 20, shape).astype(np.float32)
    instances = np.zeros(shape, np.int32)
    lesions = ()
    if with_lesions:
        instances[2:7, 3:9, 3:7] = 1
        instances[4:6, 3:9, 4] = 0  # the key slice of lesion 1 is not its only shape
        instances[10:13, 12:15, 5] = 2
        lesions = (
            Lesion(
                box=np.array([2, 3, 3, 7, 9, 7.0]),
                key_slice=4,
                tags=(0, 2),
                long_axis_mm=9.0,
                short_axis_mm=5.0,
            ),
            Lesion(box=np.array([10, 12, 5, 13, 15, 6.0]), key_slice=5, tags=(1,)),
        )
    return LesionVolume(
        image=image,
        spacing=np.array(spacing),
        affine=np.diag([*spacing, 1.0]),
        instances=instances,
        lesions=lesions,
        tag_names=TAGS,
        name=f"vol{seed}",
    )


def test_sample_on_a_slice_with_two_lesions():
    volume = make_volume()
    sample = slice_sample(volume, 5, num_slices=5, interval_mm=2.0)
    assert sample[Keys.CONTEXT].shape == (5, 21, 17) and sample[Keys.CONTEXT].dtype == torch.float32
    np.testing.assert_array_equal(sample[Keys.BOXES].numpy(), [[2, 3, 7, 9], [10, 12, 13, 15]])
    np.testing.assert_array_equal(sample[Keys.TAGS].numpy(), [[1, 0, 1], [0, 1, 0]])
    masks = sample[Keys.MASKS].numpy()
    assert masks.dtype == np.uint8 and masks.shape == (2, 21, 17)
    np.testing.assert_array_equal(masks[0], volume.instances[:, :, 5] == 1)
    np.testing.assert_array_equal(masks[1], volume.instances[:, :, 5] == 2)
    # lesion 1 is off its key slice: measured (a 5 x 6 pixel block; the long axis joins opposite corner
    # pixels, centres 3.2 and 5.5 mm apart, plus one pixel's width along that line); lesion 2 is on its key
    # slice: recorded, unknown
    measured = measure_recist(masks[0].astype(bool), volume.spacing[:2])[:2]
    np.testing.assert_allclose(sample[Keys.DIAMETERS][0].numpy(), measured, rtol=1e-6)
    centres_mm = np.hypot(3.2, 5.5)
    long_mm = centres_mm + (3.2 * 0.8 + 5.5 * 1.1) / centres_mm
    assert float(sample[Keys.DIAMETERS][0, 0]) == pytest.approx(long_mm, rel=1e-6)
    assert torch.isnan(sample[Keys.DIAMETERS][1]).all()
    np.testing.assert_allclose(sample[Keys.PIXEL_SPACING].numpy(), [0.8, 1.1])
    assert float(sample[Keys.SLICE_POSITION]) == pytest.approx(5 / 11)
    assert sample[Keys.SLICE] == 5 and sample[Keys.FNAME] == "vol0"


def test_uncertain_tags_are_nan_in_the_targets():
    volume = make_volume()
    first = dataclasses.replace(volume.lesions[0], uncertain_tags=(1,))
    volume = dataclasses.replace(volume, lesions=(first, volume.lesions[1]))
    tags = slice_sample(volume, 5, num_slices=5, interval_mm=2.0)[Keys.TAGS].numpy()
    np.testing.assert_array_equal(tags, [[1, np.nan, 1], [0, 1, 0]])


def test_key_slice_boxes_follow_the_mask_not_the_3d_box():
    volume = make_volume()
    sample = slice_sample(volume, 4)
    # on slice 4 lesion 1 has two pieces, rows 2-3 and 6; the box covers both, the recorded diameters apply
    np.testing.assert_array_equal(sample[Keys.BOXES].numpy(), [[2, 3, 7, 9]])
    np.testing.assert_array_equal(sample[Keys.DIAMETERS].numpy(), [[9.0, 5.0]])
    assert sample[Keys.MASKS][0].sum() == 3 * 6


@pytest.mark.parametrize("shape", [(9, 7, 1), (5, 13, 3)])
def test_empty_slice_and_lesion_free_volume(shape):
    volume = make_volume(shape=shape, with_lesions=False)
    sample = slice_sample(volume, shape[2] - 1, num_slices=3)
    assert sample[Keys.BOXES].shape == (0, 4) and sample[Keys.TAGS].shape == (0, 3)
    assert sample[Keys.MASKS].shape == (0, *shape[:2]) and sample[Keys.DIAMETERS].shape == (0, 2)
    assert float(sample[Keys.SLICE_POSITION]) == (1.0 if shape[2] > 1 else 0.0)
    dataset = LesionSliceDataset([volume], samples_per_epoch=5, positive_fraction=1.0)
    assert all(len(dataset[i][Keys.BOXES]) == 0 for i in range(5))  # falls back to lesion-free slices


def test_normalisation_window_and_percentiles():
    volume = make_volume()
    windowed = slice_sample(volume, 4, window=(80.0, 120.0))[Keys.CONTEXT]
    assert windowed.min() == 0 and windowed.max() == 1
    expected = np.clip((volume.image[:, :, 4] - 80) / 40, 0, 1)
    np.testing.assert_allclose(windowed[4].numpy(), expected, rtol=1e-5, atol=1e-6)
    low, high = intensity_range(volume.image)
    assert (low, high) == pytest.approx(np.percentile(volume.image[::2, ::2, ::2], (0.5, 99.5)))
    scaled = slice_sample(volume, 4)[Keys.CONTEXT]
    np.testing.assert_allclose(scaled[4].numpy(), (volume.image[:, :, 4] - low) / (high - low), rtol=1e-5)
    flat = np.full((4, 4, 4), 7.0, np.float32)
    assert intensity_range(flat) == (7.0, 8.0)


@pytest.mark.parametrize(("fraction", "expected"), [(1.0, 1.0), (0.0, 0.0), (0.5, 0.5)])
def test_positive_fraction(fraction, expected):
    dataset = LesionSliceDataset(
        [make_volume()], samples_per_epoch=200, positive_fraction=fraction, num_slices=1
    )
    has_lesions = [
        dataset._draw_slice(dataset.volumes[0], np.random.default_rng(i)) in (3, 4, 5, 6) for i in range(200)
    ]
    assert np.mean(has_lesions) == pytest.approx(expected, abs=0.12)
    # through __getitem__: a positive slice has boxes
    assert all(
        (len(dataset[i][Keys.BOXES]) > 0) == (dataset[i][Keys.SLICE] in (3, 4, 5, 6)) for i in range(10)
    )


def test_all_positive_volume_falls_back():
    volume = make_volume(shape=(8, 8, 2), with_lesions=False)
    volume.instances[0, 0, :] = 1
    volume = dataclasses.replace(volume, lesions=(Lesion(box=np.array([0, 0, 0, 1, 1, 2.0]), key_slice=0),))
    dataset = LesionSliceDataset([volume], samples_per_epoch=4, positive_fraction=0.0, num_slices=1)
    assert all(len(dataset[i][Keys.BOXES]) == 1 for i in range(4))


def test_draws_depend_on_seed_epoch_and_index():
    volumes = [make_volume(seed=s) for s in range(3)]
    train = LesionSliceDataset(volumes, samples_per_epoch=12, seed=5)

    def slices(dataset, epoch):
        return [dataset[(epoch, i)][Keys.SLICE] for i in range(12)]

    assert slices(train, 0) == slices(train, 0)
    assert slices(train, 0) != slices(train, 1)
    assert [train[i][Keys.SLICE] for i in range(12)] == slices(train, 0)  # a plain index is epoch 0
    assert train[(0, 4)][Keys.FNAME] == "vol1"  # item i uses volume i % 3
    val = LesionSliceDataset(volumes, split="val", samples_per_epoch=12, seed=5)
    assert slices(val, 0) == slices(val, 3)
    other_seed = LesionSliceDataset(volumes, samples_per_epoch=12, seed=6)
    assert slices(other_seed, 0) != slices(train, 0)
    with pytest.raises(IndexError):
        train[12]


def test_collate_pads_different_slices_and_keeps_lists():
    volumes = [make_volume(), make_volume(shape=(15, 23, 6), seed=1, with_lesions=False)]
    samples = [slice_sample(volumes[0], 5, num_slices=3), slice_sample(volumes[1], 2, num_slices=3)]
    batch = collate_lesion_samples(samples)
    assert batch[Keys.CONTEXT].shape == (2, 3, 21, 23)
    np.testing.assert_array_equal(batch[Keys.CONTEXT][1, :, :15, :].numpy(), samples[1][Keys.CONTEXT].numpy())
    assert (batch[Keys.CONTEXT][1, :, 15:] == 0).all() and (batch[Keys.CONTEXT][0, :, :, 17:] == 0).all()
    assert [m.shape for m in batch[Keys.MASKS]] == [(2, 21, 23), (0, 21, 23)]
    assert [b.shape for b in batch[Keys.BOXES]] == [(2, 4), (0, 4)]
    assert [t.shape for t in batch[Keys.TAGS]] == [(2, 3), (0, 3)]
    assert batch[Keys.PIXEL_SPACING].shape == (2, 2) and batch[Keys.SLICE_POSITION].shape == (2,)
    assert batch[Keys.SLICE] == [5, 2] and batch[Keys.FNAME] == ["vol0", "vol1"]


def test_dataloader_with_epoch_keys():
    dataset = LesionSliceDataset([make_volume(seed=s) for s in range(2)], samples_per_epoch=5, num_slices=3)
    sampler = EpochSampler(len(dataset), seed=1)
    sampler.set_epoch(2)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=collate_lesion_samples)
    batches = list(loader)
    assert [b[Keys.CONTEXT].shape[0] for b in batches] == [2, 2, 1]
    first = next(iter(sampler))
    assert batches[0][Keys.SLICE][0] == dataset[first][Keys.SLICE]


def test_simulated_volumes_give_consistent_samples():
    volumes = SimulatedLesionVolumes(2, "train", 0, LesionSimOptions(voxel_mm=3.0, slice_mm=(2.5,)))
    dataset = LesionSliceDataset(volumes, samples_per_epoch=3, positive_fraction=1.0)
    for i in range(3):
        sample = dataset[i]
        assert sample[Keys.CONTEXT].shape[0] == 9 and sample[Keys.TAGS].shape[1] == len(volumes.tag_names)
        for box, mask in zip(sample[Keys.BOXES].numpy().astype(int), sample[Keys.MASKS].numpy()):
            i0, j0, i1, j1 = box
            assert mask.sum() == mask[i0:i1, j0:j1].sum() > 0
            assert mask[i0].any() and mask[i1 - 1].any() and mask[:, j0].any() and mask[:, j1 - 1].any()
        assert float(sample[Keys.PIXEL_SPACING][0]) == 3.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"positive_fraction": 1.5}, "positive_fraction"),
        ({"num_slices": 4}, "num_slices"),
        ({"window": (5.0, 5.0)}, "window"),
        ({"samples_per_epoch": 0}, "samples_per_epoch"),
        ({"volumes": []}, "volumes"),
    ],
)
def test_bad_arguments(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        LesionSliceDataset(**({"volumes": [make_volume()]} | kwargs))
