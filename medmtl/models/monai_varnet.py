"""MONAI's ``VariationalNetworkModel`` (an end-to-end VarNet) behind ``ReconSegNet``'s interface, so that the same
``MultitaskModule``, data and loss train it as the external reference of the comparison table.

MONAI's network takes one mask for the whole batch and finds the calibration region itself, so samples are run
one at a time (a batch may mix accelerations), and the ACS mask medmtl passes is not used. It returns the RSS
magnitude only; the complex image and coil maps of the output are None. Intensity is normalised exactly as in
``ReconSegNet``: by the maximum of the zero-filled RSS image, undone on the way out.

MONAI's network is used as shipped, including a property that makes it start far from the data:
``CoilSensitivityModel`` divides the real and the imaginary parts of its maps by their own root-sum-of-squares
over the coils, so sum_c |S_c|^2 = 2 rather than 1, and its U-Nets start random rather than as the identity.
At the comparison's recipe (128 x 128, 8 coils, 4x, 4 cascades, default widths) the untrained output is
several times brighter than the target, far worse than zero-filling (README, "Equal-budget comparison").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.apps.reconstruction.networks.nets.coil_sensitivity_model import CoilSensitivityModel
from monai.apps.reconstruction.networks.nets.complex_unet import ComplexUnet
from monai.apps.reconstruction.networks.nets.varnet import VariationalNetworkModel
from torch import nn

from medmtl.errors import InputError
from medmtl.fft import ifft2c
from medmtl.keys import Keys
from medmtl.models.recon_seg import ReconSegOutput, _check_inputs, input_scale, recon_loss


class MonaiVarNet(nn.Module):
    """Reconstruction-only reference: ``VariationalNetworkModel(CoilSensitivityModel, ComplexUnet, cascades)``
    with MONAI's default widths (``features`` of its U-Nets: (32, 32, 64, 128, 256, 32)).

    Args:
        num_cascades: unrolled cascades.
        sens_features, features: the channel tuples of MONAI's coil-map and regulariser U-Nets.
    """

    tasks = ("recon",)

    def __init__(
        self,
        num_cascades: int = 6,
        sens_features: tuple[int, ...] = (32, 32, 64, 128, 256, 32),
        features: tuple[int, ...] = (32, 32, 64, 128, 256, 32),
    ):
        super().__init__()
        self.net = VariationalNetworkModel(
            CoilSensitivityModel(spatial_dims=2, features=tuple(sens_features)),
            ComplexUnet(spatial_dims=2, features=tuple(features)),
            num_cascades=num_cascades,
        )

    def forward(
        self,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        acs_mask: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> ReconSegOutput:
        """kspace (B, C, H, W, 2); mask (B or 1, 1, 1, W, 1) 1D column mask (MONAI supports no other)."""
        _check_inputs(kspace, mask, acs_mask)
        if mask.shape[2] != 1:
            raise InputError(
                "mask", f"MONAI's VarNet takes 1D column masks (B, 1, 1, W, 1), got {tuple(mask.shape)}"
            )
        measured = kspace * mask
        scale = input_scale(ifft2c(measured))
        masks = mask.expand(kspace.shape[0], -1, -1, -1, -1)
        recon = torch.cat(
            [
                self.net(measured[i : i + 1] / scale[i], masks[i : i + 1].bool()) * scale[i]
                for i in range(kspace.shape[0])
            ]
        )
        return ReconSegOutput(recon, None, [recon], None, [], None)

    def compute_losses(
        self, out: ReconSegOutput, batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The same reconstruction loss as ``ReconSegNet`` on the single output."""
        return {"recon": recon_loss(out.recons, batch[Keys.TARGET])}
