"""Evaluation metrics: reconstruction (SSIM, PSNR, NMSE per slice) and segmentation (Dice, HD95 per class)."""

from medmtl.metrics.recon import ReconMetrics, nmse, psnr, ssim
from medmtl.metrics.seg import SegMetrics, dice_hd95

__all__ = ["ReconMetrics", "SegMetrics", "dice_hd95", "nmse", "psnr", "ssim"]
