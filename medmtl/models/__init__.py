"""Trainable networks: the joint reconstruction-segmentation model and its parts.

``ReconSegNet`` (``recon_seg``) is the model; ``SensitivityNet`` (``sens_net``), ``Cascade`` (``cascade``),
the data-consistency steps (``data_consistency``) and the U-Nets (``unet``, ``complex_unet``, ``seg_unet``)
are its parts.
"""

from medmtl.models.recon_seg import ReconSegNet, ReconSegOutput

__all__ = ["ReconSegNet", "ReconSegOutput"]
