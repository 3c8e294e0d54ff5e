"""Linking per-slice detections into 3D findings, their boxes, the instance volume and the findings JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medmtl.lesion_findings import (
    LINK_OVERLAP,
    SliceDetection,
    VolumeFindings,
    box_overlap,
    find_lesions,
    instance_volume,
    link_detections,
    patient_box,
    slice_detections,
)
from medmtl.models.lesion_decode import Detections

TAGS = ("a", "b")
SHAPE = (24, 20, 8)  # (I, J, K)


def det(k, box, score, tags=(0.5, 0.5), mask=None, axes=(math.nan, math.nan)) -> SliceDetection:
    return SliceDetection(
        k, np.asarray(box, np.float64), float(score), np.asarray(tags, np.float32), mask, *map(float, axes)
    )


def full_mask(box) -> np.ndarray:
    """A mask filling the pixels an integer box touches, cropped as ``SliceDetection.mask`` is."""
    i0, j0, i1, j1 = (int(v) for v in box)
    return np.ones((i1 - i0, j1 - j0), bool)


def two_lesions_and_an_edge() -> list[SliceDetection]:
    """Lesion A on k = 2, 3, 4 (largest on 3, surest on 4); lesion B on k = 3 only; lesion C on the last
    slice at the image's corner; given out of order to show that order does not matter."""
    a = [
        det(2, (5, 5, 9, 9), 0.5, (0.1, 0.2), full_mask((5, 5, 9, 9)), (4.0, 4.0)),
        det(3, (4.2, 4.6, 10.1, 10.3), 0.7, (0.9, 0.3), full_mask((4, 4, 11, 11)), (7.5, 7.0)),
        det(4, (5, 5, 9.4, 9), 0.8, (0.2, 0.9), full_mask((5, 5, 10, 9)), (5.0, 4.0)),
    ]
    b = det(3, (15, 12, 18, 16), 0.6, (0.4, 0.6), full_mask((15, 12, 18, 16)), (3.0, 2.0))
    c = det(7, (0, 17.5, 3, 20), 0.3, (0.7, 0.1), full_mask((0, 17, 3, 20)), (2.0, 1.0))
    return [a[2], b, c, a[0], a[1]]


def test_linking_hand_made_detections():
    findings = find_lesions(two_lesions_and_an_edge(), np.eye(4), TAGS)
    assert [f.score for f in findings] == pytest.approx([0.8, 0.6, 0.3])
    a, b, c = findings
    assert [d.k for d in a.detections] == [2, 3, 4]
    assert a.key_slice == 3  # largest mask, though slice 4 scores higher
    assert a.tags == pytest.approx({"a": 0.9, "b": 0.3})
    assert (a.long_axis_mm, a.short_axis_mm) == (7.5, 7.0)
    # union of the boxes rounded to the nearest edges: i 4.2 -> 4, 10.1 -> 10; j 4.6 -> 5, 10.3 -> 10
    assert a.box_voxel == (4, 5, 2, 10, 10, 5)
    assert b.box_voxel == (15, 12, 3, 18, 16, 4) and b.key_slice == 3
    assert c.box_voxel == (0, 18, 7, 3, 20, 8) and c.key_slice == 7


def test_a_chain_never_skips_a_slice_or_links_below_the_overlap():
    boxes = {0: (2, 2, 8, 8), 1: (2, 2, 8, 8), 3: (2, 2, 8, 8), 4: (5, 5, 11, 11)}  # slice 2 missing
    chains = link_detections([det(k, box, 0.5) for k, box in boxes.items()])
    # slices 3 and 4 overlap by 9 of 36 pixels
    assert [[d.k for d in chain] for chain in chains] == [[0, 1], [3], [4]]
    assert 9 / 36 < LINK_OVERLAP


def test_a_tapering_lesion_stays_one_finding():
    """The end caps of a lesion lie inside their neighbours' boxes with IoU far below 0.3."""
    caps = [det(0, (6, 6, 7, 7), 0.2), det(1, (4, 4, 9, 10), 0.9), det(2, (5, 6, 7, 8), 0.3)]
    (finding,) = find_lesions(caps, np.eye(4), TAGS)
    assert [d.k for d in finding.detections] == [0, 1, 2] and finding.box_voxel == (4, 4, 0, 9, 10, 3)


