"""RECIST geometry: axis lengths, edge-to-edge measurement of masks, and weak ellipse masks, against
hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medmtl.data.lesion_geometry import measure_recist, recist_diameters_mm, recist_ellipse_mask


def test_recist_diameters_scale_each_axis():
    recist = np.array([[0, 0], [3, 4], [1, 1], [1, 3]])
    assert recist_diameters_mm(recist, np.array([2.0, 0.5])) == pytest.approx((math.hypot(6, 2), 1.0))


def _mask(shape: tuple[int, int], pixels: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(np.array(pixels).T)] = True
    return mask


# name -> (mask, spacing, long mm, short mm, recist end points (i, j))
CASES = {
    # 7 px along i: 6 centre steps of 0.5 mm plus one pixel (0.5); across, one pixel of 2 mm.
    "bar": (
        _mask((12, 12), [(i, 5) for i in range(2, 9)]),
        (0.5, 2.0),
        3.5,
        2.0,
        [[1.5, 5], [8.5, 5], [5, 4.5], [5, 5.5]],
    ),
    # 9 px along j crossed by 5 px along i at its middle.
    "cross": (
        _mask((15, 15), [(7, j) for j in range(3, 12)] + [(i, 7) for i in range(5, 10)]),
        (1.0, 1.0),
        9.0,
        5.0,
        [[7, 2.5], [7, 11.5], [9.5, 7], [4.5, 7]],
    ),
    # 5 px on a diagonal: 4 diagonal steps plus a pixel's diagonal; across, one pixel's diagonal.
    "diagonal": (
        _mask((8, 8), [(k, k) for k in range(1, 6)]),
        (1.0, 1.0),
        5 * math.sqrt(2),
        math.sqrt(2),
        None,
    ),
    # One pixel: its sides, the longer one first.
    "pixel": (_mask((3, 3), [(1, 1)]), (0.7, 0.9), 0.9, 0.7, [[1, 0.5], [1, 1.5], [0.5, 1], [1.5, 1]]),
    # The cross with oblong pixels: 9 x 0.9 along j, 5 x 0.8 along i.
    "cross_aniso": (
        _mask((15, 15), [(7, j) for j in range(3, 12)] + [(i, 7) for i in range(5, 10)]),
        (0.8, 0.9),
        8.1,
        4.0,
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_measure_recist_hand_computed(name):
    mask, spacing, long_mm, short_mm, ends = CASES[name]
    got_long, got_short, recist = measure_recist(mask, np.array(spacing))
    assert (got_long, got_short) == pytest.approx((long_mm, short_mm))
    if ends is not None:
        np.testing.assert_allclose(recist, ends, atol=1e-9)
    assert recist_diameters_mm(recist, np.array(spacing)) == pytest.approx((got_long, got_short))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.6, 1.7)])
def test_measure_recist_properties_on_random_blobs(seed, spacing):
    """Long >= short, axes perpendicular in mm, end points within half a pixel's reach of the mask's box,
    and the long axis at least the largest centre-to-centre distance plus the smallest pixel side."""
    rng = np.random.default_rng(seed)
    blobs, count = ndimage.label(ndimage.gaussian_filter(rng.random((23, 19)), 2.0) > 0.52)
    sizes = np.bincount(blobs.ravel())[1:]
    mask = blobs == 1 + int(np.argmax(sizes)) if count else np.pad([[True]], 5)
    spacing = np.array(spacing)
    long_mm, short_mm, recist = measure_recist(mask, spacing)
    assert long_mm >= short_mm > 0
    assert recist_diameters_mm(recist, spacing) == pytest.approx((long_mm, short_mm))
    axes = (recist[[1, 3]] - recist[[0, 2]]) * spacing
    assert abs(axes[0] @ axes[1]) <= 1e-9 * long_mm * short_mm
    idx = np.argwhere(mask)
    reach = spacing.sum() / 2 / spacing  # half a pixel's widest extent, in voxels along i and j
    assert (recist >= idx.min(axis=0) - reach - 1e-9).all() and (
        recist <= idx.max(axis=0) + reach + 1e-9
    ).all()
    centres = idx * spacing
    widest = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)).max()
    assert long_mm >= widest + spacing.min() - 1e-9


def test_measure_recist_refuses_an_empty_mask():
    with pytest.raises(ValueError, match="at least one pixel"):
        measure_recist(np.zeros((4, 4), bool), np.ones(2))


def test_ellipse_mask_small_hand_count():
    """Semi-axes 2 (along i) and 1 around (12, 8): the 5 pixels of the row and the 2 above and below."""
    mask = recist_ellipse_mask(np.array([[10, 8], [14, 8], [12, 7], [12, 9]]), (20, 20))
    assert sorted(map(tuple, np.argwhere(mask).tolist())) == [
        (10, 8),
        (11, 8),
        (12, 7),
        (12, 8),
        (12, 9),
        (13, 8),
        (14, 8),
    ]


def test_ellipse_mask_off_centre_axes_pass_through_all_end_points():
    """The short axis crosses the long one a quarter along: four quarter ellipses, area pi/4 * sum a*b."""
    recist = np.array([[10, 10], [18, 10], [12, 7], [12, 12]])  # semi-axes 6 | 2 along i, 2 | 3 along j
    mask = recist_ellipse_mask(recist, (30, 30))
    assert all(mask[i, j] for i, j in recist)
    area = math.pi / 4 * (6 * 2 + 6 * 3 + 2 * 2 + 2 * 3)
    assert mask.sum() == pytest.approx(area, rel=0.05)
    assert not mask[:, :7].any() and not mask[:, 13:].any() and not mask[:10].any() and not mask[19:].any()


@pytest.mark.parametrize("angle", [0.0, 0.4, 1.1])
def test_ellipse_mask_area_matches_the_ellipse(angle):
    centre, a, b = np.array([31.3, 29.6]), 14.0, 6.0
    u, v = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
    recist = np.array([centre - a * u, centre + a * u, centre - b * v, centre + b * v])
    mask = recist_ellipse_mask(recist, (64, 64))
    assert mask.sum() == pytest.approx(math.pi * a * b, rel=0.03)


def test_ellipse_mask_uncrossed_axes_fall_back_to_the_diameters():
    """A short axis beside the long one (not crossing it): an ellipse with both diameters at the long
    axis' middle."""
    recist = np.array([[10, 10], [20, 10], [25, 8], [25, 12]])
    mask = recist_ellipse_mask(recist, (40, 30))
    expected = recist_ellipse_mask(np.array([[10, 10], [20, 10], [15, 8], [15, 12]]), (40, 30))
    np.testing.assert_array_equal(mask, expected)


def test_ellipse_mask_degenerate_short_axis_is_a_line():
    mask = recist_ellipse_mask(np.array([[4, 6], [10, 6], [7, 6], [7, 6]]), (16, 12))
    assert np.argwhere(mask).tolist() == [[i, 6] for i in range(4, 11)]


def test_ellipse_mask_is_clipped_to_the_slice():
    mask = recist_ellipse_mask(np.array([[-3, 2], [5, 2], [1, 0], [1, 4]]), (8, 6))
    assert mask.shape == (8, 6) and mask[0, 2] and mask[5, 2] and not mask[6:].any()
