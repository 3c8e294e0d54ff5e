"""2D lesion samples from annotated volumes: one slice with its 2.5D context, the lesions on it, their tags,
masks and diameters.

Item ``i`` takes volume ``i % len(volumes)`` and draws one slice of it: with probability
``positive_fraction`` a slice that holds lesion voxels, otherwise one that holds none (uniformly among them,
empty slices outside the body included; when a volume has only one kind, that kind). The draw is a pure
function of (seed, epoch, index) for training and of (seed, index) otherwise, seeded like
``medmtl.data.online`` (``item_seed``), so workers, epochs and resumed runs behave as with the k-space data, and
the ``(epoch, index)`` keys of ``EpochSampler`` work unchanged.

A sample holds (``medmtl.keys``; N lesions on the slice, T = ``len(volume.tag_names)``):

- ``Keys.CONTEXT`` (S, I, J) float32: ``medmtl.transforms.context.sample_context`` of the normalised volume.
  Normalisation, one parameter ``window``: None maps the volume's 0.5th and 99.5th percentiles to 0 and 1
  without clipping (MRI, the simulated default); ``(low, high)`` clips to that window of the volume's units and
  maps it to [0, 1] (a CT window in HU, e.g. (-1024, 3071) or DeepLesion's (-160, 240) soft tissue).
- ``Keys.BOXES`` (N, 4) float32: (i0, j0, i1, j1), half-open, from each lesion's mask on this slice, so a
  3D lesion has a box on every slice it touches, not only on its key slice.
- ``Keys.TAGS`` (N, T) float32 multi-hot, NaN where a lesion's tag is uncertain (``Lesion.uncertain_tags``);
  ``Keys.MASKS`` (N, I, J) uint8.
- ``Keys.DIAMETERS`` (N, 2) float32 long and short axis in mm: the lesion's recorded values on its key slice
  (NaN where unknown), elsewhere ``medmtl.data.lesion_geometry.measure_recist`` of its mask on this slice.
- ``Keys.PIXEL_SPACING`` (2,) float32 mm along I and J; ``Keys.SLICE_POSITION`` () float32, k / (K - 1).
- ``Keys.PATIENT_FRAME`` (3, 3) float32: where the slice's pixels are in the patient (``patient_frame``).
- ``Keys.SLICE`` int, the slice index k; ``Keys.FNAME`` str, the volume's name.

Lesions are in instance order (``volume.lesions``). ``collate_lesion_samples`` batches samples of different
sizes and lesion counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from medmtl.data.lesion_geometry import measure_recist
from medmtl.data.lesion_record import LesionVolume
from medmtl.data.online import item_seed
from medmtl.errors import ConfigError, InputError
from medmtl.keys import Keys
from medmtl.transforms.context import (
    DEFAULT_INTERVAL_MM,
    DEFAULT_NUM_SLICES,
    check_context_layout,
    sample_context,
)

_PERCENTILES = (0.5, 99.5)
_TRAIN_STREAM, _EVAL_STREAM = 10, 11  # apart from the k-space simulator's streams 0 and 1


def intensity_range(volume: np.ndarray, window: tuple[float, float] | None = None) -> tuple[float, float]:
    """(low, high) that map to 0 and 1 (see the module docstring); percentiles come from every other voxel
    along each axis, which is close enough and eight times cheaper."""
    if window is not None:
        return float(window[0]), float(window[1])
    low, high = np.percentile(volume[::2, ::2, ::2], _PERCENTILES)
    if not high > low:
        high = low + 1.0  # a constant volume: shift it to 0 and keep its scale
    return float(low), float(high)


def patient_frame(affine: np.ndarray, shape: Sequence[int], k: int) -> np.ndarray:
    """(3, 3) float32: the RAS+ mm geometry of slice ``k`` of a volume of ``shape`` (I, J, K) with voxel ->
    RAS+ ``affine``, relative to the volume's centre voxel ((I - 1) / 2, (J - 1) / 2, (K - 1) / 2).

    Columns: the step of one pixel along i, the step along j, and pixel (0, 0)'s position, so pixel (i, j) of
    the slice sits at ``frame[:, 2] + i * frame[:, 0] + j * frame[:, 1]`` mm from the centre. Positions
    relative to the centre do not depend on where the scanner put its origin, and the hemisphere, for one,
    is the sign of the first (R) coordinate in a head scan centred in its field of view, whatever the slice
    orientation.
    """
    affine = np.asarray(affine, np.float64)
    centre = (np.asarray(shape[:3], np.float64) - 1) / 2
    origin = affine[:3, :3] @ (np.array([0.0, 0.0, float(k)]) - centre)
    return np.stack((affine[:3, 0], affine[:3, 1], origin), axis=1).astype(np.float32)


def normalise(values: np.ndarray, low: float, high: float, clip: bool) -> np.ndarray:
    """float32 ``(values - low) / (high - low)``, clipped to [0, 1] when ``clip`` (a window was given): the
    network's input scaling, shared by training samples and volume inference."""
    values = (values.astype(np.float32) - low) / (high - low)
    return np.clip(values, 0, 1) if clip else values


