"""The default lesion data (no download): lesions simulated in the MNI152 T1 template, with known boxes, masks,
RECIST diameters and tags.

A volume is a pure function of (seed, split, index, options):

1. Host (``medmtl.data.lesion_host.host_volume``). The template in the volume's orientation (k = its slice
   axis) at ``voxel_mm`` voxels, resampled along k to a slice spacing drawn from ``slice_mm`` when that is set;
   its affine maps voxel indices to the template's RAS+ mm.
2. Lesions. 0 to ``max_lesions`` (uniform, so some volumes have none). Each is centred on a voxel of grey or
   white matter (the template's labels) in the left (x < 0 mm) or right (x > 0 mm) hemisphere, each choice
   with even odds. Its shape is an ellipsoid, the longest diameter log-uniform in ``diameter_mm`` and the
   others 0.5 to 1 times it (never below the lower bound), turned to a random orientation; a lobulated one
   has its radius modulated by 6 to 12 smooth bumps on the sphere, scaled so it stays inside that ellipsoid,
   which is grown where needed so that the dents leave no diameter through the centre below the smallest.
   Its body is hyperintense (1.3 to 1.8 times) or hypointense (0.3 to 0.7 times) relative to the median of
   its tissue in its neighbourhood, and it is homogeneous, rim-enhancing (a bright outer shell) or has a
   necrotic core (a dark centre). The edge is soft over about a voxel (partial volume); the instance mask is
   where the blend weight is at least 1/2. A draw that would touch an earlier lesion is drawn again (up to
   ``_PLACEMENT_TRIES`` times, then dropped), so masks never overlap.
3. Augmentation (``options.augment``). MONAI bias field, intensity scale and shift, and Gaussian noise over
   the whole image, lesions included, as a scanner would add them.
4. Records. Each lesion's box comes from its rasterised mask, its key slice is the slice of largest mask area,
   its diameters are measured there as RECIST would (``medmtl.data.lesion_geometry.measure_recist``, edge
   to edge), and its tags (``TAG_NAMES``) name its intensity, pattern, border, tissue, side and size (by the
   measured long axis). A lesion below 10 mm long axis is too small to characterise its border: its
   ``smooth`` and ``lobulated`` tags are uncertain (``Lesion.uncertain_tags``; neither positive nor
   negative, left out of the tag loss and metrics). At 1 mm pixels its bumps are a voxel or less, and the true
   masks' shape tells the two apart at AUC 0.5 to 0.6 there (``benchmarks/lesion_border_oracle.py``); a
   radiologist reads such a lesion as "too small to characterise" rather than smooth.

Splits. Each split has its own seed stream (``numpy.random.SeedSequence`` of (seed, lesion stream, split,
index)) and its own orientations (``SPLIT_ORIENTATIONS``): training volumes are axial or coronal, validation
and test volumes are sagittal, so held-out volumes show an orientation and lesion draws never trained on.
``LesionVolume.meta`` holds ``orientation``, ``split``, ``index``, ``seed``, ``centres`` ((N, 3) int64
voxel indices of the lesion centres) and ``lobulated`` ((N,) bool, the drawn border whether tagged or not); it
holds no non-imaging inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
from monai.transforms import (
    Compose,
    EnsureType,
    RandBiasField,
    RandGaussianNoise,
    RandScaleIntensity,
    RandShiftIntensity,
)

from medmtl.data.lesion_geometry import measure_recist
from medmtl.data.lesion_host import host_volume
from medmtl.data.lesion_record import Lesion, LesionVolume
from medmtl.data.mni import ORIENTATIONS
from medmtl.errors import ConfigError, InputError

TAG_NAMES = (
    "hyperintense",
    "hypointense",
    "homogeneous",
    "rim_enhancing",
    "necrotic_core",
    "smooth",
    "lobulated",
    "grey_matter",
    "white_matter",
    "left",
    "right",
    "small",  # long axis < 10 mm
    "medium",  # 10 mm <= long axis < 20 mm
    "large",  # long axis >= 20 mm
)
_SIZE_LIMITS_MM = (10.0, 20.0)
_BORDER_TAGS = ("smooth", "lobulated")
_MIN_BORDER_MM = 10.0  # long axis below which the border is too small to characterise (uncertain tags)
_PATTERNS = ("homogeneous", "rim_enhancing", "necrotic_core")
_TISSUES = {1: "grey_matter", 2: "white_matter"}  # template label -> tag

SPLIT_ORIENTATIONS = {"train": ("axial", "coronal"), "val": ("sagittal",), "test": ("sagittal",)}
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
_LESION_STREAM = 485  # keeps these seeds apart from the k-space simulator's (seed, stream, ...) sequences
_PLACEMENT_TRIES = 10
_LOBE_SHARPNESS = 20.0  # bump width on the unit sphere is about 1 / sqrt(this) radians
_SPHERE = np.random.default_rng(0).standard_normal((512, 3))  # directions that estimate a radius maximum
_SPHERE /= np.linalg.norm(_SPHERE, axis=1, keepdims=True)


@dataclass(frozen=True)
class LesionSimOptions:
    """How lesion volumes are simulated (the one place for these defaults).

    Args:
        voxel_mm: isotropic voxel size of the host; 1 keeps the template (197 x 233 x 189 before orientation),
            2 gives 99 x 117 x 95, for tests and CPU training.
        slice_mm: slice spacings, one drawn per volume, to resample the host to along k; None keeps
            ``voxel_mm``.
        max_lesions: lesions per volume are drawn from 0 .. max_lesions.
        diameter_mm: (min, max) of the drawn ellipsoid diameters.
        augment: MONAI intensity augmentation of each volume.
    """

    voxel_mm: float = 1.0
    slice_mm: tuple[float, ...] | None = None
    max_lesions: int = 6
    diameter_mm: tuple[float, float] = (3.0, 30.0)
    augment: bool = True

    def __post_init__(self) -> None:
        if not (np.isfinite(self.voxel_mm) and 0.5 <= self.voxel_mm <= 8):
            raise ConfigError("voxel_mm", f"must be in [0.5, 8], got {self.voxel_mm}")
        if self.slice_mm is not None:
            object.__setattr__(self, "slice_mm", tuple(float(s) for s in np.atleast_1d(self.slice_mm)))
            if not self.slice_mm or not all(0.5 <= s <= 10 for s in self.slice_mm):
                raise ConfigError("slice_mm", f"must be spacings in [0.5, 10] mm, got {list(self.slice_mm)}")
        if int(self.max_lesions) != self.max_lesions or self.max_lesions < 0:
            raise ConfigError("max_lesions", f"must be a whole number >= 0, got {self.max_lesions}")
        lo, hi = (float(d) for d in self.diameter_mm)
        if not 0 < lo <= hi:
            raise ConfigError(
                "diameter_mm", f"must be (min, max) with 0 < min <= max, got {self.diameter_mm}"
            )
        object.__setattr__(self, "diameter_mm", (lo, hi))


@dataclass(frozen=True)
class LesionShape:
    """One lesion's geometry on a voxel grid.

    centre: (3,) voxel index (i, j, k) of the centre.
    semi_axes_mm: (3,) ellipsoid semi-axes in mm.
    axes: (3, 3) rotation whose columns are the ellipsoid's axes in (i, j, k) mm space.
    lobe_directions: (L, 3) unit vectors of the radius bumps, in the ellipsoid's frame (L = 0: smooth).
    lobe_heights: (L,) relative heights of the bumps.
    edge_mm: width of the soft (partial-volume) edge.
    """

    centre: tuple[int, int, int]
    semi_axes_mm: np.ndarray
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))
    lobe_directions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    lobe_heights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    edge_mm: float = 1.0

    def radius(self, directions: np.ndarray) -> np.ndarray:
        """Unit directions (..., 3) in the ellipsoid's frame -> border radius (...) in (0, 1] of the unit
        ellipsoid (1 everywhere for a smooth lesion)."""
        if len(self.lobe_heights) == 0:
            return np.ones(directions.shape[:-1])

        def bumps(u: np.ndarray) -> np.ndarray:
            return 1 + np.exp(_LOBE_SHARPNESS * (u @ self.lobe_directions.T - 1)) @ self.lobe_heights

        peak = bumps(np.concatenate([_SPHERE, self.lobe_directions])).max()
        return np.minimum(bumps(directions) / peak, 1.0)


@dataclass(frozen=True)
class LesionAppearance:
    """Intensities of one lesion: ``body``, and the ``rim`` of a rim-enhancing or the ``core`` of a necrotic
    lesion (None when it has none), in the image's units."""

    body: float
    rim: float | None = None
    core: float | None = None

    def profile(self, rho: np.ndarray) -> np.ndarray:
        """Normalised radius (...) (0 centre, 1 border) -> intensity (...)."""
        value = np.full(rho.shape, self.body)
        if self.rim is not None:
            value += (self.rim - self.body) * _smoothstep((rho - 0.6) / 0.25)
        if self.core is not None:
            value = self.core + (value - self.core) * _smoothstep((rho - 0.3) / 0.25)
        return value


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


