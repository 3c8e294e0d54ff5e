"""Simulated lesions in the MNI152 template: determinism, counts, boxes, tags, RECIST diameters, splits."""

from __future__ import annotations

import numpy as np
import pytest

from medmtl.data import lesion_sim as ls
from medmtl.data.lesion_geometry import measure_recist
from medmtl.data.lesion_host import host_volume
from medmtl.data.mni import load_template
from medmtl.errors import ConfigError, InputError

# 3 mm voxels keep a volume at 66 x 78 x 63; no augmentation, so the host can be compared voxel by voxel.
FAST = ls.LesionSimOptions(voxel_mm=3.0, augment=False)
GROUPS = (
    ("hyperintense", "hypointense"),
    ("homogeneous", "rim_enhancing", "necrotic_core"),
    ("smooth", "lobulated"),
    ("grey_matter", "white_matter"),
    ("left", "right"),
    ("small", "medium", "large"),
)


@pytest.fixture(scope="module")
def volumes() -> list:
    return [ls.simulate_lesion_volume(i, "train", 7, FAST) for i in range(6)]


def names(volume, lesion) -> set[str]:
    return {volume.tag_names[t] for t in lesion.tags}


def test_same_seed_same_volume():
    options = ls.LesionSimOptions(voxel_mm=3.0, slice_mm=(2.5, 4.0))  # augmentation on
    a, b = (ls.simulate_lesion_volume(3, "train", 11, options) for _ in range(2))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert len(a.lesions) == len(b.lesions) and a.meta["orientation"] == b.meta["orientation"]
    for x, y in zip(a.lesions, b.lesions):
        np.testing.assert_array_equal(x.box, y.box)
        assert (x.key_slice, x.tags, x.long_axis_mm) == (y.key_slice, y.tags, y.long_axis_mm)
    c = ls.simulate_lesion_volume(3, "train", 12, options)
    assert c.image.shape != a.image.shape or not np.array_equal(c.image, a.image)


def test_counts_and_instances(volumes):
    counts = [len(v.lesions) for v in volumes]
    assert all(0 <= n <= 6 for n in counts) and sum(counts) > 0
    for v in volumes:
        assert v.image.dtype == np.float32 and v.instances.dtype == np.int32
        assert v.instances.shape == v.image.shape
        assert set(np.unique(v.instances)) == set(range(len(v.lesions) + 1))  # every lesion has voxels
        assert v.tag_names == ls.TAG_NAMES and len(ls.TAG_NAMES) >= 10
        assert v.meta["centres"].shape == (len(v.lesions), 3)


def test_lesion_free_volume_is_the_host():
    options = ls.LesionSimOptions(voxel_mm=3.0, max_lesions=0, augment=False)
    v = ls.simulate_lesion_volume(0, "test", 0, options)
    host = host_volume(v.meta["orientation"], 3.0)
    assert v.lesions == () and not v.instances.any()
    np.testing.assert_array_equal(v.image, host.image)


def test_boxes_are_the_masks_tight_half_open_boxes(volumes):
    for v in volumes:
        for n, lesion in enumerate(v.lesions, start=1):
            where = np.nonzero(v.instances == n)
            box = lesion.box.astype(int)
            assert list(box[:3]) == [w.min() for w in where]
            assert list(box[3:]) == [w.max() + 1 for w in where]
            areas = (v.instances == n).sum(axis=(0, 1))
            assert box[2] <= lesion.key_slice < box[5] and areas[lesion.key_slice] == areas.max()


def test_tags_match_the_attributes(volumes):
    template = load_template()
    inverse = np.linalg.inv(template.affine)
    for v in volumes:
        host = host_volume(v.meta["orientation"], FAST.voxel_mm)
        for n, (lesion, centre) in enumerate(zip(v.lesions, v.meta["centres"]), start=1):
            tags = names(v, lesion)
            uncertain = {v.tag_names[t] for t in lesion.uncertain_tags}
            # every group has exactly one tag, except the border of a lesion too small to characterise
            assert uncertain == ({"smooth", "lobulated"} if lesion.long_axis_mm < 10 else set())
            for group in GROUPS:
                assert len((tags | uncertain) & set(group)) == 1 + (group[0] in uncertain)
            if not uncertain:
                assert ("lobulated" in tags) == v.meta["lobulated"][n - 1]
            x, *_ = v.affine @ [*centre, 1.0]
            assert ("right" if x > 0 else "left") in tags
            assert {1: "grey_matter", 2: "white_matter"}[host.labels[tuple(centre)]] in tags
            # the same point in the template has the same tissue: the affine followed the permutation
            ijk = np.rint((inverse @ v.affine @ [*centre, 1.0])[:3]).astype(int)
            assert template.labels[tuple(ijk)] in (1, 2)
            size = "small" if lesion.long_axis_mm < 10 else "large" if lesion.long_axis_mm >= 20 else "medium"
            assert size in tags
            if "homogeneous" in tags:
                change = (v.image - host.image)[v.instances == n].mean()
                assert change > 0 if "hyperintense" in tags else change < 0