def test_a_one_pixel_end_touching_at_a_corner_links():
    (finding,) = find_lesions([det(3, (35, 47, 36, 48), 0.4), det(4, (34, 48, 37, 50), 0.8)], np.eye(4), TAGS)
    assert finding.box_voxel == (34, 47, 3, 37, 50, 5)


def test_box_overlap_is_over_the_smaller_box():
    a = np.array([[0, 0, 4, 4], [0, 0, 0, 4]], float)
    b = np.array([[1, 1, 3, 3], [2, 0, 6, 4], [4, 4, 8, 8]], float)
    np.testing.assert_allclose(box_overlap(a, b), [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])


def test_linking_is_greedy_by_overlap():
    # Chains X and Y on slice 0; on slice 1, P overlaps X by 0.6 and Y by 0.9, Q overlaps X by 0.5 only.
    # Greedy gives Y P, then X Q; taking the chains in turn would give X P and leave Y and Q apart.
    x, y = det(0, (0, 0, 10, 10), 0.5), det(0, (0, 5, 10, 15), 0.5)
    p, q = det(1, (0, 4, 10, 14), 0.5), det(1, (0, -5, 10, 5), 0.5)
    chains = link_detections([x, y, p, q])
    assert [[d.box[1] for d in chain] for chain in chains] == [[0, -5], [5, 4]]


def test_equal_overlaps_go_to_the_higher_iou():
    # Both small boxes lie inside the chain's box (overlap 1); the larger one has the higher IoU.
    chain_end = det(0, (0, 0, 10, 10), 0.5)
    small, larger = det(1, (1, 1, 3, 3), 0.5), det(1, (2, 2, 9, 9), 0.5)
    chains = link_detections([chain_end, small, larger])
    assert [[tuple(d.box) for d in chain] for chain in chains] == [
        [(0, 0, 10, 10), (2, 2, 9, 9)],
        [(1, 1, 3, 3)],
    ]


def test_key_slice_ties_go_to_the_higher_score_then_the_lower_slice():
    same = [det(k, (2, 2, 6, 6), s) for k, s in ((1, 0.4), (2, 0.6), (3, 0.6), (4, 0.5))]
    (finding,) = find_lesions(same, np.eye(4), TAGS)
    assert finding.key_slice == 2 and finding.score == pytest.approx(0.6)


def test_a_box_thinner_than_a_voxel_takes_the_voxel_of_its_centre():
    (finding,) = find_lesions([det(5, (3.6, 4.0, 3.9, 6.0), 0.5)], np.eye(4), TAGS)
    assert finding.box_voxel == (3, 4, 5, 4, 6, 6)


