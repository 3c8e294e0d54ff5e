"""Augmentation of the real image (and its label map) before k-space simulation, from MONAI's transforms.

Spatial transforms move image and labels together, with nearest-neighbour interpolation for labels so label
values stay label values; intensity transforms (gamma, bias field) touch the image keys only. Everything
outside the rotated or deformed field of view is zero, the value of empty space in MRI.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

from monai.transforms import (
    Compose,
    EnsureTyped,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandFlipd,
    RandRotated,
)

from medmtl.errors import ConfigError
from medmtl.keys import Keys


def image_augmentation(
    keys: Sequence[Hashable] = (Keys.IMAGE, Keys.LABEL),
    label_keys: Sequence[Hashable] = (Keys.LABEL,),
    prob: float = 0.3,
    flip_axes: Sequence[int] = (0, 1),
    rotate_degrees: float = 10.0,
    elastic_spacing: tuple[float, float] = (32.0, 32.0),
    elastic_magnitude: tuple[float, float] = (0.0, 2.0),
    gamma: tuple[float, float] = (0.7, 1.5),
    bias_coeff: tuple[float, float] = (0.0, 0.3),
) -> Compose:
    """A seeded-through-MONAI ``Compose`` of dictionary transforms on (1, H, W) images and label maps.

    Args:
        keys: every key to move spatially; the ones not in ``label_keys`` also get the intensity changes.
        label_keys: the keys among ``keys`` that hold labels: nearest interpolation, never intensity-changed.
        prob: the probability of each transform, applied independently.
        flip_axes: spatial axes (0 = H, 1 = W) each flipped with ``prob``; () for none.
        rotate_degrees: rotation angle drawn from [-rotate_degrees, rotate_degrees].
        elastic_spacing: control-point spacing of the elastic deformation, in pixels. MONAI interpolates its
            control grid so that pixels move by up to about 5 % of the spacing even at zero magnitude.
        elastic_magnitude: range of its displacement scale, in pixels (standard deviation at control points).
        gamma: range of the contrast gamma, intensity -> intensity ** gamma over the image's range.
        bias_coeff: range of the coefficients of MONAI's degree-3 log-polynomial bias field.

    Returns:
        ``Compose``; call ``set_random_state(seed)`` on it for reproducible draws. Outputs are plain tensors.
    """
    keys, label_keys = tuple(keys), tuple(label_keys)
    if not set(label_keys) <= set(keys):
        raise ConfigError("image_augmentation", f"label_keys {label_keys} must be among keys {keys}")
    if not 0 <= prob <= 1:
        raise ConfigError("image_augmentation", f"prob must be in [0, 1], got {prob}")
    image_keys = tuple(k for k in keys if k not in label_keys)
    modes = tuple("nearest" if k in label_keys else "bilinear" for k in keys)
    angle = math.radians(rotate_degrees)
    spatial = [RandFlipd(keys, prob=prob, spatial_axis=axis) for axis in flip_axes] + [
        RandRotated(keys, range_x=angle, prob=prob, keep_size=True, mode=modes, padding_mode="zeros"),
        Rand2DElasticd(
            keys,
            spacing=elastic_spacing,
            magnitude_range=elastic_magnitude,
            prob=prob,
            mode=modes,
            padding_mode="zeros",
        ),
    ]
    intensity = (
        [
            RandAdjustContrastd(image_keys, prob=prob, gamma=gamma),
            RandBiasFieldd(image_keys, coeff_range=bias_coeff, prob=prob),
        ]
        if image_keys
        else []
    )
    # MetaTensors would carry the transform trace into the simulator and the collated batch; drop it.
    return Compose([*spatial, *intensity, EnsureTyped(keys, data_type="tensor", track_meta=False)])
