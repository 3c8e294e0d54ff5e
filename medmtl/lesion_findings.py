"""Volume-level lesion findings from per-slice 2D detections: linking across slices, the findings' voxel and
patient boxes, the instance-label volume and the findings JSON (DESIGN.md, "Lesion findings").

Axes are the input volume's array axes as nibabel loads it, ``(i, j, k)`` with ``k`` the slice axis; pixel
``(i, j)`` covers ``[i, i + 1) x [j, j + 1)`` (``medmtl.models.lesion_decode``).

Linking. The network detects lesions slice by slice. Detections on adjacent slices ``k - 1`` and ``k``
belong to one lesion when their boxes overlap by at least ``LINK_OVERLAP`` of the smaller box's area
(intersection over the smaller area). Not IoU: a lesion's cross-section shrinks towards its ends, so the box
of an end slice lies inside its neighbour's with a small IoU (a 1-pixel cap on a 5 x 6 section: 1/30), and
an IoU rule splits such lesions into several findings (it did on simulated MNI lesions with perfect
detections). Boxes are compared grown by ``LINK_MARGIN_PX`` on every side, so that a one-pixel end that
touches its neighbour's section only at a corner (voxels connected diagonally) still links: it overlaps
by 1/2. Two boxes of equal size shifted by a third of their width overlap by about 2/3, while boxes a pixel
apart or more do not link. Slices are visited in ascending ``k``, and the pairs between the chains that
reached ``k - 1`` and the detections of ``k`` are matched greedily by descending overlap, then IoU (each
chain and each detection at most once; remaining ties in the order of the chains and the detections); an
unmatched detection starts a chain. A chain never skips a slice, so a lesion missed on one slice gives two
findings rather than letting a one-slice false positive bridge two lesions.

A finding is one chain:

- ``score``: the highest score of its detections (a lesion is as certain as its clearest slice);
- ``key_slice``: the slice where it is largest (mask pixels, or box area without a mask head; ties go to the
  higher score, then the lower ``k``). The training data define a lesion's key slice that way (the slice of
  largest area in ``lesion_nifti`` and ``lesion_sim``, the measured slice in DeepLesion), and RECIST measures
  a lesion where it is largest. The highest-scoring slice would often be an off-centre one, where the
  detector happens to be surest;
- ``tags``, ``long_axis_mm``, ``short_axis_mm``: those of its key-slice detection (axes NaN when unknown);
- ``box_voxel`` ``(i0, j0, k0, i1, j1, k1)``: the union of its 2D boxes, each rounded to the nearest voxel
  edges (one that rounds to nothing: the voxel holding its centre); ``k0`` its first slice, ``k1`` its last
  slice + 1;
- ``box_patient_mm`` ``(x0, y0, z0, x1, y1, z1)``: the smallest patient-space box holding the voxel box's
  eight corners, mapped through the affine. The corners are the outer edges of the box's voxels: the affine
  maps voxel centres, so edge ``i0`` lies at index ``i0 - 1/2``.

Findings are ordered by descending score (ties: lower key slice, then lower box corner). In the instance
volume, finding ``n`` (1-based, in that order) has label ``n``: on each of its slices, its detection's mask
(its rounded box's voxels for a network without a mask head); where findings overlap, the higher score
keeps the voxel. A finding whose masks are all empty has no voxels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medmtl.errors import InputError
from medmtl.metrics.lesion import box_iou
from medmtl.models.lesion_decode import Detections

LINK_OVERLAP = 0.5
LINK_MARGIN_PX = 0.5
# Digits kept in the JSON: scores and probabilities to 1e-6, millimetres to 1e-4 (0.1 micrometre).
_PROB_DIGITS, _MM_DIGITS = 6, 4


@dataclass(frozen=True)
class SliceDetection:
    """One 2D detection on slice ``k``.

    box: (4,) float64 ``(i0, j0, i1, j1)``, half-open pixels. score: in [0, 1]. tags: (T,) float32 tag
    probabilities. mask: bool instance mask over the pixels the box touches (``pixels``), None without a
    mask head. long_axis_mm, short_axis_mm: RECIST axes of the mask, NaN when unknown.
    """

    k: int
    box: np.ndarray
    score: float
    tags: np.ndarray
    mask: np.ndarray | None
    long_axis_mm: float
    short_axis_mm: float

    @property
    def pixels(self) -> tuple[slice, slice]:
        """The rows and columns the box touches, ``floor(i0) .. ceil(i1) - 1`` (as ``decode_detections``)."""
        return _touched(self.box)

    @property
    def area(self) -> float:
        """Mask pixels, or the box's area in pixels without a mask."""
        if self.mask is not None:
            return float(self.mask.sum())
        return float(np.prod(self.box[2:] - self.box[:2]))


