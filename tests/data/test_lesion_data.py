"""Lesion data of the data module: options, key-slice evaluation images, random training windows and flips, and
the patient frame that crops and flips move with the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmtl.data.lesion_crop import (
    CroppedLesionSlices,
    crop_lesion_sample,
    flip_lesion_sample,
    transpose_lesion_sample,
)
from medmtl.data.lesion_data import LesionData, RotatingVolumes, lesion_dataset
from medmtl.data.lesion_dataset import KeySliceDataset, LesionSliceDataset, patient_frame, slice_sample
from medmtl.data.lesion_record import Lesion, LesionVolume
from medmtl.errors import ConfigError
from medmtl.keys import Keys


def volume(boxes: list[tuple[int, int, int, int, int, int]], shape=(20, 24, 10), name="v") -> LesionVolume:
    """Cuboid lesions at the given half-open voxel boxes; key slice = the box's middle slice."""
    instances = np.zeros(shape, np.int32)
    lesions = []
    for n, box in enumerate(boxes, start=1):
        i0, j0, k0, i1, j1, k1 = box
        instances[i0:i1, j0:j1, k0:k1] = n
        lesions.append(Lesion(np.asarray(box, float), key_slice=(k0 + k1 - 1) // 2, tags=(n % 2,)))
    image = np.random.default_rng(0).random(shape).astype(np.float32) + 2 * (instances > 0)
    return LesionVolume(
        image, np.array([0.8, 0.8, 2.0]), np.eye(4), instances, tuple(lesions), ("a", "b"), name
    )


class TopLeft:
    """A generator stand-in that places the window uniformly (never on a lesion) at the top left corner."""

    def random(self) -> float:
        return 1.0

    def integers(self, n: int) -> int:
        return 0


def test_key_slices_are_the_evaluation_images():
    with_lesions = volume([(2, 3, 1, 6, 8, 4), (10, 10, 6, 14, 13, 7), (12, 2, 1, 15, 5, 4)])
    empty = volume([], name="empty")
    data = KeySliceDataset([with_lesions, empty], num_slices=3, interval_mm=2.0)
    # Key slices 2 (two lesions share it) and 6, then the middle slice of the lesion-free volume.
    assert data.items == [(0, 2), (0, 6), (1, 5)]
    first = data[(3, 0)]  # EpochSampler keys work; the epoch is irrelevant
    assert first[Keys.SLICE] == 2 and len(first[Keys.BOXES]) == 2
    assert len(data[2][Keys.BOXES]) == 0


def test_crop_recomputes_boxes_and_drops_lesions_outside():
    sample = slice_sample(volume([(2, 3, 1, 6, 8, 4), (14, 16, 1, 18, 22, 3)]), 2, 3, 2.0)
    rng = TopLeft()
    cut = crop_lesion_sample(sample, (10, 10), rng)
    assert cut[Keys.CONTEXT].shape == (3, 10, 10)
    np.testing.assert_array_equal(cut[Keys.BOXES].numpy(), [[2, 3, 6, 8]])  # the second lesion is outside
    assert cut[Keys.TAGS].shape == (1, 2) and cut[Keys.MASKS].shape == (1, 10, 10)
    torch.testing.assert_close(cut[Keys.DIAMETERS], sample[Keys.DIAMETERS][:1], equal_nan=True)  # not cut


def test_crop_cuts_a_lesion_at_the_window_edge_and_remeasures_it():
    sample = slice_sample(volume([(6, 6, 1, 14, 10, 4)]), 2, 3, 2.0)
    rng = TopLeft()
    cut = crop_lesion_sample(sample, (10, 12), rng)
    np.testing.assert_array_equal(cut[Keys.BOXES].numpy(), [[6, 6, 10, 10]])
    long_mm, short_mm = cut[Keys.DIAMETERS][0].tolist()
    assert np.isfinite(short_mm)  # the key slice's record is NaN here; the cut part is measured
    assert long_mm == pytest.approx(4 * 0.8 * np.sqrt(2), rel=0.05)


def test_lesion_centred_windows_hold_the_lesion_and_repeat_per_key():
    slices = LesionSliceDataset(
        [volume([(1, 16, 1, 5, 22, 4)])],
        samples_per_epoch=8,
        positive_fraction=1.0,
        num_slices=3,
        interval_mm=2.0,
    )
    data = CroppedLesionSlices(slices, (8, 8), seed=3)
    held = 0
    for index in range(8):
        sample = data[(1, index)]
        assert sample[Keys.CONTEXT].shape == (3, 8, 8)
        held += len(sample[Keys.BOXES]) > 0
        torch.testing.assert_close(sample[Keys.CONTEXT], data[(1, index)][Keys.CONTEXT])
    assert held >= 5  # 90 % of windows are placed on the lesion


# An oblique volume: voxel (i, j, k) -> RAS+ mm, 0.8 x 0.8 x 2 mm voxels, axes turned about the S axis by 30 deg.
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
OBLIQUE = np.array(
    [[-0.8 * _C, 0.8 * _S, 0, 40.0], [-0.8 * _S, -0.8 * _C, 0, -12.0], [0, 0, 2.0, 7.0], [0, 0, 0, 1]]
)


def test_patient_frame_by_hand():
    # Volume (20, 24, 10): centre voxel (9.5, 11.5, 4.5). Slice 3, pixel (0, 0) = voxel (0, 0, 3).
    frame = patient_frame(OBLIQUE, (20, 24, 10), 3)
    np.testing.assert_allclose(frame[:, 0], [-0.8 * _C, -0.8 * _S, 0], rtol=1e-6)
    np.testing.assert_allclose(frame[:, 1], [0.8 * _S, -0.8 * _C, 0], rtol=1e-6)
    # (0 - 9.5, 0 - 11.5, 3 - 4.5) through the linear part: the translation cancels.
    di, dj, dk = -9.5, -11.5, -1.5
    want = [-0.8 * _C * di + 0.8 * _S * dj, -0.8 * _S * di - 0.8 * _C * dj, 2.0 * dk]
    np.testing.assert_allclose(frame[:, 2], want, rtol=1e-6)
    assert frame.dtype == np.float32
    # Any pixel: frame position = affine position - affine position of the centre.
    centre = OBLIQUE[:3, :3] @ np.array([9.5, 11.5, 4.5]) + OBLIQUE[:3, 3]
    at = OBLIQUE[:3, :3] @ np.array([7, 5, 3]) + OBLIQUE[:3, 3] - centre
    np.testing.assert_allclose(frame[:, 2] + 7 * frame[:, 0] + 5 * frame[:, 1], at, atol=1e-4)


def _position(sample, i: int, j: int) -> np.ndarray:
    frame = sample[Keys.PATIENT_FRAME].double().numpy()
    return frame[:, 2] + i * frame[:, 0] + j * frame[:, 1]


def test_crops_and_flips_keep_every_pixel_where_it_is_in_the_patient():
    vol = volume([(2, 3, 1, 6, 8, 4), (12, 14, 1, 18, 20, 3)])
    vol = LesionVolume(vol.image, vol.spacing, OBLIQUE, vol.instances, vol.lesions, vol.tag_names, vol.name)
    sample = slice_sample(vol, 2, 3, 2.0)
    cut = crop_lesion_sample(sample, (12, 16), np.random.default_rng(1))
    h, w = cut[Keys.CONTEXT].shape[-2:]
    for flips in ([], [0], [1], [0, 1]):
        for swap in (False, True):
            out = cut
            for axis in flips:
                out = flip_lesion_sample(out, axis)
            if swap:
                out = transpose_lesion_sample(out)
            assert out[Keys.CONTEXT].shape[-2:] == ((w, h) if swap else (h, w))
            for i, j in ((0, 0), (3, 7), (h - 1, w - 1)):
                # (i, j) of the flipped window; (a, b) the same pixel in the window before any flip.
                a, b = (h - 1 - i if 0 in flips else i), (w - 1 - j if 1 in flips else j)
                at = (j, i) if swap else (i, j)
                assert out[Keys.CONTEXT][1, at[0], at[1]] == cut[Keys.CONTEXT][1, a, b]
                np.testing.assert_allclose(_position(out, *at), _position(cut, a, b), atol=1e-4)
            for box, mask in zip(out[Keys.BOXES].numpy(), out[Keys.MASKS].numpy(), strict=True):
                rows, cols = np.nonzero(mask)
                np.testing.assert_array_equal(box, [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
            torch.testing.assert_close(out[Keys.TAGS], cut[Keys.TAGS])
            torch.testing.assert_close(out[Keys.DIAMETERS], cut[Keys.DIAMETERS], equal_nan=True)
            spacing = cut[Keys.PIXEL_SPACING].flip(0) if swap else cut[Keys.PIXEL_SPACING]
            torch.testing.assert_close(out[Keys.PIXEL_SPACING], spacing)
    # The crop itself: the window's pixels sit where the same values sit in the whole slice.
    full_positions = {
        tuple(np.round(_position(sample, i, j), 3)): sample[Keys.CONTEXT][1, i, j].item()
        for i in range(sample[Keys.CONTEXT].shape[-2])
        for j in range(sample[Keys.CONTEXT].shape[-1])
    }
    for i, j in ((0, 0), (5, 9), (h - 1, w - 1)):
        assert full_positions[tuple(np.round(_position(cut, i, j), 3))] == cut[Keys.CONTEXT][1, i, j].item()


def test_flipped_windows_take_each_reflection_half_of_the_time():
    slices = LesionSliceDataset(
        [volume([(1, 16, 1, 5, 22, 4)])], samples_per_epoch=64, num_slices=3, interval_mm=2.0
    )
    plain, flipped = CroppedLesionSlices(slices, None), CroppedLesionSlices(slices, None, flip=True)
    draws = []
    for index in range(64):
        a, b = plain[(0, index)], flipped[(0, index)]
        assert a[Keys.CONTEXT].shape == (3, 20, 24)  # no window: whole slices
        swapped = b[Keys.CONTEXT].shape == (3, 24, 20)
        assert swapped or b[Keys.CONTEXT].shape == (3, 20, 24)
        frame = b[Keys.PATIENT_FRAME][:, [1, 0, 2]] if swapped else b[Keys.PATIENT_FRAME]
        # The volume's affine is the identity: a reversed axis has a step of -1 along its own patient axis.
        draws.append([frame[0, 0] < 0, frame[1, 1] < 0, swapped])
        torch.testing.assert_close(
            flipped[(0, index)][Keys.CONTEXT], b[Keys.CONTEXT]
        )  # a pure function of the key
    share = torch.tensor(draws, dtype=torch.float64).mean(0)
    assert ((share > 0.3) & (share < 0.7)).all(), share


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"source": "dicom"}, "lesions.source"),
        ({"source": "nifti"}, "lesions.root"),
        ({"num_volumes": {"train": 0}}, "lesions.num_volumes"),
        ({"num_volumes": {"extra": 3}}, "lesions.num_volumes"),
        ({"positive_fraction": 1.5}, "lesions.positive_fraction"),
        ({"val_fraction": 1.0}, "lesions.val_fraction"),
        ({"rotate_volumes": -1}, "lesions.rotate_volumes"),
        ({"rotate_volumes": 4, "source": "nifti", "root": "cases"}, "lesions.rotate_volumes"),
    ],
)
def test_bad_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        LesionData(**options)


