"""The box-pooled tag head of ``LesionNet``: tags from features averaged over each cell's predicted lesion.

MULAN tags a lesion from RoIAlign features of its whole box. A CenterNet head reads the lesion's centre cell
only, and what tells the tags apart lies elsewhere in the lesion: a necrotic core is the centre against the
rest of the body, a rim the shell against both, a lobulated border the shell against the surroundings, and
the tissue the surroundings. This head keeps every output dense (one tag vector per cell, no RoIs in the
graph, so it exports to ONNX like the other heads), and gives each cell what RoI pooling would give it:

- the cell's box is what the detection head predicts there (centre from the offset, extents from the log
  size; both detached, so the tag loss does not move the boxes);
- three concentric regions of that box: the ``core`` (the box scaled by 1/2), the ``shell`` (the box minus the
  core) and the ``surround`` (the box scaled by 2 minus the box), on a stride-2 feature map;
- the exact mean of the features over each region, each pixel weighted by the fraction of it the region
  covers, from an integral image (``region_means``): a region's integral is four bilinear look-ups whatever
  its size, so pooling every cell of a map costs a gather, not a RoI loop, and the means vary continuously
  with the box (no jumps where a rounded edge would cross a pixel, which would also make the PyTorch and
  onnxruntime outputs differ where their ``exp`` differ in the last bit);
- with ``contour=True``, the angular spectrum of the features on the box's inscribed ellipse and three
  concentric ones (``contour_spectrum``): a few channels are sampled at 16 angles on each ring, and the
  magnitudes of their Fourier coefficients over the angle say how the lesion's outline departs from an
  ellipse whatever its rotation (order 1: off centre, 2: elongated along another axis than the box's,
  3 and above: lobes), which the region means average away;
- with ``outline=True``, the same spectra of the key image itself (the centre slice of the input context) at
  full resolution, on ``OUTLINE_RADII`` rings at ``OUTLINE_ANGLES`` angles: the features above are at 2 mm,
  where a lobe of a 12 mm lesion is a pixel; the input still has it (``benchmarks/lesion_border_probe.py``:
  a linear probe on similar spectra of the key image, 4 rings about the true boxes, separates lobulated from
  smooth borders at AUC 0.945);
- a 1x1-convolution MLP over [the cell's own features, the three means (, the spectra)] gives the tag
  logits.

The pooled features are a stride-2 map (the trunk's stride-4 output upsampled and added to its stride-2
features, then a 3x3 convolution), so a 3 mm lesion at 1 mm pixels still spans 1.5 of its pixels.
The box geometry is computed in float32 and the integral image in float64 whatever the network's dtype: in
float16 a flat pixel index above 2048 would round, and a large map's total would swamp a small box's sum.
"""

from __future__ import annotations

import torch
from torch import nn

from medmtl.models.lesion_decode import LOG_SIZE_RANGE, STRIDE
from medmtl.models.lesion_trunk import conv_norm_act, upsample2
from medmtl.models.unet import crop_to

# Region scales of the box: core = box x 1/2, shell = box - core, surround = box x 2 - box.
CORE_SCALE, SURROUND_SCALE = 0.5, 2.0
REGIONS = ("core", "shell", "surround")
DEFAULT_POOLED_CHANS = 16
# A region whose area on the map is below this (in pixels; clipped away at the border) has mean zero.
_MIN_AREA = 1e-3
# Contour spectra: rings at these multiples of the box's inscribed ellipse, sampled at CONTOUR_ANGLES angles,
# CONTOUR_CHANS channels, Fourier orders 1 .. CONTOUR_ORDERS (and the signed mean, order 0).
CONTOUR_RADII = (0.5, 0.75, 1.0, 1.25)
CONTOUR_ANGLES = 16
CONTOUR_CHANS = 4
CONTOUR_ORDERS = 6
# Outline spectra of the key image (``outline=True``): rings and angles at full resolution.
OUTLINE_RADII = (0.75, 0.9, 1.0, 1.1, 1.25)
OUTLINE_ANGLES = 32
_MAGNITUDE_EPS = 1e-6  # keeps the gradient of a magnitude finite at zero