class _Field(NamedTuple):
    region: tuple[slice, slice, slice]
    rho: np.ndarray  # normalised radius, <= 1 inside the lesion
    weight: np.ndarray  # partial-volume blend weight in [0, 1], 1/2 on the border


def _lesion_field(shape: LesionShape, spacing: np.ndarray, grid: tuple[int, ...]) -> _Field:
    centre = np.asarray(shape.centre)
    reach = np.ceil((shape.semi_axes_mm.max() + shape.edge_mm) / spacing).astype(np.int64)
    lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, grid)
    offsets = np.meshgrid(*(np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)), indexing="ij")
    p = np.stack(offsets, axis=-1) * spacing  # mm from the centre
    q = (p @ shape.axes) / shape.semi_axes_mm  # in the unit ellipsoid's frame
    q_norm = np.linalg.norm(q, axis=-1)
    rho = q_norm / shape.radius(q / np.maximum(q_norm, 1e-12)[..., None])
    with np.errstate(divide="ignore", invalid="ignore"):
        # mm inside the border along the ray from the centre (negative outside)
        depth = np.where(rho > 0, np.linalg.norm(p, axis=-1) * (1 / rho - 1), np.inf)
    weight = np.clip(0.5 + depth / shape.edge_mm, 0, 1)
    return _Field(tuple(slice(a, b) for a, b in zip(lo, hi)), rho, weight)


