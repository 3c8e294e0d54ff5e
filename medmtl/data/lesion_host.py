"""The lesion-free host of the simulated lesion volumes (``medmtl.data.lesion_sim``): the MNI152 T1 template
(``medmtl.data.mni``) on the simulator's voxel grid.

``host_volume`` resamples the template to ``voxel_mm`` isotropic voxels (Gaussian anti-aliasing, linear
interpolation; labels nearest), presents it in one orientation by permuting its axes so that k is the slice
axis and the other two keep their order (axial (x, y, z), coronal (x, z, y), sagittal (y, z, x), as in
``medmtl.data.mni``), then, when ``slice_mm`` is set, resamples it along k to that slice spacing (Gaussian
slice profile, linear interpolation). The affine follows every step, so it still maps voxel indices to the
template's RAS+ mm.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from scipy.ndimage import affine_transform, gaussian_filter, gaussian_filter1d

from medmtl.data.mni import load_template, slice_axis


class HostVolume(NamedTuple):
    """``image`` (I, J, K) float32 in about [0, 1]; ``labels`` (I, J, K) uint8 (0 other, 1 grey, 2 white
    matter); ``affine`` (4, 4) voxel -> RAS+ mm; ``spacing`` (3,) mm along i, j, k. Fresh, writable arrays."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray


def _num_samples(size: int, step: float) -> int:
    """Samples 0, step, 2 step, ... that fit in 0 .. size - 1 (with slack for round-off)."""
    return int(np.floor((size - 1) / step + 1e-9)) + 1


@functools.lru_cache(maxsize=2)
def _template_at(voxel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The template resampled to ``voxel_mm`` voxels whose first voxel stays the template's (cached)."""
    template = load_template()
    if voxel_mm == 1.0:
        return template.image, template.labels, template.affine
    zoom = np.full(3, voxel_mm)
    shape = tuple(_num_samples(n, voxel_mm) for n in template.image.shape)
    smooth = gaussian_filter(template.image, 0.4 * voxel_mm) if voxel_mm > 1 else template.image
    image = affine_transform(smooth, zoom, output_shape=shape, order=1).astype(np.float32)
    labels = affine_transform(template.labels, zoom, output_shape=shape, order=0)
    affine = template.affine @ np.diag([*zoom, 1.0])
    for array in (image, labels, affine):
        array.flags.writeable = False
    return image, labels, affine


def host_volume(orientation: str, voxel_mm: float = 1.0, slice_mm: float | None = None) -> HostVolume:
    """The lesion-free host in ``orientation`` (k = its slice axis), optionally resampled to ``slice_mm``."""
    image, labels, affine = _template_at(float(voxel_mm))
    axis = slice_axis(orientation)
    order = [a for a in range(3) if a != axis] + [axis]
    image, labels = image.transpose(order), labels.transpose(order)
    affine = affine.copy()
    affine[:, :3] = affine[:, order]
    spacing = np.full(3, float(voxel_mm))
    if slice_mm is not None and slice_mm != voxel_mm:
        ratio = slice_mm / voxel_mm
        if ratio > 1:  # a thick slice averages its neighbourhood (partial volume along k)
            image = gaussian_filter1d(image, 0.4 * ratio, axis=2)
        positions = np.arange(_num_samples(image.shape[2], ratio)) * ratio
        below = np.floor(positions).astype(np.int64)
        above = np.minimum(below + 1, image.shape[2] - 1)
        weight = (positions - below).astype(np.float32)
        image = image[..., below] * (1 - weight) + image[..., above] * weight
        labels = labels[..., np.minimum(np.rint(positions).astype(np.int64), labels.shape[2] - 1)]
        affine[:, 2] *= ratio
        spacing[2] = slice_mm
    return HostVolume(np.array(image, np.float32, order="C"), np.array(labels, order="C"), affine, spacing)
