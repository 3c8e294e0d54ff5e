"""The box-pooled tag head of ``LesionNet``: tags from features averaged over each cell's predicted lesion.

MULAN tags a lesion from RoIAlign features of its whole box. A CenterNet head reads the lesion's centre cell
only, and what tells the tags apart lies elsewhere in the lesion: a necrotic core is the centre against the
rest of the body, a rim the shell against both, a lobulated border the shell against the surroundings, and
the tissue the surroundings. This head keeps every output dense (one tag vector per cell, no RoIs in the
graph, so it exports to ONNX like the other heads), and gives each cell what RoI pooling would give it:

- the cell's box is what the detection head predicts there (centre from the offset, extents from the log
  size; both detached, so the tag loss does not move the boxes);
- three concentric regions of that box: the ``core`` (the box scaled by 1/2), the ``shell`` (the box minus the
  core) and the ``surround`` (the box scaled by 2 minus the box), rounded outwards to the pixels of a
  stride-2 feature map;
- the mean of each region's features, from an integral image: a region sum is four look-ups whatever its
  size (``region_means``), so pooling every cell of a map costs a gather, not a RoI loop;
- a 1x1-convolution MLP over [the cell's own features, the three means] gives the tag logits.

The features pooled are a stride-2 map (the trunk's stride-4 output upsampled and added to its stride-2
features, then a 3x3 convolution), fine enough that a 3 mm lesion still covers a few of its pixels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medmtl.models.lesion_trunk import conv_norm_act, upsample2
from medmtl.models.unet import crop_to

# Region scales of the box: core = box x 1/2, shell = box - core, surround = box x 2 - box.
CORE_SCALE, SURROUND_SCALE = 0.5, 2.0
REGIONS = ("core", "shell", "surround")
# Log box extents pooled over, in input pixels: an early, wild size prediction stays a finite box.
LOG_SIZE_RANGE = (0.0, math.log(4096))


def integral_image(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H + 1, W + 1) float64 table whose entry (y, x) is the sum of the features over
    rows < y and columns < x (a zero first row and column). Float64: a 256 x 256 map sums tens of thousands
    of values, and a small box's sum is a difference of two such totals."""
    table = features.to(torch.float64).cumsum(2).cumsum(3)
    return nn.functional.pad(table, (1, 0, 1, 0))


def box_sums(table: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and areas of boxes from an integral image.

    table: (B, C, H + 1, W + 1) from ``integral_image``. boxes: (B, R, 4, N) float (y0, x0, y1, x1) in the
    feature map's pixels, R box sets of N boxes each; each is rounded outwards to whole pixels, clipped to the
    map and kept at least one pixel wide. Returns sums (B, C, R, N) float64 and areas (B, 1, R, N) float64.
    """
    b, c, hp, wp = table.shape
    height, width = hp - 1, wp - 1
    y0 = boxes[:, :, 0].floor().clamp(0, height - 1)
    x0 = boxes[:, :, 1].floor().clamp(0, width - 1)
    y1 = torch.maximum(boxes[:, :, 2].ceil().clamp(max=height), y0 + 1)
    x1 = torch.maximum(boxes[:, :, 3].ceil().clamp(max=width), x0 + 1)
    r, n = y0.shape[1], y0.shape[2]
    corners = torch.stack(
        (y1 * wp + x1, y0 * wp + x1, y1 * wp + x0, y0 * wp + x0), dim=2
    ).to(torch.int64)  # (B, R, 4, N)
    values = table.flatten(2).gather(2, corners.reshape(b, 1, -1).expand(b, c, -1)).reshape(b, c, r, 4, n)
    sums = values[:, :, :, 0] - values[:, :, :, 1] - values[:, :, :, 2] + values[:, :, :, 3]
    areas = ((y1 - y0) * (x1 - x0)).to(torch.float64)[:, None]
    return sums, areas


def region_means(
    features: torch.Tensor, centres: torch.Tensor, extents: torch.Tensor
) -> torch.Tensor:
    """Mean features over each box's core, shell and surround (see the module docstring).

    features: (B, C, H, W). centres, extents: (B, 2, N) box centres and full extents (i, j) in the feature
    map's pixels. Returns (B, 3 C, N) in the features' dtype: the core, shell and surround means in that
    order. A shell or surround that rounding leaves empty (a box of one or two pixels) has mean zero.
    """
    table = integral_image(features)
    scales = torch.tensor(
        [CORE_SCALE, 1.0, SURROUND_SCALE], dtype=centres.dtype, device=centres.device
    ).reshape(1, 3, 1, 1)
    half = extents[:, None] * scales / 2  # (B, 3, 2, N)
    boxes = torch.cat((centres[:, None] - half, centres[:, None] + half), dim=2)  # (B, 3, 4, N)
    sums, areas = box_sums(table, boxes)
    core, box, outer = sums.unbind(2)
    a_core, a_box, a_outer = areas.unbind(2)
    means = (
        core / a_core,
        (box - core) / (a_box - a_core).clamp_min(1),
        (outer - box) / (a_outer - a_box).clamp_min(1),
    )
    return torch.cat(means, dim=1).to(features.dtype)


class BoxPooledTagHead(nn.Module):
    """Tag logits from the cell's features and the means over its predicted box's regions (module docstring).

    Args:
        chans: channels of the stride-4 map. fine_chans: channels of the stride-2 map.
        num_tags: tags T. pooled_chans: channels of the pooled stride-2 features. hidden: the MLP's width.
    """

    def __init__(self, chans: int, fine_chans: int, num_tags: int, pooled_chans: int = 16, hidden: int = 64):
        super().__init__()
        self.lateral = nn.Conv2d(chans, fine_chans, 1)
        self.fine = conv_norm_act(fine_chans, pooled_chans)
        self.cell = conv_norm_act(chans, chans)
        self.classify = nn.Sequential(
            nn.Conv2d(chans + len(REGIONS) * pooled_chans, hidden, 1),
            nn.SiLU(inplace=True),
            nn.Conv2d(hidden, num_tags, 1),
        )

    def forward(
        self,
        stride4: torch.Tensor,
        stride2: torch.Tensor,
        size: torch.Tensor,
        offset: torch.Tensor,
        stride: int,
    ) -> torch.Tensor:
        """stride4 (B, C, h, w) trunk map; stride2 (B, C2, H2, W2) with H2 = ceil(H / 2); size (B, 2, h, w) log
        box extents in input pixels and offset (B, 2, h, w) centres in cells (the detection head's, on the
        same h x w); ``stride`` of the h x w map. Returns (B, T, h, w) tag logits."""
        b, _, h, w = size.shape
        fine = self.lateral(stride4)
        fine = crop_to(upsample2(fine), stride2.shape[2], stride2.shape[3]) + stride2
        fine = self.fine(fine)
        scale = 2  # input pixels per stride-2 pixel
        rows = torch.arange(h, dtype=size.dtype, device=size.device)[:, None].expand(h, w)
        cols = torch.arange(w, dtype=size.dtype, device=size.device)[None, :].expand(h, w)
        cells = torch.stack((rows, cols))[None]  # (1, 2, h, w)
        centres = (cells + offset.detach()) * (stride / scale)
        extents = size.detach().clamp(*LOG_SIZE_RANGE).exp() / scale
        pooled = region_means(fine, centres.flatten(2), extents.flatten(2)).reshape(b, -1, h, w)
        cell = crop_to(self.cell(stride4), h, w)
        return self.classify(torch.cat((cell, pooled), dim=1))