def test_simulated_splits_follow_the_contract():
    from medmtl.data.lesion_sim import LesionSimOptions

    options = LesionData(
        num_volumes={"train": 2, "val": 1, "test": 1},
        simulation=LesionSimOptions(voxel_mm=6.0),
        train_crop=(12, 12),
    )
    train = lesion_dataset(options, "train", 0, 5, num_slices=5, interval_mm=3.0, window=None)
    assert len(train) == 5 and train[(0, 1)][Keys.CONTEXT].shape == (5, 12, 12)
    val = lesion_dataset(options, "val", 0, 5, num_slices=5, interval_mm=3.0, window=(0.0, 1.0))
    assert isinstance(val, KeySliceDataset) and float(val[0][Keys.CONTEXT].max()) <= 1.0


class Counted(list):
    """Volumes that count how often each is read (a lazy simulator makes one per read)."""

    def __init__(self, items):
        super().__init__(items)
        self.reads: list[int] = []

    def __getitem__(self, index):
        self.reads.append(index)
        return super().__getitem__(index)


def test_rotating_pool_replaces_the_oldest_slots_each_epoch():
    # Pool 4, 2 fresh volumes per epoch: replacement j puts volume 4 + j into slot j % 4.
    pool = RotatingVolumes(list(range(100)), pool=4, rotate=2)
    table = [[pool.volume_id(slot, epoch) for slot in range(4)] for epoch in range(5)]
    assert table == [[0, 1, 2, 3], [4, 5, 2, 3], [4, 5, 6, 7], [8, 9, 6, 7], [8, 9, 10, 11]]
    assert [RotatingVolumes(list(range(9)), 3, 0).volume_id(s, 7) for s in range(3)] == [0, 1, 2]
    with pytest.raises(IndexError):
        pool.volume_id(4, 0)


