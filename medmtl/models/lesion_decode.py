"""The geometry between lesions and ``LesionNet``'s dense maps: target encoding for training and the decoding
of detections, shared by the PyTorch and the ONNX paths (it takes numpy arrays or tensors alike).

Coordinates. Pixel (i, j) covers [i, i + 1) x [j, j + 1); a box (i0, j0, i1, j1) is half-open in those units
(``Keys.BOXES``). Cell (u, v) of a map with output stride s (``STRIDE``) covers [s u, s u + s) x [s v, s v + s),
the layout of ``medmtl.models.lesion_trunk``. A box with centre c = ((i0 + i1) / 2, (j0 + j1) / 2) belongs to
cell floor(c / s), its offset is c / s - floor(c / s) in [0, 1) and its size is (i1 - i0, j1 - j0) in pixels,
regressed as its logarithm. Decoding inverts this exactly: centre s (u + offset), box centre -/+ size / 2.

Heatmap targets (CenterNet, Zhou et al. 2019): 1 at each lesion's cell, an elliptical Gaussian around it with
standard deviations ``GAUSSIAN_ALPHA / 6`` times the box's extents in cells (TTFNet's shape-aware kernel,
Liu et al. 2020, so oblong lesions get oblong peaks), at least ``MIN_SIGMA_CELLS``; overlapping Gaussians take
their maximum. Two lesions whose centres fall in one cell share its peak; both keep their regression targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.box_utils import non_max_suppression

from medmtl.data.lesion_geometry import measure_recist
from medmtl.errors import InputError

if TYPE_CHECKING:
    from medmtl.models.lesion_net import LesionOutput

STRIDE = 4
GAUSSIAN_ALPHA = 0.54
MIN_SIGMA_CELLS = 1 / 6
# Boxes are at least one pixel along each axis, as a box drawn around a mask is.
MIN_SIZE_PX = 1.0
# Log box extents that training reads from the size head (GIoU, the box-pooled tags): boxes of 1 to 4096
# pixels, so an early, wild log size stays a finite box (exp would overflow).
LOG_SIZE_RANGE = (0.0, math.log(4096))


class LesionTargets(NamedTuple):
    """One image's targets on an (h, w) map, N lesions.

    heatmap: (1, h, w) Gaussian peaks in [0, 1]. cells: (N,) int64 flat index u * w + v of each centre cell.
    size: (N, 2) log of the box extents (i, j) in pixels. offset: (N, 2) centre within its cell, in cells.
    boxes: (N, 4) the boxes, float32. tags: (N, T) multi-hot (NaN: uncertain), or None when not given.
    """

    heatmap: torch.Tensor
    cells: torch.Tensor
    size: torch.Tensor
    offset: torch.Tensor
    boxes: torch.Tensor
    tags: torch.Tensor | None


def _as_tensor(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)


def encode_targets(
    boxes: torch.Tensor | np.ndarray,
    height: int,
    width: int,
    tags: torch.Tensor | np.ndarray | None = None,
    stride: int = STRIDE,
) -> LesionTargets:
    """Targets of one image on an (height, width) map of output stride ``stride`` (see the module docstring).

    boxes: (N, 4) (i0, j0, i1, j1) in pixels, inside the image the map covers. tags: (N, T) or None.
    Tensors come back on the boxes' device (float32, cells int64).
    """
    boxes = _as_tensor(boxes).to(torch.float32)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise InputError("boxes", f"expected (N, 4), got {tuple(boxes.shape)}")
    device = boxes.device
    size = (boxes[:, 2:] - boxes[:, :2]).clamp_min(MIN_SIZE_PX)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride
    cell = centre.floor()
    limit = torch.tensor([height - 1, width - 1], dtype=torch.float32, device=device)
    if len(boxes) and ((cell < 0) | (cell > limit)).any():
        raise InputError("boxes", f"a box centre lies outside the {height} x {width} map of stride {stride}")
    sigma = (GAUSSIAN_ALPHA / 6 * size / stride).clamp_min(MIN_SIGMA_CELLS)
    ii = torch.arange(height, dtype=torch.float32, device=device)
    jj = torch.arange(width, dtype=torch.float32, device=device)
    di = (ii[None, :] - cell[:, :1]) / sigma[:, :1]  # (N, h)
    dj = (jj[None, :] - cell[:, 1:]) / sigma[:, 1:]  # (N, w)
    gauss = torch.exp(-0.5 * (di[:, :, None] ** 2 + dj[:, None, :] ** 2))
    heatmap = gauss.amax(dim=0, keepdim=True) if len(boxes) else torch.zeros(1, height, width, device=device)
    if tags is not None:
        tags = _as_tensor(tags).to(device=device, dtype=torch.float32)
        if tags.dim() != 2 or tags.shape[0] != len(boxes):
            raise InputError(
                "tags", f"expected ({len(boxes)}, T) for {len(boxes)} boxes, got {tuple(tags.shape)}"
            )
    return LesionTargets(
        heatmap=heatmap,
        cells=(cell[:, 0] * width + cell[:, 1]).to(torch.int64),
        size=size.log(),
        offset=centre - cell,
        boxes=boxes,
        tags=tags,
    )


def decode_boxes(
    cells: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, width: int, stride: int = STRIDE
):
    """Boxes (N, 4) from flat cell indices (N,) of a map ``width`` cells wide, log sizes (N, 2) and offsets
    (N, 2): the inverse of ``encode_targets``. Differentiable in size and offset."""
    cell = torch.stack((cells // width, cells % width), dim=1).to(offset.dtype)
    centre = (cell + offset) * stride
    half = size.exp() / 2
    return torch.cat((centre - half, centre + half), dim=1)


class Detections(NamedTuple):
    """Detections in one image, K of them, by descending score.

    boxes: (K, 4) float32 (i0, j0, i1, j1) in input pixels, inside the image. scores: (K,) float32 in [0, 1].
    tags: (K, T) float32 tag probabilities (T = 0 without a tag head). masks: (K, H, W) bool instance masks,
    or None without a mask head. long_axis_mm, short_axis_mm: (K,) float32 RECIST axes of each mask (NaN
    without a mask, without a pixel spacing, or for an empty mask).
    """

    boxes: np.ndarray
    scores: np.ndarray
    tags: np.ndarray
    masks: np.ndarray | None
    long_axis_mm: np.ndarray
    short_axis_mm: np.ndarray


def _field(out: Any, name: str) -> torch.Tensor | None:
    value = getattr(out, name, None)
    return None if value is None else _as_tensor(value).detach().to("cpu", torch.float32)


def peak_cells(scores: torch.Tensor, top_k: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Local maxima (3x3) of one (h, w) score map, at least ``threshold``, the ``top_k`` highest:
    (flat cell indices (K,), their scores (K,)), by descending score."""
    pooled = F.max_pool2d(scores[None, None], 3, stride=1, padding=1)[0, 0]
    candidates = torch.where(scores == pooled, scores, torch.full_like(scores, -1.0)).flatten()
    values, cells = candidates.topk(min(top_k, candidates.numel()))
    keep = values >= threshold
    return cells[keep], values[keep]


