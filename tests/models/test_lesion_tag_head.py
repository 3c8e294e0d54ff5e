"""The box-pooled tag head: region means from integral images against a brute-force mean over the same
pixels, their gradients, and that the tag loss does not move the boxes it pools over."""

from __future__ import annotations

import math

import pytest
import torch

from medmtl.keys import Keys
from medmtl.models.lesion_net import LesionNet
from medmtl.models.lesion_tag_head import BoxPooledTagHead, region_means


def _pixels(centre, extent, scale, height, width) -> torch.Tensor:
    """(H, W) bool: the pixels a box of ``extent`` x ``scale`` around ``centre`` covers, rounded outwards,
    clipped to the map, at least one pixel wide (the rule ``box_sums`` documents)."""
    lo = [math.floor(c - e * scale / 2) for c, e in zip(centre, extent)]
    hi = [math.ceil(c + e * scale / 2) for c, e in zip(centre, extent)]
    y0, x0 = min(max(lo[0], 0), height - 1), min(max(lo[1], 0), width - 1)
    y1, x1 = max(min(hi[0], height), y0 + 1), max(min(hi[1], width), x0 + 1)
    inside = torch.zeros(height, width, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    return inside


def test_region_means_match_a_brute_force_mean():
    torch.manual_seed(0)
    b, c, height, width, n = 2, 3, 13, 17, 40
    features = torch.randn(b, c, height, width)
    # Centres anywhere on the map and a little outside it, extents from under a pixel to beyond the map.
    centres = torch.rand(b, 2, n) * torch.tensor([height + 4.0, width + 4.0])[None, :, None] - 2
    extents = torch.exp(torch.rand(b, 2, n) * math.log(40)) * 0.5
    means = region_means(features, centres, extents)
    assert means.shape == (b, 3 * c, n) and means.dtype == features.dtype
    for i in range(b):
        for k in range(n):
            box = [_pixels(centres[i, :, k].tolist(), extents[i, :, k].tolist(), s, height, width) for s in (0.5, 1, 2)]
            regions = (box[0], box[1] & ~box[0], box[2] & ~box[1])
            for r, region in enumerate(regions):
                want = features[i][:, region].mean(1) if region.any() else torch.zeros(c)
                torch.testing.assert_close(means[i, r * c : (r + 1) * c, k], want, atol=1e-6, rtol=1e-6)


def test_region_means_are_differentiable_in_the_features():
    torch.manual_seed(1)
    features = torch.randn(1, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    centres = torch.tensor([[[4.2, 1.0, 7.5], [5.1, 9.9, 2.0]]], dtype=torch.float64)
    extents = torch.tensor([[[3.0, 1.5, 6.0], [4.4, 2.0, 2.5]]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: region_means(f, centres, extents), (features,))


def test_the_head_reads_the_predicted_box():
    """A change inside a cell's predicted surround moves its tags; one outside it only through the
    normalisation's statistics over the whole map, an order of magnitude less."""
    torch.manual_seed(2)
    head = BoxPooledTagHead(chans=4, fine_chans=3, num_tags=2).eval()
    stride4, stride2 = torch.randn(1, 4, 32, 32), torch.randn(1, 3, 64, 64)
    size = torch.full((1, 2, 32, 32), math.log(8.0))  # 8 x 8 input pixels: 4 x 4 stride-2 pixels
    offset = torch.full((1, 2, 32, 32), 0.5)
    with torch.no_grad():
        base = head(stride4, stride2, size, offset, stride=4)
        # Cell (1, 1) is centred on input pixel 6, stride-2 pixel 3: its 2x box spans stride-2 pixels -1 .. 7.
        near, far = stride2.clone(), stride2.clone()
        near[..., 3, 3] += 5.0  # in its core (stride-2 pixels 2 .. 3)
        far[..., 40, 40] += 5.0
        moved_near = (head(stride4, near, size, offset, stride=4) - base)[..., 1, 1].abs().max()
        moved_far = (head(stride4, far, size, offset, stride=4) - base)[..., 1, 1].abs().max()
    assert moved_near > 10 * moved_far


def test_the_tag_loss_does_not_move_the_boxes():
    torch.manual_seed(3)
    net = LesionNet(num_tags=3, widths=(4, 8), tasks=("det", "tag"), tag_pooling="box")
    context = torch.rand(1, 9, 24, 20)
    batch = {
        Keys.CONTEXT: context,
        Keys.BOXES: [torch.tensor([[4.0, 5.0, 14.0, 12.0]])],
        Keys.TAGS: [torch.tensor([[1.0, 0.0, 1.0]])],
    }
    net.compute_losses(net(context), batch)["tag"].backward()
    for head in (net.size_head, net.offset_head, net.heatmap_head):
        assert all(p.grad is None or not p.grad.any() for p in head.parameters())
    assert all(p.grad is not None and p.grad.any() for p in net.tag_head.classify.parameters())


@pytest.mark.parametrize("kwargs", [{"tag_pooling": "roi"}, {"tag_pooling": "box", "tag_chans": 0}])
def test_bad_tag_pooling_is_refused(kwargs):
    from medmtl.errors import ConfigError

    with pytest.raises(ConfigError, match="tag_pooling"):
        LesionNet(num_tags=3, widths=(4, 8), **kwargs)