def test_recorded_diameters_are_measured_on_the_key_slice(volumes):
    for v in volumes:
        for n, lesion in enumerate(v.lesions, start=1):
            mask = v.instances[:, :, lesion.key_slice] == n
            long_mm, short_mm, _ = measure_recist(mask, v.spacing[:2])
            assert (lesion.long_axis_mm, lesion.short_axis_mm) == pytest.approx((long_mm, short_mm))
            assert 0 < lesion.short_axis_mm <= lesion.long_axis_mm
            # the end points (i, j) span those lengths, on the pixels' outer edges: within half a pixel's
            # widest extent of the box's first and last pixel centres
            ends_mm = lesion.recist * v.spacing[:2]
            assert np.linalg.norm(ends_mm[1] - ends_mm[0]) == pytest.approx(long_mm)
            assert np.linalg.norm(ends_mm[3] - ends_mm[2]) == pytest.approx(short_mm)
            reach = v.spacing[:2].sum() / 2 / v.spacing[:2]
            assert (lesion.recist >= lesion.box[:2] - reach - 1e-9).all()
            assert (lesion.recist <= lesion.box[3:5] - 1 + reach + 1e-9).all()


@pytest.mark.parametrize(
    ("spacing", "semi_axes"),
    [
        ((1.0, 1.0, 1.0), (7.7, 4.3, 3.0)),
        ((0.8, 1.2, 2.5), (9.1, 5.6, 4.0)),
        ((1.0, 0.7, 2.0), (3.2, 8.3, 3.0)),  # long axis along j
        ((2.0, 2.0, 2.0), (2.5, 2.5, 2.5)),  # a few voxels: a circle
    ],
)
def test_axis_aligned_ellipse_diameters_within_a_voxel(spacing, semi_axes):
    spacing, semi_axes = np.array(spacing), np.array(semi_axes)
    grid = (41, 43, 15)
    image, instances = np.zeros(grid, np.float32), np.zeros(grid, np.int32)
    shape = ls.LesionShape((20, 21, 7), semi_axes, edge_mm=0.5)
    assert ls.insert_lesion(image, instances, spacing, 1, shape, ls.LesionAppearance(1.0))
    long_mm, short_mm, ends = measure_recist(instances[:, :, 7] == 1, spacing[:2])
    truth = sorted(2 * semi_axes[:2], reverse=True)
    assert abs(long_mm - truth[0]) <= spacing[:2].max()
    assert abs(short_mm - truth[1]) <= spacing[:2].max()
    long_end = (ends[1] - ends[0]) * spacing[:2]
    short_end = (ends[3] - ends[2]) * spacing[:2]
    assert np.linalg.norm(long_end) == pytest.approx(long_mm)
    assert np.linalg.norm(short_end) == pytest.approx(short_mm)
    assert abs(long_end @ short_end) < 1e-6 * long_mm * short_mm  # perpendicular