def _blend(image, instances, f: _Field, appearance: LesionAppearance, label: int) -> None:
    sub = image[f.region]
    sub += (appearance.profile(f.rho) - sub) * f.weight
    instances[f.region][f.rho <= 1] = label


def insert_lesion(
    image: np.ndarray,
    instances: np.ndarray,
    spacing: np.ndarray,
    label: int,
    shape: LesionShape,
    appearance: LesionAppearance,
) -> bool:
    """Blend one lesion into ``image`` (I, J, K) float in place and write ``label`` into ``instances`` (I, J, K)
    where it lies (normalised radius <= 1). Returns False, changing nothing, when its soft edge would touch a
    lesion already in ``instances``. ``spacing``: (3,) mm."""
    if not all(0 <= c < n for c, n in zip(shape.centre, image.shape)):
        raise InputError("centre", f"{tuple(shape.centre)} is outside the grid {image.shape}")
    f = _lesion_field(shape, np.asarray(spacing, np.float64), image.shape)
    if instances[f.region][f.weight > 0].any():
        return False
    _blend(image, instances, f, appearance, label)
    return True


def _size_tag(long_mm: float) -> str:
    small, large = _SIZE_LIMITS_MM
    return "small" if long_mm < small else "large" if long_mm >= large else "medium"


