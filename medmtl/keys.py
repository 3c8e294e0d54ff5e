"""The one place that names the keys of a sample dict.

A k-space sample (one slice) holds, where present:

====================  ===========================  =====================================================
key                   shape                        meaning
====================  ===========================  =====================================================
``kspace``            (C, H, W, 2) float32         multi-coil k-space, zero off the mask once masked
``mask``              (1, Hm, W, 1) float32        sampling mask, Hm = 1 for 1D masks, H for 2D masks
``target``            (H, W) float32               magnitude of the fully sampled image
``segmentation``      (H, W) int64                 label map (0 = background)
``sens_maps``         (C, H, W, 2) float32         coil sensitivities (true in simulation, else estimated)
``acs_mask``          (1, Hm, W, 1) float32        the auto-calibration region of ``mask``
``image``             (1, H, W) float32            real image before simulation (simulator input)
``label``             (1, H, W) float32            label map before simulation (simulator input)
``scale``             () float32                   intensity scale divided out by normalisation
``acceleration``      () float32                   requested acceleration
``fname``             str                          source file name
``slice_idx``         int                          slice index in the source file
====================  ===========================  =====================================================
"""

from enum import Enum


class Keys(str, Enum):
    KSPACE = "kspace"
    MASK = "mask"
    TARGET = "target"
    SEG = "segmentation"
    SENS = "sens_maps"
    ACS = "acs_mask"
    IMAGE = "image"
    LABEL = "label"
    SCALE = "scale"
    ACCELERATION = "acceleration"
    FNAME = "fname"
    SLICE = "slice_idx"

    def __str__(self) -> str:
        return self.value


# Names of the default tissue classes (index = label), DESIGN.md "Default data".
MNI_CLASSES = ("other", "grey_matter", "white_matter")