def decode_detections(
    out: LesionOutput | Any,
    image_size: tuple[int, int] | None = None,
    pixel_spacing: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    refined: bool = True,
    top_k: int = 100,
    score_threshold: float = 0.1,
    nms_iou: float = 0.5,
    stride: int = STRIDE,
) -> list[Detections]:
    """Per-image detections from ``LesionNet``'s dense outputs.

    out: a ``LesionOutput`` or any object with its fields (torch tensors or numpy arrays, e.g. onnxruntime's
        outputs); fields the network does not produce are None or missing.
    image_size: (H, W) of the input; None takes the mask map's size, else the heatmap's times ``stride``.
    pixel_spacing: (2,) or (B, 2) mm along i and j, for the axes; None leaves them NaN.
    refined: score and tag with the refinement's outputs where the network has them.
    top_k: peaks kept per image before NMS. score_threshold: least score kept. nms_iou: NMS overlap limit.

    Steps: sigmoid of the (refined) heatmap; 3x3 peaks; top-k; boxes from the size and offset at each peak,
    clipped to the image; NMS (``monai.data.box_utils.non_max_suppression``); tag probabilities at the peak;
    instance masks = the mask map thresholded at probability 1/2 inside the box's pixels; RECIST axes of each
    mask (``medmtl.data.lesion_geometry.measure_recist``).
    """
    heatmap = _field(out, "heatmap")
    size, offset = _field(out, "size"), _field(out, "offset")
    if heatmap is None or size is None or offset is None:
        raise InputError("decode_detections", "needs the heatmap, size and offset outputs")
    refined_heatmap, tags = _field(out, "refined_heatmap"), _field(out, "tags")
    refined_tags, mask = _field(out, "refined_tags"), _field(out, "mask")
    if refined and refined_heatmap is not None:
        heatmap = refined_heatmap
    if refined and refined_tags is not None:
        tags = refined_tags
    b, _, h, w = heatmap.shape
    if image_size is None:
        image_size = tuple(mask.shape[-2:]) if mask is not None else (h * stride, w * stride)
    height, width = int(image_size[0]), int(image_size[1])
    spacing = None
    if pixel_spacing is not None:
        spacing = _as_tensor(pixel_spacing).to(torch.float64).reshape(-1, 2).expand(b, 2).numpy()
    # exp of a log size beyond the image would only be clipped away; the bound keeps it finite.
    max_log_size = math.log(4 * max(height, width, 1))
    results = []
    for i in range(b):
        cells, scores = peak_cells(heatmap[i, 0].sigmoid(), top_k, score_threshold)
        at = (slice(None), cells // w, cells % w)
        boxes = decode_boxes(cells, size[i][at].T.clamp_max(max_log_size), offset[i][at].T, w, stride)
        boxes = torch.stack(
            (
                boxes[:, 0].clamp(0, height),
                boxes[:, 1].clamp(0, width),
                boxes[:, 2].clamp(0, height),
                boxes[:, 3].clamp(0, width),
            ),
            dim=1,
        )
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        cells, scores, boxes = cells[valid], scores[valid], boxes[valid]
        keep = non_max_suppression(boxes, scores, nms_iou) if len(boxes) else cells.new_zeros(0)
        cells, scores, boxes = cells[keep], scores[keep], boxes[keep]
        tag_probs = (
            tags[i][:, cells // w, cells % w].T.sigmoid() if tags is not None else torch.zeros(len(cells), 0)
        )
        masks = instance_masks(mask[i, 0, :height, :width], boxes) if mask is not None else None
        axes = np.full((len(cells), 2), np.nan, np.float32)
        if masks is not None and spacing is not None:
            for k, m in enumerate(masks):
                if m.any():
                    axes[k] = measure_recist(m, spacing[i])[:2]
        results.append(
            Detections(
                boxes=boxes.numpy().astype(np.float32),
                scores=scores.numpy().astype(np.float32),
                tags=tag_probs.numpy().astype(np.float32),
                masks=masks,
                long_axis_mm=axes[:, 0],
                short_axis_mm=axes[:, 1],
            )
        )
    return results


def instance_masks(logits: torch.Tensor, boxes: torch.Tensor) -> np.ndarray:
    """(K, H, W) bool: the foreground of one (H, W) logit map inside each box's pixels (the pixels it
    touches: rows floor(i0) .. ceil(i1) - 1, and likewise for columns)."""
    foreground = (logits > 0).numpy()
    masks = np.zeros((len(boxes), *foreground.shape), bool)
    lo = boxes[:, :2].floor().to(torch.int64).numpy()
    hi = boxes[:, 2:].ceil().to(torch.int64).numpy()
    for k in range(len(boxes)):
        rows, cols = slice(lo[k, 0], hi[k, 0]), slice(lo[k, 1], hi[k, 1])
        masks[k, rows, cols] = foreground[rows, cols]
    return masks
