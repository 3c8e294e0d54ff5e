"""Joint MRI reconstruction and segmentation: ``ReconSegNet``, its output and its losses.

From masked multi-coil k-space, coil maps come from ``SensitivityNet`` (refined ACS estimate), the zero-filled
SENSE image starts ``num_cascades`` unrolled ``Cascade``s (complex U-Net regulariser + data consistency) and a
real U-Net segments magnitudes. The mode picks how the tasks meet:

- ``joint``: after every ``seg_every``-th cascade (and always after the last) the image is segmented, and the
  softmax probabilities enter the following cascades' regulariser as ``num_classes`` extra input channels
  (zero until the first segmentation), the feedback of MTLRS (Karkalousos et al. 2023). Both tasks are
  supervised at every point where they have an output. ``seg_every = 1`` segments after every cascade;
  the default, every third (after cascades 3 and 6 of 6), keeps the feedback at a third of the head's cost,
  so that a joint training step at 8 coils and 256 x 256 takes about 1.2 s on two CPU cores
  (``benchmarks/recon_seg_step.py``).
- ``sequential``: reconstruct, then segment the final magnitude, trained end to end.
- ``recon``: reconstruction only.
- ``seg_zero_filled``: segment the zero-filled RSS image (no reconstruction).
- ``seg_target``: segment the given fully sampled ``target`` (the upper bound).

Intensity: the network divides the k-space by the maximum of the zero-filled RSS image (per sample, in the
graph) and multiplies its images back, so outputs are in the input's units whatever its normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple, get_args

import torch
from torch import nn

from medmtl.cplx import complex_abs, rss
from medmtl.errors import ConfigError, InputError
from medmtl.fft import ifft2c
from medmtl.keys import Keys
from medmtl.losses import dice_ce_loss, ssim_loss
from medmtl.models.cascade import Cascade, DCKind
from medmtl.models.complex_unet import complex_unet
from medmtl.models.data_consistency import adjoint_op, export_terms
from medmtl.models.seg_unet import seg_unet
from medmtl.models.sens_net import SensitivityNet
from medmtl.transforms.spatial import center_crop_or_pad

Mode = Literal["joint", "sequential", "recon", "seg_zero_filled", "seg_target"]
_TASKS: dict[str, tuple[str, ...]] = {
    "joint": ("recon", "seg"),
    "sequential": ("recon", "seg"),
    "recon": ("recon",),
    "seg_zero_filled": ("seg",),
    "seg_target": ("seg",),
}
# Floors for divisions by an intensity: an all-zero input or target gives zeros, not NaN.
_TINY = 1e-12
# Inside the square root of |x|, so that the gradient of the magnitude stays finite at x = 0.
_ABS_EPS = 1e-12


class ReconSegOutput(NamedTuple):
    """What ``ReconSegNet.forward`` returns; fields a mode does not produce are None or empty.

    recon: (B, H, W) magnitude of the final reconstruction, in the input's intensity units.
    recon_complex: (B, H, W, 2) the final complex image, same units.
    recons: per-cascade magnitudes (B, H, W), the last one is ``recon``.
    seg_logits: (B, K, H, W) final segmentation logits.
    seg_logits_all: every segmentation point's logits (joint mode), else ``[seg_logits]``.
    sens_maps: (B, C, H, W, 2) coil maps with sum_c |S_c|^2 = 1.
    """

    recon: torch.Tensor | None
    recon_complex: torch.Tensor | None
    recons: list[torch.Tensor]
    seg_logits: torch.Tensor | None
    seg_logits_all: list[torch.Tensor]
    sens_maps: torch.Tensor | None


def ramp_weights(n: int) -> list[float]:
    """Deep-supervision weights 1, 2, ..., n, normalised to sum to 1: later outputs count more."""
    return [2.0 * (i + 1) / (n * (n + 1)) for i in range(n)]


def input_scale(coil_images: torch.Tensor) -> torch.Tensor:
    """The per-sample intensity unit of the network: the maximum of the zero-filled RSS image.
    coil_images (B, C, H, W, 2) -> (B,), floored so an all-zero input gives zeros, not NaN."""
    return rss(coil_images).amax(dim=(-2, -1)).clamp_min(_TINY)


def recon_loss(recons: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Deep-supervised reconstruction loss: L1 + (1 - SSIM) of each (B, H, W) magnitude in ``recons``
    against ``target`` (B, H, W), both divided by the target's per-sample maximum (the SSIM data range) so
    the loss does not depend on intensity units, weighted by ``ramp_weights``. A target smaller than the
    reconstructions (fastMRI's 320 x 320 ``reconstruction_rss`` of oversampled 640 x 368 k-space) is compared
    with their centre crop."""
    recons = [center_crop_or_pad(r, target.shape[-2:], (-2, -1)) for r in recons]
    data_range = target.amax(dim=(-2, -1), keepdim=True).clamp_min(_TINY)
    target = target / data_range
    terms = [
        (r / data_range - target).abs().mean()
        + ssim_loss((r / data_range).unsqueeze(1), target.unsqueeze(1), 1.0)
        for r in recons
    ]
    return sum(w * t for w, t in zip(ramp_weights(len(terms)), terms, strict=True))


