"""MONAI dictionary transforms for k-space: masks, ACS and coil maps, normalisation, crop/pad, augmentation.

Each array transform has its dictionary twin (``...d``) next to it; sample keys are ``medmtl.keys.Keys``.
"""

from medmtl.transforms.acs import EstimateACS, EstimateACSd, acs_mask_from_mask
from medmtl.transforms.augment import image_augmentation
from medmtl.transforms.coils import (
    CoilCombine,
    CoilCombined,
    EstimateCoilSensitivities,
    EstimateCoilSensitivitiesd,
    estimate_sens_maps,
    rss_image,
    sense_image,
)
from medmtl.transforms.intensity import (
    Denormalized,
    NormalizeKSpace,
    NormalizeKSpaced,
    denormalize,
    kspace_scale,
)
from medmtl.transforms.masks import (
    PATTERNS,
    PATTERNS_1D,
    PATTERNS_2D,
    RandKSpaceMask,
    RandKSpaceMaskd,
    make_mask,
    measured_acceleration,
)
from medmtl.transforms.spatial import (
    KSpaceCenterCrop,
    KSpaceCenterCropd,
    KSpaceDivisiblePad,
    KSpaceDivisiblePadd,
    center_crop_or_pad,
)

__all__ = [
    "PATTERNS",
    "PATTERNS_1D",
    "PATTERNS_2D",
    "CoilCombine",
    "CoilCombined",
    "Denormalized",
    "EstimateACS",
    "EstimateACSd",
    "EstimateCoilSensitivities",
    "EstimateCoilSensitivitiesd",
    "KSpaceCenterCrop",
    "KSpaceCenterCropd",
    "KSpaceDivisiblePad",
    "KSpaceDivisiblePadd",
    "NormalizeKSpace",
    "NormalizeKSpaced",
    "RandKSpaceMask",
    "RandKSpaceMaskd",
    "acs_mask_from_mask",
    "center_crop_or_pad",
    "denormalize",
    "estimate_sens_maps",
    "image_augmentation",
    "kspace_scale",
    "make_mask",
    "measured_acceleration",
    "rss_image",
    "sense_image",
]