def _touched(box: np.ndarray) -> tuple[slice, slice]:
    lo, hi = np.floor(box[:2]).astype(int), np.ceil(box[2:]).astype(int)
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


def slice_detections(k: int, detections: Detections) -> list[SliceDetection]:
    """One slice's ``decode_detections`` output as ``SliceDetection``s; masks are cropped to their boxes,
    so a volume's detections hold no full-slice masks."""
    found = []
    for n in range(len(detections.scores)):
        box = np.asarray(detections.boxes[n], np.float64)
        mask = None
        if detections.masks is not None:
            mask = np.ascontiguousarray(detections.masks[n][_touched(box)], bool)
        found.append(
            SliceDetection(
                k=int(k),
                box=box,
                score=float(detections.scores[n]),
                tags=np.asarray(detections.tags[n], np.float32),
                mask=mask,
                long_axis_mm=float(detections.long_axis_mm[n]),
                short_axis_mm=float(detections.short_axis_mm[n]),
            )
        )
    return found


def box_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, N) float64 intersection over the smaller area of boxes a (M, 4) and b (N, 4), half-open
    ``(i0, j0, i1, j1)``; 0 where either box is empty."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area_a, area_b = (np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1) for x in (a, b))
    smaller = np.minimum(area_a[:, None], area_b[None, :])
    return np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)


def link_detections(
    detections: Iterable[SliceDetection], min_overlap: float = LINK_OVERLAP
) -> list[list[SliceDetection]]:
    """Chains of detections on consecutive slices (see the module docstring), in order of their first
    slice; each chain in ascending ``k``."""
    by_slice: dict[int, list[SliceDetection]] = {}
    for d in detections:
        by_slice.setdefault(d.k, []).append(d)
    chains: list[list[SliceDetection]] = []
    open_chains: list[int] = []  # indices into chains of those that reached the previous slice
    previous = None
    for k in sorted(by_slice):
        current = by_slice[k]
        if previous is None or k != previous + 1:
            open_chains = []
        matched: dict[int, int] = {}  # detection -> chain
        if open_chains:
            margin = np.array([-LINK_MARGIN_PX, -LINK_MARGIN_PX, LINK_MARGIN_PX, LINK_MARGIN_PX])
            ends = np.stack([chains[c][-1].box for c in open_chains]) + margin
            boxes = np.stack([d.box for d in current]) + margin
            overlap, iou = box_overlap(ends, boxes), box_iou(ends, boxes)
            rows, cols = np.nonzero(overlap >= min_overlap)
            taken_rows: set[int] = set()
            for n in np.lexsort((-iou[rows, cols], -overlap[rows, cols])):
                r, c = int(rows[n]), int(cols[n])
                if r not in taken_rows and c not in matched:
                    taken_rows.add(r)
                    matched[c] = open_chains[r]
        open_chains = []
        for n, d in enumerate(current):
            if n in matched:
                chains[matched[n]].append(d)
                open_chains.append(matched[n])
            else:
                chains.append([d])
                open_chains.append(len(chains) - 1)
        previous = k
    return chains


def patient_box(box_voxel: Sequence[float], affine: np.ndarray) -> np.ndarray:
    """(6,) float64 ``(x0, y0, z0, x1, y1, z1)`` in mm: the smallest box holding the eight corners of the
    half-open voxel box ``(i0, j0, k0, i1, j1, k1)`` mapped through ``affine`` (4, 4), the corners taken at
    the voxels' outer edges (index - 1/2)."""
    lo, hi = np.asarray(box_voxel[:3], np.float64) - 0.5, np.asarray(box_voxel[3:], np.float64) - 0.5
    corners = np.array([[(lo, hi)[bit >> axis & 1][axis] for axis in range(3)] for bit in range(8)])
    affine = np.asarray(affine, np.float64)
    points = corners @ affine[:3, :3].T + affine[:3, 3]
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