def integral_image(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H + 1, W + 1) float64 table whose entry (y, x) is the sum of the features over
    rows < y and columns < x (a zero first row and column). Float64: a 256 x 256 map sums tens of thousands
    of values, and a small box's sum is a difference of such totals."""
    table = features.to(torch.float64).cumsum(2).cumsum(3)
    return nn.functional.pad(table, (1, 0, 1, 0))


def box_sums(table: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrals and areas of boxes over the piecewise-constant map an integral image sums.

    Pixel (y, x) covers [y, y + 1) x [x, x + 1). The integral of the map over [0, y) x [0, x) is the bilinear
    interpolation of the table at (y, x), exactly, so a box's integral is four such look-ups: every pixel it
    covers in part counts with the fraction covered.

    table: (B, C, H + 1, W + 1) from ``integral_image``. boxes: (B, R, 4, N) float (y0, x0, y1, x1) in the
    map's pixels, R box sets of N boxes each, clipped to the map (NaN reads as 0). Returns sums (B, C, R, N)
    and areas (B, 1, R, N) of the clipped boxes, both float64.
    """
    b, c, hp, wp = table.shape
    height, width = hp - 1, wp - 1
    boxes = torch.nan_to_num(boxes.to(torch.float64))
    ys = boxes[:, :, 0::2].clamp(0, height)  # (B, R, 2, N): y0, y1
    xs = boxes[:, :, 1::2].clamp(0, width)
    r, n = ys.shape[1], ys.shape[3]
    y_low, x_low = ys.floor().clamp(max=height - 1), xs.floor().clamp(max=width - 1)
    step = torch.arange(2, device=table.device)
    # (B, R, 2 edges, 2 neighbours, N): the table rows (columns) either side of each edge and their weights,
    # signed so that the four corners combine as I(y1, x1) - I(y0, x1) - I(y1, x0) + I(y0, x0).
    rows = y_low.to(torch.int64)[:, :, :, None] + step[:, None]
    cols = x_low.to(torch.int64)[:, :, :, None] + step[:, None]
    sign = torch.tensor([-1.0, 1.0], dtype=torch.float64, device=table.device)[:, None, None]
    y_frac, x_frac = (ys - y_low)[:, :, :, None], (xs - x_low)[:, :, :, None]
    w_rows = torch.cat((1 - y_frac, y_frac), dim=3) * sign
    w_cols = torch.cat((1 - x_frac, x_frac), dim=3) * sign
    index = rows[:, :, :, :, None, None] * wp + cols[:, :, None, None]  # (B, R, 2, 2, 2, 2, N)
    weight = w_rows[:, :, :, :, None, None] * w_cols[:, :, None, None]
    values = table.flatten(2).gather(2, index.reshape(b, 1, -1).expand(b, c, -1))
    sums = (values.reshape(b, c, r, 16, n) * weight.reshape(b, 1, r, 16, n)).sum(3)
    areas = ((ys[:, :, 1] - ys[:, :, 0]) * (xs[:, :, 1] - xs[:, :, 0]))[:, None]
    return sums, areas


def region_means(features: torch.Tensor, centres: torch.Tensor, extents: torch.Tensor) -> torch.Tensor:
    """Mean features over each box's core, shell and surround (see the module docstring), each pixel weighted
    by the fraction of it inside the region (``box_sums``); the parts of a region off the map do not count.

    features: (B, C, H, W). centres, extents: (B, 2, N) box centres and full extents (i, j) in the map's
    pixels (pixel p covers [p, p + 1), so centre 3.5 is the middle of pixel 3). Returns (B, 3 C, N) in the
    features' dtype: the core, shell and surround means in that order. A region with (almost) no area on the
    map has mean zero.
    """
    table = integral_image(features)
    centres, extents = centres.to(torch.float64), extents.to(torch.float64)
    scales = torch.tensor([CORE_SCALE, 1.0, SURROUND_SCALE], dtype=torch.float64, device=centres.device)
    half = extents[:, None] * scales[None, :, None, None] / 2  # (B, 3, 2, N)
    boxes = torch.cat((centres[:, None] - half, centres[:, None] + half), dim=2)  # (B, 3, 4, N)
    sums, areas = box_sums(table, boxes)
    core, box, outer = sums.unbind(2)
    a_core, a_box, a_outer = areas.unbind(2)
    means = (
        core / a_core.clamp_min(_MIN_AREA),
        (box - core) / (a_box - a_core).clamp_min(_MIN_AREA),
        (outer - box) / (a_outer - a_box).clamp_min(_MIN_AREA),
    )
    return torch.cat(means, dim=1).to(features.dtype)


def contour_spectrum(
    features: torch.Tensor,
    centres: torch.Tensor,
    extents: torch.Tensor,
    radii: tuple[float, ...] = CONTOUR_RADII,
    angles: int = CONTOUR_ANGLES,
    orders: int = CONTOUR_ORDERS,
) -> torch.Tensor:
    """The angular spectrum of ``features`` on rings around each box (module docstring).

    features: (B, E, H, W). centres, extents: (B, 2, N) as ``region_means``. Ring r of a box is the ellipse
    of semi-axes r x extents / 2 about its centre; it is sampled bilinearly (``grid_sample``, zero off the
    map) at ``angles`` evenly spaced angles. Returns (B, E R (orders + 1), N) in the features' dtype, per
    channel and ring: the mean over the angles, then the magnitudes of the Fourier coefficients of orders
    1 .. orders (each invariant to a rotation of the outline by a multiple of 2 pi / angles; a circle about
    the centre gives sqrt(_MAGNITUDE_EPS) = 1e-3).
    """
    b, e, height, width = features.shape
    n = centres.shape[-1]
    device = features.device
    theta = torch.arange(angles, dtype=torch.float32, device=device) * (2 * torch.pi / angles)
    ring = (
        torch.tensor(radii, dtype=torch.float32, device=device)[:, None]
        / 2
        * torch.stack((theta.sin(), theta.cos()))[:, None]
    )  # (2, R, K): (i, j) offsets per unit extent
    points = centres.float()[:, :, :, None, None] + extents.float()[:, :, :, None, None] * ring[None, :, None]
    size = torch.tensor([height, width], dtype=torch.float32, device=device)[None, :, None, None, None]
    grid = (points * 2 / size - 1).flip(1)  # (B, 2, N, R, K) as (x, y) in [-1, 1] (align_corners=False)
    grid = grid.permute(0, 2, 3, 4, 1).reshape(b, 1, -1, 2)
    samples = nn.functional.grid_sample(features.float(), grid, align_corners=False)
    samples = samples.reshape(b, e, n, len(radii), angles)
    order = torch.arange(1, orders + 1, dtype=torch.float32, device=device)[:, None] * theta  # (F, K)
    basis = torch.cat((order.cos(), order.sin())).T / angles  # (K, 2F)
    re, im = (samples @ basis).chunk(2, dim=-1)
    magnitude = (re * re + im * im + _MAGNITUDE_EPS).sqrt()
    spectrum = torch.cat((samples.mean(-1, keepdim=True), magnitude), dim=-1)  # (B, E, N, R, F + 1)
    return spectrum.permute(0, 1, 3, 4, 2).reshape(b, -1, n).to(features.dtype)


class BoxPooledTagHead(nn.Module):
    """Tag logits from the cell's features and the means over its predicted box's regions (module docstring).

    Args:
        chans: channels of the stride-4 map. fine_chans: channels of the stride-2 map.
        num_tags: tags T. pooled_chans: channels of the pooled stride-2 features. hidden: the MLP's width.
        contour: also read the contour spectra (``contour_spectrum`` of ``CONTOUR_CHANS`` channels made from
            the pooled features by a 1x1 convolution).
        outline: also read the key image's spectra at full resolution (``OUTLINE_RADII``, ``OUTLINE_ANGLES``);
            ``forward`` then needs ``image``. Their inputs to the MLP start at zero weight, so a head
            fine-tuned from a box-pooled one (``MultitaskModule``'s ``init_weights``) starts as that head.
    """

    def __init__(
        self,
        chans: int,
        fine_chans: int,
        num_tags: int,
        pooled_chans: int = DEFAULT_POOLED_CHANS,
        hidden: int = 64,
        contour: bool = False,
        outline: bool = False,
    ):
        super().__init__()
        self.lateral = nn.Conv2d(chans, fine_chans, 1)
        self.fine = conv_norm_act(fine_chans, pooled_chans)
        self.cell = conv_norm_act(chans, chans)
        self.contour = nn.Conv2d(pooled_chans, CONTOUR_CHANS, 1) if contour else None
        self.outline = outline
        spectra = CONTOUR_CHANS * len(CONTOUR_RADII) * (CONTOUR_ORDERS + 1) if contour else 0
        outlines = len(OUTLINE_RADII) * (CONTOUR_ORDERS + 1) if outline else 0
        base = chans + len(REGIONS) * pooled_chans + spectra
        self.classify = nn.Sequential(
            nn.Conv2d(base + outlines, hidden, 1),
            nn.SiLU(inplace=True),
            nn.Conv2d(hidden, num_tags, 1),
        )
        if outline:
            with torch.no_grad():
                self.classify[0].weight[:, base:] = 0

    def pooled(
        self,
        stride4: torch.Tensor,
        stride2: torch.Tensor,
        size: torch.Tensor,
        offset: torch.Tensor,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The MLP's input (B, C + 3 P (+ S) (+ O), h, w): the cell's features, its three region means (and
        its contour spectra, S = ``CONTOUR_CHANS`` x rings x (orders + 1); and the outline spectra of
        ``image``, O = ``OUTLINE_RADII`` x (orders + 1), with the magnitudes as logs).

        stride4: (B, C, h', w') trunk map, h' >= h (padded maps are cropped). stride2: (B, C2, ceil(H / 2),
        ceil(W / 2)) for an H x W input, h = ceil(H / 4). size: (B, 2, h, w) log box extents in input pixels
        and offset: (B, 2, h, w) box centres within their cells, in cells: the detection head's outputs.
        image: (B, 1, H, W) the key image, read with ``outline``.
        """
        b, _, h, w = size.shape
        fine = crop_to(upsample2(self.lateral(stride4)), stride2.shape[2], stride2.shape[3]) + stride2
        fine = self.fine(fine)
        scale = 2  # input pixels per stride-2 pixel
        rows = torch.arange(h, dtype=torch.float32, device=size.device)[:, None].expand(h, w)
        cols = torch.arange(w, dtype=torch.float32, device=size.device)[None, :].expand(h, w)
        cells = torch.stack((rows, cols))[None]  # (1, 2, h, w)
        centres = (cells + offset.detach().float()) * (STRIDE / scale)
        extents = size.detach().float().clamp(*LOG_SIZE_RANGE).exp() / scale
        centres, extents = centres.flatten(2), extents.flatten(2)
        parts = [crop_to(self.cell(stride4), h, w), region_means(fine, centres, extents).reshape(b, -1, h, w)]
        if self.contour is not None:
            parts.append(contour_spectrum(self.contour(fine), centres, extents).reshape(b, -1, h, w))
        if self.outline:
            if image is None:
                raise ValueError("a tag head with outline=True needs the key image")
            spectra = contour_spectrum(image, centres * scale, extents * scale, OUTLINE_RADII, OUTLINE_ANGLES)
            spectra = spectra.reshape(b, len(OUTLINE_RADII), CONTOUR_ORDERS + 1, h, w)
            # Ring means as they are (intensities in [0, 1]); the magnitudes, 1e-3 to about 0.1, as logs: O(1)
            # inputs whose differences are contrast ratios between orders.
            spectra = torch.cat((spectra[:, :, :1], spectra[:, :, 1:].log()), dim=2)
            parts.append(spectra.reshape(b, -1, h, w))
        return torch.cat(parts, dim=1)

    def forward(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        """(B, T, h, w) tag logits of ``pooled(stride4, stride2, size, offset[, image])``."""
        return self.classify(self.pooled(*inputs))
