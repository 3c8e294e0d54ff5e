"""Fast, exact losses: SSIM (2D/3D), MS-SSIM, soft Dice and Dice + cross-entropy.

Each has a functional form and an ``nn.Module`` twin, takes a mask for foreground-only evaluation, and
runs fused Triton kernels on CUDA tensors (when Triton is installed) or a pure-PyTorch path anywhere
else; ``backend=`` or ``$MEDMTL_LOSS_BACKEND`` forces either (``medmtl.losses.dispatch``). The kernels
are registered as ``torch.ops.medmtl.*`` custom ops, so ``torch.compile`` and Lightning work.
"""

from medmtl.losses.dice import DiceCELoss, DiceLoss, dice_ce_loss, dice_loss
from medmtl.losses.ms_ssim import MSSSIM, ms_ssim
from medmtl.losses.ssim import SSIM, SSIMLoss, ssim, ssim_loss

__all__ = [
    "MSSSIM",
    "SSIM",
    "DiceCELoss",
    "DiceLoss",
    "SSIMLoss",
    "dice_ce_loss",
    "dice_loss",
    "ms_ssim",
    "ssim",
    "ssim_loss",
]