@pytest.mark.parametrize(
    ("affine", "box", "expected"),
    [
        # axes permuted and j flipped: x = -2 j + 10, y = 0.5 i - 5, z = 3 k + 1; edges at index - 1/2
        (
            [[0, -2, 0, 10], [0.5, 0, 0, -5], [0, 0, 3, 1], [0, 0, 0, 1]],
            (1, 2, 3, 4, 6, 5),
            (-1.0, -4.75, 8.5, 7.0, -3.25, 14.5),
        ),
        # 45 degrees about z: x = (i - j) / sqrt 2, y = (i + j) / sqrt 2; the corners of i, j in [-1/2, 3/2]
        (
            [[0.5**0.5, -(0.5**0.5), 0, 0], [0.5**0.5, 0.5**0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
            (0, 0, 0, 2, 2, 1),
            (-(2**0.5), -(0.5**0.5), -0.5, 2**0.5, 3 * 0.5**0.5, 0.5),
        ),
    ],
)
def test_patient_box_from_the_affine(affine, box, expected):
    np.testing.assert_allclose(patient_box(box, np.array(affine, float)), expected, atol=1e-12)
    chain = [det(k, (box[0], box[1], box[3], box[4]), 0.5) for k in range(box[2], box[5])]
    (finding,) = find_lesions(chain, np.array(affine, float), TAGS)
    np.testing.assert_allclose(finding.box_patient_mm, expected, atol=1e-12)


def test_json_schema_and_order():
    findings = find_lesions([*two_lesions_and_an_edge(), det(6, (10, 0, 12, 2), 0.3)], np.eye(4), TAGS)
    result = VolumeFindings("v", findings, instance_volume(findings, SHAPE))
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert list(data) == ["findings"]
    rows = data["findings"]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    # equal scores: the lower key slice first
    assert [r["key_slice"] for r in rows[-2:]] == [6, 7]
    for row in rows:
        assert set(row) == {
            "box_voxel",
            "box_patient_mm",
            "score",
            "tags",
            "long_axis_mm",
            "short_axis_mm",
            "key_slice",
        }
        assert len(row["box_voxel"]) == 6 and all(isinstance(v, int) for v in row["box_voxel"])
        assert len(row["box_patient_mm"]) == 6 and list(row["tags"]) == list(TAGS)
        i0, j0, k0, i1, j1, k1 = row["box_voxel"]
        assert i0 < i1 and j0 < j1 and k0 <= row["key_slice"] < k1
    assert rows[-2]["long_axis_mm"] is None and rows[-2]["short_axis_mm"] is None  # unknown axes: null
    assert rows[0]["long_axis_mm"] == 7.5


def test_instance_volume_labels_by_rank_and_overlaps_go_to_the_higher_score():
    low = det(2, (2, 2, 6, 6), 0.4, mask=full_mask((2, 2, 6, 6)))
    ring = full_mask((4, 4, 8, 8))
    ring[1:3, 1:3] = False
    high = det(2, (4, 4, 8, 8), 0.9, mask=ring)
    boxed = det(5, (10.4, 3.6, 12.6, 6.2), 0.6)  # no mask head: the rounded box (10..13, 4..6)
    findings = find_lesions([low, high, boxed], np.eye(4), TAGS)
    labels = instance_volume(findings, SHAPE)
    assert labels.dtype == np.int32 and labels.shape == SHAPE
    expected = np.zeros(SHAPE, np.int32)
    expected[2:6, 2:6, 2] = 3
    expected[4:8, 4:8, 2][ring] = 1
    expected[10:13, 4:6, 5] = 2
    np.testing.assert_array_equal(labels, expected)


def test_slice_detections_crop_masks_to_their_boxes():
    masks = np.zeros((2, 12, 10), bool)
    masks[0, 3:6, 2:5] = True
    masks[1, 7, 8] = True
    detections = Detections(
        boxes=np.array([[2.5, 1.2, 6.0, 5.5], [7.0, 8.0, 8.0, 9.0]], np.float32),
        scores=np.array([0.9, 0.2], np.float32),
        tags=np.array([[0.1, 0.2], [0.3, 0.4]], np.float32),
        masks=masks,
        long_axis_mm=np.array([3.0, np.nan], np.float32),
        short_axis_mm=np.array([2.0, np.nan], np.float32),
    )
    first, second = slice_detections(4, detections)
    assert first.k == second.k == 4
    assert first.pixels == (slice(2, 6), slice(1, 6))
    restored = np.zeros((12, 10), bool)
    restored[first.pixels] = first.mask
    np.testing.assert_array_equal(restored, masks[0])
    assert second.mask.shape == (1, 1) and second.mask.all() and math.isnan(second.long_axis_mm)
    assert first.area == 9 and second.score == pytest.approx(0.2)
    no_masks = slice_detections(0, detections._replace(masks=None))
    assert no_masks[0].mask is None and no_masks[0].area == pytest.approx(3.5 * 4.3)


def test_no_detections_no_findings():
    assert find_lesions([], np.eye(4), TAGS) == ()
    assert not instance_volume((), SHAPE).any()
    assert VolumeFindings("v", (), np.zeros(SHAPE, np.int32)).to_json() == {"findings": []}
