"""2.5D context: S slices at a fixed physical interval around a key slice, whatever the volume's slice spacing.

A volume (I, J, K) with slices ``spacing_mm`` apart along k gives, for key slice ``k``, the slices at
positions ``k + (s - S // 2) * interval_mm / spacing_mm`` for ``s = 0 .. S - 1``, linearly interpolated along
k. Output slice ``s`` lies at ``(s - S // 2) * interval_mm`` mm from the key slice: ascending k, the key slice
at the centre ``S // 2``. Positions beyond the volume are clamped to its first or last slice, which is then
repeated, so a key slice near the edge still gets S slices (as DeepLesion-style 2.5D detectors pad).

Grouping the S slices into images (for example 9 slices as 3 three-channel images, slices 0-2, 3-5, 6-8 with
the key slice in the middle of the middle one) is the model's job; this module only fixes the order.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medmtl.errors import ConfigError, InputError
from medmtl.keys import Keys

DEFAULT_NUM_SLICES = 9
DEFAULT_INTERVAL_MM = 2.0


def check_context_layout(num_slices: int, interval_mm: float) -> None:
    """Raise ``ConfigError`` unless ``num_slices`` is odd and >= 1 and ``interval_mm`` is finite and > 0."""
    if int(num_slices) != num_slices or num_slices < 1 or num_slices % 2 == 0:
        raise ConfigError("num_slices", f"must be an odd whole number >= 1, got {num_slices}")
    if not (np.isfinite(interval_mm) and interval_mm > 0):
        raise ConfigError("interval_mm", f"must be a finite number > 0, got {interval_mm}")


def context_positions(
    key_slice: float,
    num_slices_in_volume: int,
    spacing_mm: float,
    num_slices: int = DEFAULT_NUM_SLICES,
    interval_mm: float = DEFAULT_INTERVAL_MM,
) -> np.ndarray:
    """(S,) float64 fractional k indices of the context slices, clamped to ``[0, num_slices_in_volume - 1]``."""
    check_context_layout(num_slices, interval_mm)
    if not (np.isfinite(spacing_mm) and spacing_mm > 0):
        raise InputError("spacing_mm", f"the slice spacing must be a finite number > 0, got {spacing_mm}")
    last = num_slices_in_volume - 1
    if not 0 <= key_slice <= last:
        raise InputError("key_slice", f"{key_slice} is outside the volume's slices 0..{last}")
    offsets = (np.arange(num_slices) - num_slices // 2) * (interval_mm / spacing_mm)
    return np.clip(key_slice + offsets, 0, last)


def sample_context(
    volume: np.ndarray | torch.Tensor,
    spacing_mm: float,
    key_slice: float,
    num_slices: int = DEFAULT_NUM_SLICES,
    interval_mm: float = DEFAULT_INTERVAL_MM,
) -> np.ndarray | torch.Tensor:
    """Volume (I, J, K) with slices ``spacing_mm`` apart -> context (S, I, J), a tensor for a tensor, an array for
    an array; floating volumes keep their dtype, integer ones are promoted with float32.

    ``key_slice`` may be fractional. See the module docstring for the order and the edge rule.
    """
    if volume.ndim != 3:
        raise InputError("volume", f"expected (I, J, K), got shape {tuple(volume.shape)}")
    positions = context_positions(key_slice, volume.shape[2], spacing_mm, num_slices, interval_mm)
    below = np.floor(positions).astype(np.int64)
    above = np.minimum(below + 1, volume.shape[2] - 1)
    weight = positions - below  # of the slice above
    if isinstance(volume, torch.Tensor):
        lo = volume[..., torch.from_numpy(below).to(volume.device)]
        hi = volume[..., torch.from_numpy(above).to(volume.device)]
        w = torch.as_tensor(
            weight, dtype=torch.promote_types(volume.dtype, torch.float32), device=volume.device
        )
        return torch.movedim(lo * (1 - w) + hi * w, -1, 0)
    lo, hi = volume[..., below], volume[..., above]
    mixed = lo * (1 - weight) + hi * weight
    dtype = np.result_type(volume.dtype, np.float32)
    return np.ascontiguousarray(np.moveaxis(mixed, -1, 0).astype(dtype, copy=False))


class SampleContextd(MapTransform):
    """Replace each volume (I, J, K) under ``keys`` by its context (S, I, J) around the key slice.

    The key slice index comes from ``data[slice_key]``. The slice spacing comes from the volume's affine when
    it is a MONAI ``MetaTensor`` (as ``LoadImaged`` gives), otherwise from ``spacing_mm``. The output is a plain
    tensor or array: its third axis is gone, so the volume's affine no longer describes it.

    Args:
        keys: the volume keys.
        slice_key: the key of the key slice index (int or float).
        num_slices: S, odd.
        interval_mm: the distance between neighbouring context slices.
        spacing_mm: the slice spacing of volumes that carry no affine; None requires ``MetaTensor`` volumes.
    """

    def __init__(
        self,
        keys: KeysCollection,
        slice_key: Hashable = Keys.SLICE,
        num_slices: int = DEFAULT_NUM_SLICES,
        interval_mm: float = DEFAULT_INTERVAL_MM,
        spacing_mm: float | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        check_context_layout(num_slices, interval_mm)
        self.slice_key = slice_key
        self.num_slices = int(num_slices)
        self.interval_mm = float(interval_mm)
        self.spacing_mm = spacing_mm

    def _spacing(self, key: Hashable, volume: np.ndarray | torch.Tensor) -> float:
        if isinstance(volume, MetaTensor):  # the length of the affine's k column
            return float(np.linalg.norm(np.asarray(volume.affine, np.float64)[:3, 2]))
        if self.spacing_mm is None:
            raise InputError(str(key), "the volume carries no affine; give SampleContextd a spacing_mm")
        return float(self.spacing_mm)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        key_slice = float(d[self.slice_key])
        for key in self.key_iterator(d):
            volume = d[key]
            spacing = self._spacing(key, volume)
            if isinstance(volume, MetaTensor):
                volume = volume.as_tensor()
            d[key] = sample_context(volume, spacing, key_slice, self.num_slices, self.interval_mm)
        return d
