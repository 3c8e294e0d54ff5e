"""The default dataset's definition: the MNI152 2009a T1 template and its grey/white-matter labels, read from
the nilearn wheel (no download), its slice splits, and the recipe that simulates k-space from it.

This module imports only numpy, so that command-line parsers can read the defaults cheaply.

Axis convention: arrays keep nibabel's array axes of the template, whose affine is RAS+ with 1 mm voxels, so the
volume is (x: left -> right, y: posterior -> anterior, z: inferior -> superior) = (197, 233, 189). A 2D slice
drops its slice axis and keeps the other two in order, without flips or transposes:

===========  ==========  ======================  ==========
orientation  slice axis  slice (H, W)            slices
===========  ==========  ======================  ==========
sagittal     0 (x)       (233, 189) = (y, z)     197
coronal      1 (y)       (197, 189) = (x, z)     233
axial        2 (z)       (197, 233) = (x, y)     189
===========  ==========  ======================  ==========

The last axis (W) is the phase-encode axis of the simulated 1D masks. Intensities are nilearn's, re-scaled to
[0, 1]. Labels follow DESIGN.md: 1 (grey matter) where p_GM > 0.5 and p_GM >= p_WM, 2 (white matter) where
p_WM > 0.5 and p_WM > p_GM, 0 elsewhere; names in ``medmtl.keys.MNI_CLASSES``.

Slice selections are written ``"START:STOP[,START:STOP...]"`` (half-open, slice-axis indices). The default
train/validation split per orientation (``DEFAULT_SPLITS``) covers the slices whose brain area (label > 0) is
over a quarter of the largest slice's: validation is the central 15 of them, training is the rest less a gap of
5 slices on each side, because neighbouring 1 mm slices are nearly the same image. The sagittal validation
block is centred on the midline, so the template's left-right symmetry does not mirror it into training.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from medmtl.errors import ConfigError

ORIENTATIONS = ("sagittal", "coronal", "axial")  # index = slice axis


@dataclass(frozen=True)
class MNITemplate:
    """The template in memory. ``image``: (197, 233, 189) float32 in [0, 1]; ``labels``: same shape, uint8;
    ``affine``: (4, 4) voxel -> RAS mm. The arrays are read-only because they are shared through the cache."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class SliceSplit:
    """Disjoint training and validation slice selections of one orientation (``"START:STOP,..."`` strings)."""

    train: str
    val: str


DEFAULT_SPLITS = {
    "sagittal": SliceSplit(train="34:86,111:163", val="91:106"),
    "coronal": SliceSplit(train="42:106,131:195", val="111:126"),
    "axial": SliceSplit(train="23:69,94:141", val="74:89"),
}


def tissue_labels(p_gm: np.ndarray, p_wm: np.ndarray) -> np.ndarray:
    """GM/WM probability maps (any shape, same shape) -> uint8 labels 0 other, 1 grey, 2 white matter."""
    labels = np.zeros(p_gm.shape, dtype=np.uint8)
    labels[(p_gm > 0.5) & (p_gm >= p_wm)] = 1
    labels[(p_wm > 0.5) & (p_wm > p_gm)] = 2
    return labels


@functools.lru_cache(maxsize=1)
def load_template() -> MNITemplate:
    """Load the template and labels once per process (about 1 s); later calls return the cached arrays."""
    # nilearn reads these from files inside its wheel; none of the three touches the network.
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template

    t1 = load_mni152_template(resolution=1)
    image = np.asarray(t1.get_fdata(dtype=np.float32))
    p_gm = np.asarray(load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32))
    p_wm = np.asarray(load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32))
    labels = tissue_labels(p_gm, p_wm)
    affine = np.asarray(t1.affine, dtype=np.float64)
    for array in (image, labels, affine):
        array.flags.writeable = False
    return MNITemplate(image=image, labels=labels, affine=affine)


def slice_axis(orientation: str) -> int:
    """Array axis that ``orientation`` slices along (see the module table)."""
    if orientation not in ORIENTATIONS:
        raise ConfigError("orientation", f"{orientation!r} is not one of {', '.join(ORIENTATIONS)}")
    return ORIENTATIONS.index(orientation)


def num_slices(orientation: str) -> int:
    """Number of slices of the template in ``orientation`` (without loading it)."""
    return (197, 233, 189)[slice_axis(orientation)]


