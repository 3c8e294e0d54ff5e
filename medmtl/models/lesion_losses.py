"""The losses of ``LesionNet``'s dense heads: CenterNet's focal loss on centre heatmaps, the box regression at
lesion centres, and MULAN's weighted tag BCE with online hard-example mining.

Every loss is a scalar connected to its inputs' graph, also when there is nothing to supervise (no lesion in
the batch), so a balancer that differentiates each task's loss on its own always finds a graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.data.box_utils import box_pair_giou

from medmtl.models.lesion_decode import LOG_SIZE_RANGE, decode_boxes

# CenterNet's exponents: alpha focuses on badly classified cells, beta softens negatives near a centre.
FOCAL_ALPHA = 2.0
FOCAL_BETA = 4.0
# Hardest negative tags kept per positive tag of a lesion (SSD's 3 : 1 balance of negatives to positives).
DEFAULT_NEGATIVE_RATIO = 3.0


def centre_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss of heatmap logits (B, 1, h, w) against Gaussian targets
    (B, 1, h, w) in [0, 1] (1 exactly at the centres), summed and divided by the number of centres (at least 1).
    Computed from log-sigmoids, so saturated logits stay finite."""
    positive = target == 1
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    pos = -((1 - p) ** FOCAL_ALPHA) * log_p
    neg = -((1 - target) ** FOCAL_BETA) * p**FOCAL_ALPHA * log_not_p
    loss = torch.where(positive, pos, neg).sum()
    return loss / positive.sum().clamp_min(1)


def box_loss(
    size: torch.Tensor,
    offset: torch.Tensor,
    cells: torch.Tensor,
    target_size: torch.Tensor,
    target_offset: torch.Tensor,
    target_boxes: torch.Tensor,
    width: int,
    stride: int,
) -> torch.Tensor:
    """Regression at the N lesion centres: L1 of the log sizes (N, 2) + L1 of the offsets (N, 2) +
    (1 - GIoU) of the decoded boxes against ``target_boxes`` (N, 4), each a mean over the lesions; ``cells``
    (N,) are their flat cell indices in a map ``width`` cells wide. The log-size term trains every scale
    equally; GIoU ties the two to the box the decoder builds. N = 0 gives a zero connected to the inputs."""
    if len(cells) == 0:
        return (size.sum() + offset.sum()) * 0
    l1 = (size - target_size).abs().sum(1).mean() + (offset - target_offset).abs().sum(1).mean()
    boxes = decode_boxes(cells, size.clamp(*LOG_SIZE_RANGE), offset, width, stride)
    return l1 + (1 - box_pair_giou(boxes, target_boxes)).mean()


def hard_negative_mask(losses: torch.Tensor, targets: torch.Tensor, negative_ratio: float) -> torch.Tensor:
    """Which entries of (N, T) per-tag losses a hard-example-mined loss keeps: every positive tag of a lesion
    and its ceil(negative_ratio * max(positives, 1)) negatives of highest loss (all of them if fewer). An
    uncertain tag (target NaN) is neither, and never kept."""
    positive = targets > 0.5
    negative = targets <= 0.5  # False for NaN
    keep_neg = torch.ceil(negative_ratio * positive.sum(1).clamp_min(1).to(losses.dtype))  # (N,)
    neg_losses = torch.where(negative, losses.detach(), torch.full_like(losses, -math.inf))
    order = neg_losses.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return positive | ((rank < keep_neg[:, None]) & negative)


def tag_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    negative_ratio: float = DEFAULT_NEGATIVE_RATIO,
) -> torch.Tensor:
    """MULAN's tag loss: binary cross-entropy of (N, T) tag logits against (N, T) multi-hot targets (NaN: an
    uncertain tag, left out), positives weighted by ``pos_weight`` (T,) (rare tags count more; None weighs all
    1), averaged over the entries that ``hard_negative_mask`` keeps. MULAN samples entries in proportion to
    their error; keeping the hardest negatives per lesion is the deterministic form of the same idea, and with
    many tags (DeepLesion's 171, a few positive) it stops the easy negatives from drowning the positives.
    N = 0 gives a connected zero."""
    if len(logits) == 0:
        return logits.sum() * 0
    bce = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), reduction="none")
    if pos_weight is not None:
        bce = bce * torch.where(targets > 0.5, pos_weight.to(bce.dtype), torch.ones_like(bce))
    keep = hard_negative_mask(bce, targets, negative_ratio)
    return torch.where(keep, bce, torch.zeros_like(bce)).sum() / keep.sum().clamp_min(1)