def _check_inputs(kspace: torch.Tensor, mask: torch.Tensor, acs_mask: torch.Tensor) -> None:
    """Raise InputError unless kspace is (B, C, H, W, 2) and both masks (B or 1, 1, 1 or H, W, 1).

    Shape checks only: an exported graph keeps them as guards on its input shapes, not as branches.
    """
    if kspace.dim() != 5 or kspace.shape[-1] != 2:
        raise InputError("kspace", f"expected (B, C, H, W, 2), got {tuple(kspace.shape)}")
    b, _, h, w, _ = kspace.shape
    for name, m in (("mask", mask), ("acs_mask", acs_mask)):
        if (
            m.dim() != 5
            or m.shape[0] not in (1, b)
            or m.shape[1] != 1
            or m.shape[2] not in (1, h)
            or (m.shape[3] != w or m.shape[4] != 1)
        ):
            raise InputError(
                name,
                f"expected ({b}, 1, 1 or {h}, {w}, 1) for k-space {tuple(kspace.shape)}, "
                f"got {tuple(m.shape)}",
            )


class ReconSegNet(nn.Module):
    """Unrolled reconstruction with a segmentation head (see the module docstring for the modes).

    Args:
        mode: how reconstruction and segmentation meet.
        num_cascades: unrolled cascades.
        chans: complex channels of the regulariser U-Net's first level.
        pools: its downsamplings.
        shared_weights: one regulariser for all cascades (each cascade keeps its own DC scalar).
        dc: ``"soft"`` (learned blend with the measurement), ``"gradient"`` (learned gradient step) or ``"cg"``
            (a proximal step with a learned weight, solved by ``cg_iterations`` conjugate-gradient steps).
        cg_iterations: conjugate-gradient steps per cascade of ``dc: cg``.
        refine_chans, refine_pools: a real U-Net that refines the final magnitude (its residual, starting at
            zero), e.g. to remove what the last data-consistency step brings back of the k-space noise outside
            the head; 0 channels: none. The segmentation reads the unrefined magnitude, unless
            ``segment_refined``.
        segment_refined: the last segmentation reads the refined magnitude instead of the last cascade's
            (needs a refiner and a segmentation); the earlier ones, fed back into the cascades, are unchanged.
        sens_chans, sens_pools: the coil-map refiner's U-Net.
        sens_downsample: the factor by which coil maps are refined at lower resolution.
        num_classes: segmentation classes K, background included.
        seg_chans, seg_pools: the segmentation U-Net.
        seg_every: in joint mode, segment after every this many cascades (and after the last).
    """

    def __init__(
        self,
        mode: Mode = "joint",
        num_cascades: int = 6,
        chans: int = 8,
        pools: int = 3,
        shared_weights: bool = False,
        dc: DCKind = "gradient",
        sens_chans: int = 8,
        sens_pools: int = 3,
        sens_downsample: int = 4,
        num_classes: int = 3,
        seg_chans: int = 16,
        seg_pools: int = 3,
        seg_every: int = 3,
        cg_iterations: int = 5,
        refine_chans: int = 0,
        refine_pools: int = 3,
        segment_refined: bool = False,
    ):
        super().__init__()
        if mode not in _TASKS:
            raise ConfigError("mode", f"{mode!r}; choose from {', '.join(_TASKS)}")
        if dc not in get_args(DCKind):
            raise ConfigError("dc", f"{dc!r}; choose from {', '.join(get_args(DCKind))}")
        for name, value in (
            ("num_cascades", num_cascades),
            ("num_classes", num_classes),
            ("seg_every", seg_every),
            ("cg_iterations", cg_iterations),
        ):
            if value < 1:
                raise ConfigError(name, f"must be at least 1, got {value}")
        if segment_refined and (refine_chans < 1 or not {"recon", "seg"} <= set(_TASKS[mode])):
            raise ConfigError(
                "segment_refined",
                f"needs a refiner (refine_chans > 0, got {refine_chans}) and mode joint or sequential, got {mode!r}",
            )
        self.mode = mode
        self.seg_every = seg_every
        self.segment_refined = segment_refined
        if "recon" in self.tasks:
            self.sens_net = SensitivityNet(sens_chans, sens_pools, sens_downsample)
            prior_chans = num_classes if mode == "joint" else 0
            regularisers = [
                complex_unet(1 + prior_chans, 1, chans, pools)
                for _ in range(1 if shared_weights else num_cascades)
            ]
            self.cascades = nn.ModuleList(
                Cascade(regularisers[min(i, len(regularisers) - 1)], dc, cg_iterations)
                for i in range(num_cascades)
            )
            self.refiner = seg_unet(1, 1, refine_chans, refine_pools) if refine_chans > 0 else None
            if self.refiner is not None:
                nn.init.zeros_(self.refiner.head.weight)
                nn.init.zeros_(self.refiner.head.bias)
        if "seg" in self.tasks:
            self.seg_net = seg_unet(1, num_classes, seg_chans, seg_pools)
        self.num_classes = num_classes

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this mode has outputs and losses for."""
        return _TASKS[self.mode]

    def forward(
        self,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        acs_mask: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> ReconSegOutput:
        """kspace (B, C, H, W, 2) masked; mask, acs_mask (B, 1, Hm, W, 1), Hm = 1 or H; target (B, H, W),
        read only by mode ``seg_target``."""
        _check_inputs(kspace, mask, acs_mask)
        measured = kspace * mask
        coil_images = ifft2c(measured)
        scale = input_scale(coil_images)
        if self.mode == "seg_zero_filled":
            return self._seg_only(rss(coil_images) / scale[:, None, None])
        if self.mode == "seg_target":
            if target is None:
                raise InputError("ReconSegNet", "mode 'seg_target' needs the target image")
            return self._seg_only(target / scale[:, None, None])
        return self._reconstruct(measured, coil_images, mask, acs_mask, scale)

    def _seg_only(self, image: torch.Tensor) -> ReconSegOutput:
        logits = self.seg_net(image.unsqueeze(1))
        return ReconSegOutput(None, None, [], logits, [logits], None)

    def _reconstruct(self, measured, coil_images, mask, acs_mask, scale) -> ReconSegOutput:
        s = scale[:, None, None, None, None]
        measured = measured / s
        sens = self.sens_net(measured, acs_mask)
        image = adjoint_op(measured, sens, mask)
        terms = None
        # Dense DFT products, built once for all the cascades' steps: in exported graphs, and for CG steps on
        # Cartesian lines (eager, a W x W product per round trip instead of 2D FFTs).
        kind = self.cascades[0].kind
        if torch.compiler.is_exporting() or (kind == "cg" and mask.shape[2] == 1):
            terms = export_terms(measured, mask, sens, kind == "soft", coil_images / s)
        joint = self.mode == "joint"
        b, _, h, w, _ = measured.shape
        prior = measured.new_zeros(b, self.num_classes, h, w) if joint else None
        recons, logits_all = [], []
        last = len(self.cascades) - 1
        for i, cascade in enumerate(self.cascades):
            image = cascade(image, measured, mask, sens, prior, terms)
            magnitude = complex_abs(image, _ABS_EPS)
            recons.append(magnitude * scale[:, None, None])
            if i == last and self.segment_refined:
                continue  # segmented after the refiner
            if (joint and ((i + 1) % self.seg_every == 0 or i == last)) or (
                self.mode == "sequential" and i == last
            ):
                logits_all.append(self.seg_net(magnitude.unsqueeze(1)))
                if joint:
                    prior = torch.softmax(logits_all[-1], dim=1)
        if self.refiner is not None:
            refined = (magnitude + self.refiner(magnitude.unsqueeze(1)).squeeze(1)).clamp_min(0)
            recons[-1] = refined * scale[:, None, None]
            image = image * (refined / magnitude)[..., None]  # the refined magnitude, the image's phase
            if self.segment_refined:
                logits_all.append(self.seg_net(refined.unsqueeze(1)))
        return ReconSegOutput(
            recon=recons[-1],
            recon_complex=image * s[:, 0],
            recons=recons,
            seg_logits=logits_all[-1] if logits_all else None,
            seg_logits_all=logits_all,
            sens_maps=sens,
        )

    def compute_losses(
        self, out: ReconSegOutput, batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Scalar loss per task of this mode, deep-supervised with ``ramp_weights``.

        recon: L1 + (1 - SSIM) of each cascade's magnitude against ``batch[Keys.TARGET]`` (B, H, W), both
        divided by the target's per-sample maximum (the SSIM data range), so the loss does not depend on the
        intensity units. seg: Dice + cross-entropy of each logits against ``batch[Keys.SEG]`` (B, H, W) int64.
        """
        losses = {}
        if "recon" in self.tasks:
            losses["recon"] = recon_loss(out.recons, batch[Keys.TARGET])
        if "seg" in self.tasks:
            labels = batch[Keys.SEG]
            terms = [dice_ce_loss(logits, labels) for logits in out.seg_logits_all]
            losses["seg"] = sum(w * t for w, t in zip(ramp_weights(len(terms)), terms, strict=True))
        return losses