def parse_slices(spec: str, orientation: str) -> tuple[int, ...]:
    """``"START:STOP[,START:STOP...]"`` -> sorted unique slice indices, checked against the template size.

    An empty START or STOP means the first or last slice, as in Python slicing; negative values are not allowed
    because a slice number should name one slice of the volume whatever the orientation.
    """
    n = num_slices(orientation)
    indices: set[int] = set()
    for part in str(spec).split(","):
        start_text, sep, stop_text = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            start = int(start_text) if start_text.strip() else 0
            stop = int(stop_text) if stop_text.strip() else n
        except ValueError:
            raise ConfigError("slices", f"{part.strip()!r} is not START:STOP") from None
        if not 0 <= start < stop <= n:
            raise ConfigError("slices", f"{start}:{stop} is not within 0:{n} ({orientation}) or is empty")
        indices.update(range(start, stop))
    return tuple(sorted(indices))


def split_slices(orientation: str, split: str) -> tuple[int, ...]:
    """Slice indices of the default ``split`` (``"train"`` or ``"val"``) of ``orientation``."""
    slice_axis(orientation)
    if split not in ("train", "val"):
        raise ConfigError("split", f"{split!r} is not 'train' or 'val'")
    return parse_slices(getattr(DEFAULT_SPLITS[orientation], split), orientation)


def extract_slices(orientation: str, indices: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """2D slices of the template. -> images (S, H, W) float32 in [0, 1], labels (S, H, W) uint8 (new arrays)."""
    axis = slice_axis(orientation)
    template = load_template()
    index = np.asarray(indices, dtype=np.int64)
    images = np.moveaxis(np.take(template.image, index, axis=axis), axis, 0)
    labels = np.moveaxis(np.take(template.labels, index, axis=axis), axis, 0)
    return np.ascontiguousarray(images), np.ascontiguousarray(labels)


# Matrix sizes DESIGN.md promises to handle.
SIZE_RANGE = (64, 640)


@dataclass(frozen=True)
class SimulationOptions:
    """How k-space is simulated from a template slice: the one place that holds the default dataset's
    recipe (``SimulateMultiCoil``, the online dataset, the builder and the CLI take their defaults from here).

    Args:
        num_coils: receive coils C.
        noise_level: k-space noise standard deviation relative to the RMS of the noise-free k-space.
        accelerations: requested accelerations, drawn per sample together with the centre fraction of the
            same position.
        center_fractions: fully sampled centre fractions, paired with ``accelerations``.
        mask: mask pattern, one of ``medmtl.transforms.masks.PATTERNS``.
        size: (H, W) to pad or crop the template slice to (centred) before simulation; None keeps the
            template's matrix (see ``medmtl.data.mni``). Slices of different orientations only batch together
            at a common size.
    """

    num_coils: int = 8
    noise_level: float = 0.02
    accelerations: tuple[float, ...] = (4.0,)
    center_fractions: tuple[float, ...] = (0.08,)
    mask: str = "equispaced"
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # Coerce YAML/CLI lists to tuples so the frozen dataclass stays hashable and comparable.
        object.__setattr__(self, "accelerations", tuple(float(a) for a in np.atleast_1d(self.accelerations)))
        object.__setattr__(
            self, "center_fractions", tuple(float(c) for c in np.atleast_1d(self.center_fractions))
        )
        if int(self.num_coils) != self.num_coils or self.num_coils < 1:
            raise ConfigError("num_coils", f"must be a whole number >= 1, got {self.num_coils}")
        object.__setattr__(self, "num_coils", int(self.num_coils))
        if not (self.noise_level >= 0 and math.isfinite(self.noise_level)):
            raise ConfigError("noise_level", f"must be a finite number >= 0, got {self.noise_level}")
        if not self.accelerations or len(self.accelerations) != len(self.center_fractions):
            raise ConfigError(
                "accelerations",
                f"{list(self.accelerations)} and center fractions {list(self.center_fractions)} must be "
                "non-empty lists of the same length (they are drawn in pairs)",
            )
        if any(not a >= 1 for a in self.accelerations):
            raise ConfigError("accelerations", f"must all be >= 1, got {list(self.accelerations)}")
        if any(not 0 <= c <= 1 for c in self.center_fractions):
            raise ConfigError("center_fractions", f"must all be in [0, 1], got {list(self.center_fractions)}")
        from medmtl.transforms.masks import PATTERNS  # here, so that importing this module stays light

        if self.mask not in PATTERNS:
            raise ConfigError("mask", f"unknown pattern {self.mask!r}; choose one of {', '.join(PATTERNS)}")
        if self.size is not None:
            size = tuple(int(n) for n in self.size)
            if len(size) != 2 or not all(SIZE_RANGE[0] <= n <= SIZE_RANGE[1] for n in size):
                raise ConfigError(
                    "size", f"must be (H, W) with each in {SIZE_RANGE[0]}..{SIZE_RANGE[1]}, got {self.size}"
                )
            object.__setattr__(self, "size", size)
