"""RECIST geometry on one slice: the long and short axis of a mask, axis lengths in mm, and the weak mask a
RECIST measurement implies.

Points are ``(i, j)`` in voxel units of the slice, pixel centres at integers; ``spacing`` is the pixel size
in mm along i and j. A RECIST measurement is a (4, 2) array of end points: the long axis, then the short.

Masks are measured edge to edge, as a radiologist measures on screen: a pixel is a ``spacing[0] x
spacing[1]`` rectangle, so a row of n pixels has a long axis of n pixels and a short axis of one.
"""

from __future__ import annotations

import numpy as np

# Semi-axes of a weak mask are at least this many pixels, so a degenerate measurement still marks its line.
MIN_SEMI_AXIS_PX = 0.5


def _cross(a: np.ndarray, b: np.ndarray) -> float:
    """The z component of the cross product of two 2D vectors."""
    return float(a[0] * b[1] - a[1] * b[0])


def recist_diameters_mm(recist: np.ndarray, spacing: np.ndarray) -> tuple[float, float]:
    """Lengths in mm of the long and the short axis of ``recist`` (4, 2), as measured (no reordering)."""
    ends = np.asarray(recist, np.float64).reshape(2, 2, 2) * np.asarray(spacing, np.float64)[:2]
    lengths = np.hypot(*(ends[:, 1] - ends[:, 0]).T)
    return float(lengths[0]), float(lengths[1])


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of (N, 2) points (monotone chain); 1 or 2 points when they are collinear."""
    pts = np.unique(points, axis=0)  # sorted by first, then second coordinate
    if len(pts) <= 2:
        return pts

    def chain(seq: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for p in seq:
            while len(out) >= 2 and _cross(out[-1] - out[-2], p - out[-2]) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = chain(pts), chain(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _row_extremes(index: np.ndarray) -> np.ndarray:
    """The first and last pixel of every row of (N, 2) pixel indices: a superset of the hull's vertices."""
    order = np.lexsort((index[:, 1], index[:, 0]))
    rows = index[order]
    starts = np.flatnonzero(np.r_[True, rows[1:, 0] != rows[:-1, 0]])
    ends = np.r_[starts[1:], len(rows)] - 1
    return rows[np.r_[starts, ends]]


def _extent(direction: np.ndarray, spacing: np.ndarray) -> float:
    """The width in mm of one pixel along a unit ``direction`` given in mm."""
    return float(np.abs(direction) @ spacing)


def measure_recist(mask: np.ndarray, spacing: np.ndarray) -> tuple[float, float, np.ndarray]:
    """The RECIST long and short axis of a 2D mask (I, J), in mm, and their end points.

    Long axis: the largest Feret diameter, measured edge to edge: over the pairs of pixels on the mask's
    convex hull, the largest distance between their centres plus one pixel's width along the line joining
    them. Short axis: the longest chord perpendicular to it; a chord is a strip one pixel wide across the
    long axis, measured between its outermost pixel centres plus one pixel's width. Among equally long
    chords, the one nearest the long axis' middle wins. If the chord comes out longer, the two axes swap.

    Returns (long_mm, short_mm, recist), recist (4, 2) float64 end points ``(i, j)`` on the pixels' outer
    edges, long axis first, with ``recist_diameters_mm(recist, spacing) == (long_mm, short_mm)``.
    Raises ValueError for an empty mask.
    """
    spacing = np.asarray(spacing, np.float64)[:2]
    index = np.argwhere(np.asarray(mask, bool))
    if len(index) == 0:
        raise ValueError("measure_recist needs a mask with at least one pixel")
    hull = _convex_hull(_row_extremes(index) * spacing)
    if len(hull) == 1:
        first, last, direction = hull[0], hull[0], np.array([1.0, 0.0])
    else:
        diff = hull[None, :, :] - hull[:, None, :]
        dist = np.hypot(diff[..., 0], diff[..., 1])
        unit = diff / np.where(dist > 0, dist, 1.0)[..., None]
        a, b = np.unravel_index(np.argmax(dist + np.abs(unit) @ spacing), dist.shape)
        first, last, direction = hull[a], hull[b], unit[a, b]
    normal = np.array([-direction[1], direction[0]])
    along, across = _extent(direction, spacing), _extent(normal, spacing)
    long_mm = float(np.hypot(*(last - first))) + along

    # Chords: every pixel centre's position along the long axis (t) and across it (s), binned one pixel wide.
    centres = index * spacing
    t, s = (centres - first) @ direction, (centres - first) @ normal
    raw = np.round(t / along).astype(np.int64)
    bins = raw - raw.min()
    lo, hi = np.full(bins.max() + 1, np.inf), np.full(bins.max() + 1, -np.inf)
    np.minimum.at(lo, bins, s)
    np.maximum.at(hi, bins, s)
    width = np.where(np.isfinite(lo), hi - lo, -np.inf)
    widest = np.flatnonzero(width >= width.max() - 1e-9)
    middle = (long_mm - along) / 2 / along - raw.min()  # the bin of the long axis' middle
    best = widest[np.argmin(np.abs(widest - middle))]
    in_bin = bins == best
    lo_pt = np.flatnonzero(in_bin)[np.argmin(s[in_bin])]
    hi_pt = np.flatnonzero(in_bin)[np.argmax(s[in_bin])]
    short_mm = float(width[best]) + across

    # End points on the outer pixel edges; the short axis is placed at its chord's mean position along t.
    t_short = (t[lo_pt] + t[hi_pt]) / 2
    ends = np.array(
        [
            first - direction * along / 2,
            last + direction * along / 2,
            first + direction * t_short + normal * (s[lo_pt] - across / 2),
            first + direction * t_short + normal * (s[hi_pt] + across / 2),
        ]
    )
    if short_mm > long_mm:
        # Only for lesions a few pixels across with very oblong pixels: the chord is the longer of the two
        # perpendicular axes, so it becomes the long one.
        return short_mm, long_mm, ends[[2, 3, 0, 1]] / spacing
    return long_mm, short_mm, ends / spacing