def _draw_shape(rng: np.random.Generator, centre, options: LesionSimOptions, spacing) -> LesionShape:
    lo, hi = options.diameter_mm
    longest = np.exp(rng.uniform(np.log(lo), np.log(hi)))
    diameters = np.maximum(longest * np.array([1.0, *rng.uniform(0.5, 1.0, 2)]), lo)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    axes = q * np.sign(np.diag(r))  # uniform random orientation
    if rng.random() < 0.5:
        num = int(rng.integers(6, 13))
        directions = rng.standard_normal((num, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        heights = rng.uniform(0.25, 0.5, num)
    else:
        directions, heights = np.zeros((0, 3)), np.zeros(0)
    edge = rng.uniform(0.5, 1.0) * float(np.mean(spacing))
    shape = LesionShape(tuple(int(c) for c in centre), diameters / 2, axes, directions, heights, edge)
    if len(heights):
        # The bumps keep a lobulated lesion inside its ellipsoid, so its dents can cut it below the smallest
        # diameter; grow the ellipsoid until no diameter through the centre is below it.
        dent = float(shape.radius(_SPHERE).min())
        shape = replace(shape, semi_axes_mm=np.maximum(diameters, lo / dent) / 2)
    return shape


def _draw_appearance(rng: np.random.Generator, base: float) -> tuple[LesionAppearance, str, str]:
    hyper = rng.random() < 0.5
    pattern = _PATTERNS[int(rng.integers(len(_PATTERNS)))]
    body = base * (rng.uniform(1.3, 1.8) if hyper else rng.uniform(0.3, 0.7))
    rim = max(body, base) * rng.uniform(1.3, 1.6) if pattern == "rim_enhancing" else None
    core = min(body, base) * rng.uniform(0.1, 0.4) if pattern == "necrotic_core" else None
    return LesionAppearance(body, rim, core), "hyperintense" if hyper else "hypointense", pattern


def _augmentation(seed: int) -> Compose:
    steps = Compose(
        [
            RandBiasField(degree=3, coeff_range=(0.0, 0.15), prob=0.5),
            RandScaleIntensity(factors=0.1, prob=0.5),
            RandShiftIntensity(offsets=0.05, prob=0.5),
            RandGaussianNoise(prob=1.0, std=0.03),
            EnsureType(data_type="numpy", dtype=np.float32, track_meta=False),
        ]
    )
    return steps.set_random_state(seed=seed)


def _lesion_record(instances, label: int, f: _Field, spacing, tags: list[str]) -> Lesion:
    inside = instances[f.region] == label
    offset = np.array([s.start for s in f.region])
    nonzero = np.nonzero(inside)
    first = offset + [n.min() for n in nonzero]
    last = offset + [n.max() + 1 for n in nonzero]
    key_local = int(np.argmax(inside.sum(axis=(0, 1))))
    # never empty: the lesion's centre voxel is always inside it, so the slice of largest area has pixels
    long_mm, short_mm, ends = measure_recist(inside[:, :, key_local], spacing[:2])
    names = [*tags, _size_tag(long_mm)]
    uncertain = _BORDER_TAGS if long_mm < _MIN_BORDER_MM else ()
    return Lesion(
        box=np.concatenate([first, last]).astype(np.float64),
        key_slice=int(offset[2] + key_local),
        tags=tuple(sorted(TAG_NAMES.index(n) for n in names if n not in uncertain)),
        uncertain_tags=tuple(sorted(TAG_NAMES.index(n) for n in uncertain)),
        long_axis_mm=long_mm,
        short_axis_mm=short_mm,
        recist=ends + offset[:2],
    )


def simulate_lesion_volume(
    index: int,
    split: str = "train",
    seed: int = 0,
    options: LesionSimOptions | None = None,
    orientation: str | None = None,
) -> LesionVolume:
    """One simulated volume (see the module docstring). ``orientation`` overrides the split's orientations
    (``SPLIT_ORIENTATIONS``), which breaks the held-out rule; meant for previews."""
    if split not in SPLIT_ORIENTATIONS:
        raise ConfigError("split", f"{split!r} is not one of {', '.join(SPLIT_ORIENTATIONS)}")
    if orientation is not None and orientation not in ORIENTATIONS:
        raise ConfigError("orientation", f"{orientation!r} is not one of {', '.join(ORIENTATIONS)}")
    o = options or LesionSimOptions()
    lesion_seq, augment_seq = np.random.SeedSequence(
        [int(seed), _LESION_STREAM, _SPLIT_STREAM[split], int(index)]
    ).spawn(2)
    rng = np.random.default_rng(lesion_seq)
    choices = SPLIT_ORIENTATIONS[split] if orientation is None else (orientation,)
    view = choices[int(rng.integers(len(choices)))]
    slice_mm = None if o.slice_mm is None else o.slice_mm[int(rng.integers(len(o.slice_mm)))]
    image, labels, affine, spacing = host_volume(view, o.voxel_mm, slice_mm)
    instances = np.zeros(image.shape, np.int32)
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in image.shape), indexing="ij", sparse=True)
    x_mm = sum(float(affine[0, a]) * g for a, g in enumerate(grids)) + float(affine[0, 3])
    candidates: dict[tuple[int, bool], np.ndarray] = {}
    lesions, centres, lobulated = [], [], []
    for _ in range(int(rng.integers(o.max_lesions + 1))):
        for _ in range(_PLACEMENT_TRIES):
            tissue, right = int(rng.integers(1, 3)), bool(rng.random() < 0.5)
            if (tissue, right) not in candidates:
                side = x_mm > 0 if right else x_mm < 0
                candidates[tissue, right] = np.flatnonzero((labels == tissue) & side)
            pool = candidates[tissue, right]
            if len(pool) == 0:
                continue
            centre = np.unravel_index(pool[rng.integers(len(pool))], image.shape)
            shape = _draw_shape(rng, centre, o, spacing)
            f = _lesion_field(shape, spacing, image.shape)
            if instances[f.region][f.weight > 0].any():
                continue
            near = image[f.region][(labels[f.region] == tissue) & (instances[f.region] == 0)]
            appearance, intensity, pattern = _draw_appearance(rng, float(np.median(near)))
            label = len(lesions) + 1
            _blend(image, instances, f, appearance, label)
            border = "lobulated" if len(shape.lobe_heights) else "smooth"
            tags = [intensity, pattern, border, _TISSUES[tissue], "right" if right else "left"]
            lesions.append(_lesion_record(instances, label, f, spacing, tags))
            centres.append(shape.centre)
            lobulated.append(border == "lobulated")
            break
    if o.augment:
        image = _augmentation(int(augment_seq.generate_state(1)[0]))(image[None])[0]
    return LesionVolume(
        image=np.ascontiguousarray(image, np.float32),
        spacing=spacing,
        affine=affine,
        instances=instances,
        lesions=tuple(lesions),
        tag_names=TAG_NAMES,
        name=f"mni_lesion_{split}_{int(index):06d}",
        meta={
            "orientation": view,
            "split": split,
            "index": int(index),
            "seed": int(seed),
            "centres": np.array(centres, np.int64).reshape(-1, 3),
            "lobulated": np.array(lobulated, bool),
        },
    )


class SimulatedLesionVolumes(Sequence):
    """``num_volumes`` simulated volumes of one split, made on demand: item ``i`` is
    ``simulate_lesion_volume(i, split, seed, options)`` (about 0.2 s at 2 mm voxels; nothing is cached)."""

    tag_names = TAG_NAMES

    def __init__(
        self, num_volumes: int, split: str = "train", seed: int = 0, options: LesionSimOptions | None = None
    ):
        if split not in SPLIT_ORIENTATIONS:
            raise ConfigError("split", f"{split!r} is not one of {', '.join(SPLIT_ORIENTATIONS)}")
        if int(num_volumes) != num_volumes or num_volumes < 1:
            raise ConfigError("num_volumes", f"must be a whole number >= 1, got {num_volumes}")
        self.num_volumes, self.split, self.seed = int(num_volumes), split, int(seed)
        self.options = options or LesionSimOptions()

    def __len__(self) -> int:
        return self.num_volumes

    def __getitem__(self, index: int) -> LesionVolume:
        if not 0 <= index < self.num_volumes:
            raise IndexError(f"index {index} out of range for {self.num_volumes} volumes")
        return simulate_lesion_volume(index, self.split, self.seed, self.options)
