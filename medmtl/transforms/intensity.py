"""Intensity normalisation of k-space that remembers its scale, so predictions can go back to input units.

The scale is the ``quantile`` (default the 99.5th percentile) of the zero-filled RSS image: a percentile
rather than the maximum, so that one bright artefact or aliased fold does not set the scale of a slice.
k-space and the image-domain keys are divided by it; masks, coil maps and labels are unitless and are not.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Transform

from medmtl.errors import ConfigError, InputError
from medmtl.keys import Keys
from medmtl.transforms.coils import rss_image

DEFAULT_QUANTILE = 0.995
# relative to the maximum, well above the ~1e-7 round-off that a float32 FFT leaves in empty pixels
_ROUND_OFF = 1e-5


def kspace_scale(kspace: torch.Tensor, quantile: float = DEFAULT_QUANTILE) -> torch.Tensor:
    """The ``quantile`` of the zero-filled RSS image of ``kspace`` (C, H, W, 2), as a 0-dim float32 tensor.

    Falls back to the maximum when the quantile is zero up to float32 round-off (the object covers less than
    1 - ``quantile`` of the image and the quantile lands on empty background); raises
    ``InputError`` when the image is all zero or not finite, since nothing can be divided by that.
    """
    image = rss_image(torch.as_tensor(kspace).float()).flatten()
    scale, peak = torch.quantile(image, quantile), image.max()
    if not scale > _ROUND_OFF * peak:
        scale = peak
    if not (scale > 0 and torch.isfinite(scale)):
        raise InputError("kspace", f"cannot normalise: the zero-filled image's maximum is {float(scale)}")
    return scale.to(torch.float32)


def denormalize(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Back to input units: ``x * scale``.

    ``scale`` is 0-dim for one sample or (B,) for a batch whose first dimension is B, as a collated
    ``Keys.SCALE`` is.
    """
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    if scale.ndim == 1:
        scale = scale.reshape(-1, *([1] * (x.ndim - 1)))
    return x * scale


class NormalizeKSpace(Transform):
    """``kspace`` (C, H, W, 2) -> (kspace / scale, scale); see ``kspace_scale``."""

    def __init__(self, quantile: float = DEFAULT_QUANTILE):
        if not 0 < quantile <= 1:
            raise ConfigError("NormalizeKSpace", f"quantile must be in (0, 1], got {quantile}")
        self.quantile = quantile

    def __call__(self, kspace: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        kspace = torch.as_tensor(kspace)
        scale = kspace_scale(kspace, self.quantile)
        return kspace / scale.to(kspace.dtype), scale


class NormalizeKSpaced(MapTransform):
    """Divides every key in ``keys`` by the scale of ``kspace_key`` and stores the scale under ``scale_key``.

    ``keys`` should hold the k-space key and any image-domain intensities (``Keys.TARGET`` by default). A
    sample that already has ``scale_key`` (normalised before) keeps the product, so ``denormalize`` with the
    stored scale always returns to the original units.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = (Keys.KSPACE, Keys.TARGET),
        kspace_key: Hashable = Keys.KSPACE,
        scale_key: Hashable = Keys.SCALE,
        quantile: float = DEFAULT_QUANTILE,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.kspace_key, self.scale_key = kspace_key, scale_key
        self.normalize = NormalizeKSpace(quantile)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.kspace_key not in d:
            raise InputError(
                "NormalizeKSpaced", f"the sample has no {self.kspace_key!s} to take the scale from"
            )
        scale = kspace_scale(d[self.kspace_key], self.normalize.quantile)
        for key in self.key_iterator(d):
            value = torch.as_tensor(d[key])
            d[key] = value / scale.to(value.dtype)
        previous = d.get(self.scale_key)
        d[self.scale_key] = (
            scale if previous is None else torch.as_tensor(previous, dtype=torch.float32) * scale
        )
        return d


class Denormalized(MapTransform):
    """Multiplies every key in ``keys`` (predictions, say) by ``scale_key``: the inverse of ``NormalizeKSpaced``."""

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        scale_key: Hashable = Keys.SCALE,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.scale_key = scale_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = denormalize(torch.as_tensor(d[key]), d[self.scale_key])
        return d
