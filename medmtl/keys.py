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

A lesion sample (one key slice with its 2.5D context, N lesions on that slice, T tags) holds:

====================  ===========================  =====================================================
``context``           (S, H, W) float32            S neighbouring slices at a fixed interval, centre = key
``boxes``             (N, 4) float32               (i0, j0, i1, j1) half-open pixel boxes on the key slice
``tags``              (N, T) float32               multi-hot tag labels
``instance_masks``    (N, H, W) uint8              one mask per lesion on the key slice
``diameters``         (N, 2) float32               long and short axis in mm (NaN when unknown)
``pixel_spacing``     (2,) float32                 in-plane pixel size in mm along H and W
``slice_position``    () float32                   key slice position in the volume, 0 = first, 1 = last
``patient_frame``     (3, 3) float32               RAS+ mm of the key slice's pixel grid: columns = step
                                                   along H, step along W, pixel (0, 0) minus the
                                                   volume's centre (``lesion_dataset.patient_frame``)
``clinical``          (E,) float32                 non-imaging inputs of the score refinement (e.g. age, sex)
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
    CONTEXT = "context"
    BOXES = "boxes"
    TAGS = "tags"
    MASKS = "instance_masks"
    DIAMETERS = "diameters"
    PIXEL_SPACING = "pixel_spacing"
    SLICE_POSITION = "slice_position"
    PATIENT_FRAME = "patient_frame"
    CLINICAL = "clinical"

    def __str__(self) -> str:
        return self.value


# Names of the default tissue classes (index = label), DESIGN.md "Default data".
MNI_CLASSES = ("other", "grey_matter", "white_matter")