def test_rotating_pool_reads_each_volume_once_and_keeps_one_per_slot():
    volumes = Counted(volume([(2, 3, 1, 6, 8, 4)], name=f"v{i}") for i in range(8))
    pool = RotatingVolumes(volumes, pool=2, rotate=1)
    names = [pool.for_epoch(epoch, slot).name for epoch in (0, 0, 1, 1, 2) for slot in (0, 1)]
    assert names == ["v0", "v1", "v0", "v1", "v2", "v1", "v2", "v1", "v2", "v3"]
    assert volumes.reads == [0, 1, 2, 3]  # cached per slot, each read once
    assert pool[1].name == "v1" and volumes.reads[-1] == 1  # plain indexing is epoch 0 (slot 1 re-read)
    with pytest.raises(IndexError, match="past the 8 volumes"):
        pool.for_epoch(20, 0)


def test_rotated_training_sees_new_simulated_volumes_reproducibly():
    from medmtl.data.lesion_sim import LesionSimOptions

    options = LesionData(
        num_volumes={"train": 2, "val": 1, "test": 1},
        simulation=LesionSimOptions(voxel_mm=6.0),
        rotate_volumes=2,
    )
    first = lesion_dataset(options, "train", 0, 4, num_slices=3, interval_mm=6.0, window=None)
    again = lesion_dataset(options, "train", 0, 4, num_slices=3, interval_mm=6.0, window=None)
    assert isinstance(first.volumes, RotatingVolumes) and len(first.volumes) == 2
    for key in ((0, 1), (3, 1), (3, 0)):  # epochs in any order, as a resumed run asks for them
        torch.testing.assert_close(first[key][Keys.CONTEXT], again[key][Keys.CONTEXT])
    first[(3, 0)]
    # epoch 3 follows 6 replacements; slot 0 took the 1st, 3rd and 5th (j = 0, 2, 4): volume 2 + 4
    assert first.volumes._slots[0][1].name == "mni_lesion_train_000006"
    torch.testing.assert_close(  # the same volume and seeded slice draw for an epoch without rotation
        lesion_dataset(
            LesionData(num_volumes={"train": 2}, simulation=options.simulation), "train", 0, 4, 3, 6.0, None
        )[(0, 1)][Keys.CONTEXT],
        first[(0, 1)][Keys.CONTEXT],
    )
