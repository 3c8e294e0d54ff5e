"""The in-memory form of one annotated volume for lesion analysis, shared by every lesion reader.

Axes follow the array as nibabel loads a NIfTI (DESIGN.md, "Lesion findings"): ``image[i, j, k]`` with the
third axis ``k`` the slice axis. Boxes are voxel boxes, half-open, ``(i0, j0, k0, i1, j1, k1)``. A lesion
annotated on one key slice only (DeepLesion) has ``k1 = k0 + 1 = key_slice + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Lesion:
    """One lesion.

    box: (6,) float64 voxel box ``(i0, j0, k0, i1, j1, k1)``, half-open.
    key_slice: index along k of the slice it is measured on.
    tags: indices into ``LesionVolume.tag_names`` (multi-label; empty when untagged).
    long_axis_mm, short_axis_mm: RECIST diameters in mm on the key slice (NaN when unknown).
    recist: (4, 2) float64 end points ``(i, j)`` of the long then the short axis on the key slice, or None.
    uncertain_tags: indices of tags that cannot be told from the image (neither positive nor negative; as
        MULAN's uncertain labels, left out of the tag loss and the tag metrics).
    """

    box: np.ndarray
    key_slice: int
    tags: tuple[int, ...] = ()
    long_axis_mm: float = float("nan")
    short_axis_mm: float = float("nan")
    recist: np.ndarray | None = None
    uncertain_tags: tuple[int, ...] = ()


@dataclass(frozen=True)
class LesionVolume:
    """One volume and its lesions.

    image: (I, J, K) float32; Hounsfield units for CT, the source's intensity otherwise.
    spacing: (3,) float64 voxel size in mm along i, j, k.
    affine: (4, 4) float64 voxel -> patient (RAS+ mm, nibabel's convention).
    instances: (I, J, K) int32 instance labels, 0 = background, n = ``lesions[n - 1]``. Masks may be weak
        (DeepLesion: RECIST ellipses on key slices only).
    lesions: the lesions, in instance order.
    tag_names: the tag vocabulary (index = tag id).
    name: an identifier for messages and outputs (file or series name).
    meta: non-imaging inputs when known, e.g. ``{"age": 62.0, "sex": "F"}``, and source fields such as the
        DeepLesion split or window.
    """

    image: np.ndarray
    spacing: np.ndarray
    affine: np.ndarray
    instances: np.ndarray
    lesions: tuple[Lesion, ...]
    tag_names: tuple[str, ...]
    name: str
    meta: dict = field(default_factory=dict)