class LesionSliceDataset(Dataset):
    """Key-slice samples from lesion volumes (see the module docstring).

    Args:
        volumes: the volumes, a list or a lazy sequence such as ``SimulatedLesionVolumes``; a ``RotatingVolumes``
            pool gives each epoch its own volumes.
        split: ``"train"`` draws new slices every epoch; any other split draws the same slice for an index.
        samples_per_epoch: the dataset length; None means one sample per volume.
        positive_fraction: the probability of drawing a slice with lesions.
        num_slices: context slices S (odd).
        interval_mm: the distance between context slices.
        window: intensity window in the volume's units, or None for per-volume percentile scaling.
        seed: base seed.
    """

    def __init__(
        self,
        volumes: Sequence[LesionVolume],
        split: str = "train",
        samples_per_epoch: int | None = None,
        positive_fraction: float = 0.5,
        num_slices: int = DEFAULT_NUM_SLICES,
        interval_mm: float = DEFAULT_INTERVAL_MM,
        window: tuple[float, float] | None = None,
        seed: int = 0,
    ):
        if len(volumes) < 1:
            raise ConfigError("volumes", "need at least one volume")
        if not 0 <= positive_fraction <= 1:
            raise ConfigError("positive_fraction", f"must be in [0, 1], got {positive_fraction}")
        check_context_layout(num_slices, interval_mm)
        if window is not None and not (len(window) == 2 and float(window[0]) < float(window[1])):
            raise ConfigError("window", f"must be (low, high) with low < high, got {window}")
        self.volumes = volumes
        self.split = split
        self.samples_per_epoch = len(volumes) if samples_per_epoch is None else int(samples_per_epoch)
        if self.samples_per_epoch < 1:
            raise ConfigError("samples_per_epoch", f"must be at least 1, got {samples_per_epoch}")
        self.positive_fraction = float(positive_fraction)
        self.num_slices, self.interval_mm = int(num_slices), float(interval_mm)
        self.window = window
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _draw_slice(self, volume: LesionVolume, rng: np.random.Generator) -> int:
        has_lesion = (volume.instances != 0).any(axis=(0, 1))
        positive, negative = np.flatnonzero(has_lesion), np.flatnonzero(~has_lesion)
        want_positive = rng.random() < self.positive_fraction
        pool = positive if (want_positive and len(positive)) or not len(negative) else negative
        return int(pool[rng.integers(len(pool))])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        if self.split == "train":
            seed = item_seed(self.seed, _TRAIN_STREAM, epoch, index)
        else:
            seed = item_seed(self.seed, _EVAL_STREAM, index)
        slot = index % len(self.volumes)
        rotating = getattr(self.volumes, "for_epoch", None)  # RotatingVolumes: the pool changes by epoch
        volume = rotating(epoch, slot) if rotating is not None else self.volumes[slot]
        if volume.image.ndim != 3 or volume.instances.shape != volume.image.shape:
            raise InputError(
                volume.name, f"image {volume.image.shape} and instances {volume.instances.shape}"
            )
        k = self._draw_slice(volume, np.random.default_rng(seed))
        return slice_sample(volume, k, self.num_slices, self.interval_mm, self.window)