def recist_ellipse_mask(recist: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The weak mask of a RECIST measurement: four quarter ellipses through its four end points.

    The quarters meet where the two axes cross, so a measurement whose short axis does not bisect the long
    one still gives a mask through all four end points (MULAN's weak masks for DeepLesion take this shape).
    If the axes do not cross inside both segments, an ellipse with the two diameters around the long
    axis' middle is used. Semi-axes are at least ``MIN_SEMI_AXIS_PX``.

    recist: (4, 2) end points ``(i, j)``, long axis first. shape: (I, J) of the slice.
    Returns (I, J) bool: the pixels whose centres lie inside.
    """
    p1, p2, p3, p4 = np.asarray(recist, np.float64).reshape(4, 2)
    long_vec, short_vec = p2 - p1, p4 - p3
    cross = _cross(long_vec, short_vec)
    scale = np.hypot(*long_vec) * np.hypot(*short_vec)
    alpha = beta = -1.0
    if abs(cross) > 1e-9 * max(scale, 1e-12):
        alpha = _cross(p3 - p1, short_vec) / cross
        beta = _cross(p3 - p1, long_vec) / cross
    if 0 <= alpha <= 1 and 0 <= beta <= 1:
        centre = p1 + alpha * long_vec
        u, v = long_vec / np.hypot(*long_vec), short_vec / np.hypot(*short_vec)
        semi = np.hypot(*np.array([p2 - centre, p1 - centre, p4 - centre, p3 - centre]).T)
    else:
        centre = (p1 + p2) / 2
        norm = np.hypot(*long_vec)
        u = long_vec / norm if norm > 0 else np.array([1.0, 0.0])
        v = np.array([-u[1], u[0]])
        semi = np.repeat([norm / 2, np.hypot(*short_vec) / 2], 2)
    semi = np.maximum(semi, MIN_SEMI_AXIS_PX)

    # Only the pixels around the centre can be inside (u, v are unit vectors, so |q - c| <= the largest
    # semi-axis divided by the sine of the angle between u and v).
    sine = max(abs(_cross(u, v)), 1e-6)
    reach = semi.max() / sine + 1
    lo = np.maximum(np.floor(centre - reach), 0).astype(int)
    hi = np.minimum(np.ceil(centre + reach) + 1, shape).astype(int)
    out = np.zeros(shape, bool)
    if np.any(hi <= lo):
        return out
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    offset = np.stack([ii - centre[0], jj - centre[1]], axis=-1)
    along, across = np.linalg.solve(np.stack([u, v], axis=1), offset.reshape(-1, 2).T)
    a = np.where(along >= 0, semi[0], semi[1])
    b = np.where(across >= 0, semi[2], semi[3])
    inside = (along / a) ** 2 + (across / b) ** 2 <= 1 + 1e-9
    out[lo[0] : hi[0], lo[1] : hi[1]] = inside.reshape(ii.shape)
    return out