def test_insertion_refuses_overlap_and_draws_its_pattern():
    grid = (30, 30, 30)
    image, instances = np.full(grid, 0.5, np.float32), np.zeros(grid, np.int32)
    shape = ls.LesionShape((15, 15, 15), np.array([8.0, 8.0, 8.0]))
    rim = ls.LesionAppearance(body=0.2, rim=0.9)
    assert ls.insert_lesion(image, instances, np.ones(3), 1, shape, rim)
    assert image[15, 15, 15] == pytest.approx(0.2) and image[15, 15, 22] > 0.8
    before = (image.copy(), instances.copy())
    near = ls.LesionShape((15, 15, 25), np.array([2.0, 2.0, 2.0]))
    assert not ls.insert_lesion(image, instances, np.ones(3), 2, near, ls.LesionAppearance(1.0))
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(instances, before[1])
    core = ls.LesionAppearance(body=0.8, core=0.1)
    assert core.profile(np.array([0.0]))[0] == pytest.approx(0.1)
    assert core.profile(np.array([0.9]))[0] == pytest.approx(0.8)
    with pytest.raises(InputError, match="outside"):
        ls.insert_lesion(image, instances, np.ones(3), 3, ls.LesionShape((30, 0, 0), np.ones(3)), core)


def test_lobulated_lesions_stay_inside_their_ellipsoid():
    rng = np.random.default_rng(4)
    directions = rng.standard_normal((8, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    lobed = ls.LesionShape(
        (20, 20, 20), np.array([12.0, 9.0, 7.0]), np.eye(3), directions, rng.uniform(0.25, 0.5, 8)
    )
    smooth = ls.LesionShape((20, 20, 20), np.array([12.0, 9.0, 7.0]))
    masks = []
    for shape in (lobed, smooth):
        image, instances = np.zeros((41, 41, 41), np.float32), np.zeros((41, 41, 41), np.int32)
        ls.insert_lesion(image, instances, np.ones(3), 1, shape, ls.LesionAppearance(1.0))
        masks.append(instances == 1)
    assert not (masks[0] & ~masks[1]).any() and masks[0].sum() < masks[1].sum()


def test_no_diameter_through_a_lesion_centre_is_below_the_smallest():
    # A lobulated lesion's dents would cut a 3 mm draw to 1-2 mm; the drawn ellipsoid grows instead.
    rng = np.random.default_rng(11)
    options = ls.LesionSimOptions(diameter_mm=(3.0, 4.0))
    directions = rng.standard_normal((400, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    lobulated = 0
    for _ in range(200):
        shape = ls._draw_shape(rng, (0, 0, 0), options, np.ones(3))
        lobulated += len(shape.lobe_heights) > 0
        # the border's distance from the centre along each direction: the ellipsoid's times the bump radius
        ellipsoid = 1 / np.linalg.norm(directions / shape.semi_axes_mm, axis=1)
        radius_mm = ellipsoid * shape.radius(directions)
        assert radius_mm.min() >= 1.5 * 0.99  # the dent is found on 512 directions: within 1 %
    assert 60 < lobulated < 140


def test_splits_hold_out_orientations_and_draws():
    held_out = set(ls.SPLIT_ORIENTATIONS["val"]) | set(ls.SPLIT_ORIENTATIONS["test"])
    assert not set(ls.SPLIT_ORIENTATIONS["train"]) & held_out
    options = ls.LesionSimOptions(voxel_mm=3.0, augment=False, max_lesions=6)
    seen = {}
    for split in ("train", "val", "test"):
        for index in range(3):
            v = ls.simulate_lesion_volume(index, split, 0, options, orientation="axial")  # same host for all
            seen[split, index] = v.instances
            natural = ls.simulate_lesion_volume(
                index, split, 0, ls.LesionSimOptions(voxel_mm=3.0, max_lesions=0)
            )
            assert natural.meta["orientation"] in ls.SPLIT_ORIENTATIONS[split]
    for (split, index), instances in seen.items():
        for (other, j), instances2 in seen.items():
            if other != split and instances.any():
                assert not np.array_equal(instances, instances2), (split, index, other, j)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"voxel_mm": 0.1}, "voxel_mm"),
        ({"slice_mm": (0.0,)}, "slice_mm"),
        ({"max_lesions": -1}, "max_lesions"),
        ({"diameter_mm": (5.0, 3.0)}, "diameter_mm"),
    ],
)
def test_bad_options(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ls.LesionSimOptions(**kwargs)


def test_sequence_and_bad_split():
    seq = ls.SimulatedLesionVolumes(2, "val", 3, ls.LesionSimOptions(voxel_mm=3.0, max_lesions=1))
    assert len(seq) == 2 and seq[1].name == "mni_lesion_val_000001"
    with pytest.raises(IndexError):
        seq[2]
    with pytest.raises(ConfigError, match="split"):
        ls.simulate_lesion_volume(0, "holdout")