class KeySliceDataset(Dataset):
    """The evaluation images of lesion volumes: the key slice of every lesion (the DeepLesion protocol, where
    every evaluated image is a key slice), and the middle slice of each volume without lesions (so that
    false positives on lesion-free volumes count too). Items follow ``slice_sample``; a key slice shared by
    two lesions is one image. Volumes are listed at construction (every one is read once).

    Args: as ``LesionSliceDataset``'s ``volumes``, ``num_slices``, ``interval_mm`` and ``window``.
    """

    def __init__(
        self,
        volumes: Sequence[LesionVolume],
        num_slices: int = DEFAULT_NUM_SLICES,
        interval_mm: float = DEFAULT_INTERVAL_MM,
        window: tuple[float, float] | None = None,
    ):
        if len(volumes) < 1:
            raise ConfigError("volumes", "need at least one volume")
        check_context_layout(num_slices, interval_mm)
        self.volumes = volumes
        self.num_slices, self.interval_mm, self.window = int(num_slices), float(interval_mm), window
        self.items: list[tuple[int, int]] = []
        for v in range(len(volumes)):
            volume = volumes[v]
            keys = sorted({lesion.key_slice for lesion in volume.lesions})
            self.items += [(v, k) for k in keys] or [(v, volume.image.shape[2] // 2)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = key[1] if isinstance(key, tuple) else key
        v, k = self.items[index]
        return slice_sample(self.volumes[v], k, self.num_slices, self.interval_mm, self.window)


def slice_sample(
    volume: LesionVolume,
    k: int,
    num_slices: int = DEFAULT_NUM_SLICES,
    interval_mm: float = DEFAULT_INTERVAL_MM,
    window: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The sample of slice ``k`` of ``volume`` (see the module docstring)."""
    low, high = intensity_range(volume.image, window)
    context = sample_context(volume.image, float(volume.spacing[2]), k, num_slices, interval_mm)
    context = normalise(context, low, high, clip=window is not None)
    plane = volume.instances[:, :, k]
    labels = [n for n in np.unique(plane) if n != 0]
    num_tags = len(volume.tag_names)
    boxes = np.zeros((len(labels), 4), np.float32)
    tags = np.zeros((len(labels), num_tags), np.float32)
    masks = np.zeros((len(labels), *plane.shape), np.uint8)
    diameters = np.zeros((len(labels), 2), np.float32)
    for row, label in enumerate(labels):
        lesion = volume.lesions[label - 1]
        mask = plane == label
        ii, jj = np.nonzero(mask)
        boxes[row] = (ii.min(), jj.min(), ii.max() + 1, jj.max() + 1)
        tags[row, list(lesion.tags)] = 1
        tags[row, list(lesion.uncertain_tags)] = np.nan
        masks[row] = mask
        if lesion.key_slice == k:
            diameters[row] = (lesion.long_axis_mm, lesion.short_axis_mm)
        else:
            diameters[row] = measure_recist(mask, volume.spacing[:2])[:2]  # a label of the plane: not empty
    last = volume.image.shape[2] - 1
    return {
        Keys.CONTEXT: torch.from_numpy(np.ascontiguousarray(context, np.float32)),
        Keys.BOXES: torch.from_numpy(boxes),
        Keys.TAGS: torch.from_numpy(tags),
        Keys.MASKS: torch.from_numpy(masks),
        Keys.DIAMETERS: torch.from_numpy(diameters),
        Keys.PIXEL_SPACING: torch.tensor(volume.spacing[:2], dtype=torch.float32),
        Keys.SLICE_POSITION: torch.tensor(k / last if last else 0.0, dtype=torch.float32),
        Keys.PATIENT_FRAME: torch.from_numpy(patient_frame(volume.affine, volume.image.shape, k)),
        Keys.SLICE: int(k),
        Keys.FNAME: volume.name,
    }


_PER_SAMPLE = (Keys.BOXES, Keys.TAGS, Keys.DIAMETERS, Keys.MASKS, Keys.SLICE, Keys.FNAME)


def _pad_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad the last two axes at their ends, so pixel (i, j) and every box stay where they were."""
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]))


def collate_lesion_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Lesion samples -> a batch. ``Keys.CONTEXT`` becomes (B, S, H, W), zero-padded at the bottom and right to
    the largest slice of the batch (boxes stay valid; padding is 0 in normalised units); ``Keys.MASKS`` is a
    list of (N_b, H, W) padded alike; boxes, tags, diameters, slice indices and names are lists of the
    per-sample values; every other key is stacked (``PIXEL_SPACING`` (B, 2), ``SLICE_POSITION`` (B,),
    ``PATIENT_FRAME`` (B, 3, 3))."""
    height = max(s[Keys.CONTEXT].shape[-2] for s in samples)
    width = max(s[Keys.CONTEXT].shape[-1] for s in samples)
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == Keys.CONTEXT:
            batch[key] = torch.stack([_pad_to(v, height, width) for v in values])
        elif key == Keys.MASKS:
            batch[key] = [_pad_to(v, height, width) for v in values]
        elif key in _PER_SAMPLE:
            batch[key] = list(values)
        else:
            batch[key] = default_collate(values)
    return batch