@dataclass(frozen=True)
class Finding:
    """One 3D lesion finding (fields as in the module docstring); ``detections`` is its chain, ascending k."""

    box_voxel: tuple[int, int, int, int, int, int]
    box_patient_mm: tuple[float, float, float, float, float, float]
    score: float
    tags: dict[str, float]
    long_axis_mm: float
    short_axis_mm: float
    key_slice: int
    detections: tuple[SliceDetection, ...]

    def to_json(self) -> dict[str, Any]:
        """The finding's JSON object (DESIGN.md); unknown axes are null."""

        def mm(x: float) -> float | None:
            return round(float(x), _MM_DIGITS) if math.isfinite(x) else None

        return {
            "box_voxel": [int(v) for v in self.box_voxel],
            "box_patient_mm": [mm(v) for v in self.box_patient_mm],
            "score": round(self.score, _PROB_DIGITS),
            "tags": {name: round(p, _PROB_DIGITS) for name, p in self.tags.items()},
            "long_axis_mm": mm(self.long_axis_mm),
            "short_axis_mm": mm(self.short_axis_mm),
            "key_slice": int(self.key_slice),
        }


def _voxel_rect(box: np.ndarray) -> tuple[int, int, int, int]:
    """A 2D box rounded to the nearest voxel edges; an extent that rounds to nothing becomes the voxel
    holding the box's centre."""
    lo, hi = np.floor(box[:2] + 0.5).astype(int), np.floor(box[2:] + 0.5).astype(int)
    centre = np.floor((box[:2] + box[2:]) / 2).astype(int)
    empty = hi <= lo
    lo, hi = np.where(empty, centre, lo), np.where(empty, centre + 1, hi)
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def _finding(chain: Sequence[SliceDetection], affine: np.ndarray, tag_names: Sequence[str]) -> Finding:
    key = max(chain, key=lambda d: (d.area, d.score, -d.k))
    rects = np.array([_voxel_rect(d.box) for d in chain])
    (i0, j0), (i1, j1) = rects[:, :2].min(axis=0), rects[:, 2:].max(axis=0)
    box = (int(i0), int(j0), chain[0].k, int(i1), int(j1), chain[-1].k + 1)
    if len(key.tags) != len(tag_names):
        raise InputError("tag_names", f"{len(tag_names)} names for detections with {len(key.tags)} tags")
    return Finding(
        box_voxel=box,
        box_patient_mm=tuple(float(v) for v in patient_box(box, affine)),
        score=max(d.score for d in chain),
        tags={str(name): float(p) for name, p in zip(tag_names, key.tags)},
        long_axis_mm=key.long_axis_mm,
        short_axis_mm=key.short_axis_mm,
        key_slice=key.k,
        detections=tuple(chain),
    )


def find_lesions(
    detections: Iterable[SliceDetection],
    affine: np.ndarray,
    tag_names: Sequence[str],
    min_overlap: float = LINK_OVERLAP,
) -> tuple[Finding, ...]:
    """Link a volume's detections and describe each chain (see the module docstring), by descending score.

    affine: (4, 4) voxel -> patient mm. tag_names: the T names of the detections' tag probabilities.
    """
    findings = [_finding(chain, affine, tag_names) for chain in link_detections(detections, min_overlap)]
    return tuple(sorted(findings, key=lambda f: (-f.score, f.key_slice, f.box_voxel)))


def instance_volume(findings: Sequence[Finding], shape: tuple[int, int, int]) -> np.ndarray:
    """(I, J, K) int32 labels: finding ``n`` of ``findings`` (1-based) is label ``n`` (see the module
    docstring); ``findings`` are expected by descending score, so earlier ones keep overlapping voxels."""
    labels = np.zeros(shape, np.int32)
    for label, finding in enumerate(findings, 1):
        for d in finding.detections:
            if d.mask is None:
                i0, j0, i1, j1 = _voxel_rect(d.box)
                plane, region = labels[i0:i1, j0:j1, d.k], True
            else:
                rows, cols = d.pixels
                plane, region = labels[rows, cols, d.k], d.mask
            plane[region & (plane == 0)] = label  # plane is a view: this writes into labels
    return labels


@dataclass(frozen=True)
class VolumeFindings:
    """What ``LesionPredictor.predict_volume`` returns for one volume: its name, its findings by descending
    score, and the instance-label volume (I, J, K) int32 (``instance_volume``)."""

    name: str
    findings: tuple[Finding, ...]
    instances: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """``{"findings": [...]}`` as DESIGN.md fixes it."""
        return {"findings": [f.to_json() for f in self.findings]}
