"""The box-pooled tag head: area-weighted region means from integral images against a brute-force mean on a
finer grid, their gradients, the box each cell pools over, half-precision geometry, and that the tag loss
does not move the boxes it pools over; the contour spectra against a closed form, their rotation invariance
and the order that a lobed outline shows at."""

from __future__ import annotations

import math

import pytest
import torch

from medmtl.errors import ConfigError
from medmtl.keys import Keys
from medmtl.models.lesion_net import LesionNet
from medmtl.models.lesion_tag_head import (
    CONTOUR_ANGLES,
    CONTOUR_ORDERS,
    CONTOUR_RADII,
    OUTLINE_ANGLES,
    OUTLINE_RADII,
    BoxPooledTagHead,
    contour_spectrum,
    region_means,
)

FINE = 8  # sub-pixels per pixel of the brute force: box edges on a 1/8 grid are exact there


def _brute_means(features, centre, extent, height, width):
    """Core, shell and surround means of (C, H, W) features by counting sub-pixels of an 8x finer grid."""
    fine = features.repeat_interleave(FINE, 1).repeat_interleave(FINE, 2).double()

    def covered(scale):
        inside = torch.zeros(height * FINE, width * FINE, dtype=torch.bool)
        lo = [round((c - e * scale / 2) * FINE) for c, e in zip(centre, extent)]
        hi = [round((c + e * scale / 2) * FINE) for c, e in zip(centre, extent)]
        inside[max(lo[0], 0) : max(hi[0], 0), max(lo[1], 0) : max(hi[1], 0)] = True
        return inside

    core, box, outer = covered(0.5), covered(1.0), covered(2.0)
    return [
        fine[:, region].mean(1) if region.any() else torch.zeros(len(features), dtype=torch.float64)
        for region in (core, box & ~core, outer & ~box)
    ]


def test_region_means_match_a_brute_force_mean():
    torch.manual_seed(0)
    b, c, height, width, n = 2, 3, 13, 17, 40
    features = torch.randn(b, c, height, width)
    # Centres on a 1/8 grid, on and a little off the map, and extents on a 1/2 grid from half a pixel to
    # beyond the map: every region's edge (centre -/+ extent x 1/4, 1/2 or 1) lies on the 1/8 grid.
    centres = (torch.rand(b, 2, n) * torch.tensor([height + 4.0, width + 4.0])[None, :, None] - 2) * 8
    extents = (torch.exp(torch.rand(b, 2, n) * math.log(60)) * 2).round().clamp_min(1)
    centres, extents = centres.round() / 8, extents / 2
    means = region_means(features, centres, extents)
    assert means.shape == (b, 3 * c, n) and means.dtype == features.dtype
    for i in range(b):
        for k in range(n):
            want = _brute_means(
                features[i], centres[i, :, k].tolist(), extents[i, :, k].tolist(), height, width
            )
            for r in range(3):
                torch.testing.assert_close(
                    means[i, r * c : (r + 1) * c, k].double(), want[r], atol=2e-6, rtol=1e-5
                )


def test_region_means_are_continuous_and_differentiable():
    torch.manual_seed(1)
    features = torch.randn(1, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    centres = torch.tensor([[[4.2, 1.0, 7.5], [5.1, 9.9, 2.0]]], dtype=torch.float64)
    extents = torch.tensor([[[3.0, 1.5, 6.0], [4.4, 2.0, 2.5]]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: region_means(f, centres, extents), (features,))
    # A box edge crossing a pixel boundary moves the means by as little as it moves the edge.
    nudge = region_means(features, centres, extents + 1e-6) - region_means(features, centres, extents)
    assert nudge.abs().max() < 1e-4


def _spectrum(features, centre, extent):
    """contour_spectrum of (C, H, W) features about one box -> (C, rings, orders + 1)."""
    c = len(features)
    boxes = [torch.tensor(v, dtype=torch.float32)[None, :, None] for v in (centre, extent)]
    return contour_spectrum(features[None], *boxes).reshape(c, len(CONTOUR_RADII), CONTOUR_ORDERS + 1)


def test_contour_spectrum_of_a_linear_map():
    """Features = the column coordinate: bilinear sampling is exact, so on the ring of semi-axes (a, b) the
    samples are cx - 1/2 + b cos(theta): mean cx - 1/2, order 1 of magnitude b / 2, higher orders zero
    (sqrt of the epsilon)."""
    height, width = 40, 50
    cols = torch.arange(width, dtype=torch.float32).expand(height, width)
    centre, extent = (20.3, 24.6), (10.0, 16.0)
    spectrum = _spectrum(cols[None], centre, extent)[0]
    semi = torch.tensor(CONTOUR_RADII) * extent[1] / 2
    torch.testing.assert_close(spectrum[:, 0], torch.full((len(CONTOUR_RADII),), centre[1] - 0.5))
    torch.testing.assert_close(spectrum[:, 1], semi / 2, atol=1e-4, rtol=1e-5)
    assert spectrum[:, 2:].max() < 2e-3


def test_contour_spectrum_is_invariant_to_a_quarter_turn_and_finds_the_lobes():
    """A quarter turn of the map about the box centre (a square box) shifts the ring samples by a quarter of
    the angles: the spectrum is unchanged. Five lobes about the centre show at order 5."""
    torch.manual_seed(4)
    size = 32
    features = torch.randn(3, size, size)
    centre, extent = (size / 2, size / 2), (12.0, 12.0)
    turned = torch.rot90(features, 1, dims=(1, 2))
    assert CONTOUR_ANGLES % 4 == 0
    torch.testing.assert_close(_spectrum(turned, centre, extent), _spectrum(features, centre, extent))
    ii, jj = torch.meshgrid(*[torch.arange(size) + 0.5 - size / 2] * 2, indexing="ij")
    lobes = torch.cos(5 * torch.atan2(ii, jj)) * (ii.hypot(jj) > 2)
    spectrum = _spectrum(lobes[None], centre, extent)[0]
    assert (spectrum[2:, 1:].argmax(1) == 4).all()  # order 5 on the outer rings (index 0 is the mean)


def test_contour_spectrum_gradients_are_finite_on_a_flat_map():
    features = torch.ones(1, 2, 12, 12, requires_grad=True)
    centres, extents = torch.tensor([[[6.0], [5.5]]]), torch.tensor([[[4.0], [6.0]]])
    contour_spectrum(features, centres, extents).sum().backward()
    assert torch.isfinite(features.grad).all()
    half = contour_spectrum(features.detach().half(), centres, extents)
    assert half.dtype == torch.float16
    full = contour_spectrum(features.detach(), centres, extents)
    torch.testing.assert_close(half.float(), full, atol=1e-3, rtol=1e-3)


def _exact_head(chans=4, fine_chans=3):
    """A head whose pooled map is the stride-2 input itself (no lateral, no convolution)."""
    torch.manual_seed(2)
    head = BoxPooledTagHead(chans, fine_chans, num_tags=2, pooled_chans=fine_chans).eval()
    head.fine = torch.nn.Identity()
    torch.nn.init.zeros_(head.lateral.weight)
    torch.nn.init.zeros_(head.lateral.bias)
    return head


def test_each_cell_pools_over_its_predicted_box():
    """Cell (u, v) with offset (a, b) and log size (s, t) pools over the box centred on input pixel
    (4 (u + a), 4 (v + b)), sized (e^s, e^t) input pixels: halved on the stride-2 map."""
    head = _exact_head()
    stride4, stride2 = torch.randn(1, 4, 6, 7), torch.randn(1, 3, 12, 14)
    size = torch.stack((torch.full((6, 7), math.log(6.0)), torch.full((6, 7), math.log(10.0))))[None]
    offset = torch.stack((torch.full((6, 7), 0.25), torch.full((6, 7), 0.75)))[None]
    with torch.no_grad():
        pooled = head.pooled(stride4, stride2, size, offset)[:, 4:]  # after the cell's 4 channels
        u, v = 2, 3
        centre = torch.tensor([[[4 * (u + 0.25) / 2], [4 * (v + 0.75) / 2]]])
        want = region_means(stride2, centre, torch.tensor([[[3.0], [5.0]]]))
        torch.testing.assert_close(pooled[:, :, u, v], want[:, :, 0])
        # A pixel just outside the surround (rows 1.5 .. 7.5, columns 2 .. 12 of the stride-2 map) does not
        # count; one just inside does.
        outside, inside = stride2.clone(), stride2.clone()
        outside[..., 8, 7] += 5.0
        inside[..., 7, 7] += 5.0
        moved_out = head.pooled(stride4, outside, size, offset)[:, 4:, u, v] - pooled[:, :, u, v]
        moved_in = head.pooled(stride4, inside, size, offset)[:, 4:, u, v] - pooled[:, :, u, v]
    assert moved_out.abs().max() < 1e-6 and moved_in.abs().max() > 0.01


def test_half_precision_box_geometry_matches_float32():
    """Float16 sizes and offsets on a large map: the geometry is done in float32, so pixel indices beyond
    2048 do not round."""
    head = _exact_head()
    torch.manual_seed(3)
    h = w = 64  # a 256 x 256 input: 128 x 128 stride-2 pixels, flat indices up to 16641
    stride4, stride2 = torch.randn(1, 4, h, w), torch.randn(1, 3, 2 * h, 2 * w)
    size = (torch.rand(1, 2, h, w) * 3).half()
    offset = torch.rand(1, 2, h, w).half()
    with torch.no_grad():
        half = head.pooled(stride4, stride2, size, offset)
        full = head.pooled(stride4, stride2, size.float(), offset.float())
    torch.testing.assert_close(half, full)


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
        assert all(p.grad is None for p in head.parameters())
    assert all(p.grad is not None and p.grad.any() for p in net.tag_head.classify.parameters())


def test_the_pooled_map_is_the_image_without_padding(monkeypatch):
    """LesionNet pads its input for the trunk; the boxes must clip to the image, not the padded map."""
    import medmtl.models.lesion_tag_head as tag_head

    seen = []
    real = tag_head.region_means
    monkeypatch.setattr(tag_head, "region_means", lambda f, c, e: seen.append(f.shape) or real(f, c, e))
    net = LesionNet(num_tags=3, widths=(4, 8, 8), tag_pooling="box").eval()
    with torch.no_grad():
        net(torch.rand(1, 9, 33, 47), torch.tensor([0.5]))
    assert seen and seen[0][-2:] == (17, 24)


@pytest.mark.parametrize(
    ("kwargs", "key"), [({"tag_pooling": "roi"}, "tag_pooling"), ({"tag_chans": 0}, "tag_chans")]
)
def test_bad_tag_pooling_is_refused(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        LesionNet(num_tags=3, widths=(4, 8), **{"tag_pooling": "box", **kwargs})


def test_outline_spectra_are_the_key_image_at_full_resolution():
    """tag_pooling "outline": the last inputs of the tag MLP are contour_spectrum of the context's centre
    slice about each cell's box in input pixels, and start at zero weight (the box head's tags)."""
    torch.manual_seed(5)
    box = LesionNet(num_tags=3, widths=(4, 8, 8), tag_pooling="box").eval()
    outline = LesionNet(num_tags=3, widths=(4, 8, 8), tag_pooling="outline").eval()
    state = box.state_dict()
    own = outline.state_dict()
    grown = "tag_head.classify.0.weight"
    state[grown] = torch.cat((state[grown], own[grown][:, state[grown].shape[1] :]), dim=1)
    outline.load_state_dict(state)
    context = torch.rand(2, 9, 30, 26)
    seen = []
    head = outline.tag_head
    real = head.pooled
    head.pooled = lambda *a: seen.append(a) or real(*a)
    with torch.no_grad():
        position = torch.tensor([0.3, 0.6])
        torch.testing.assert_close(outline(context, position).tags, box(context, position).tags)
        stride4, stride2, size, offset, image = seen[0]
        torch.testing.assert_close(image, context[:, 4:5])
        h, w = size.shape[-2:]
        cells = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).float()[None]
        centres = ((cells + offset) * 4).flatten(2)  # input pixels: stride 4
        extents = size.clamp(0.0, math.log(4096)).exp().flatten(2)  # LOG_SIZE_RANGE
        want = contour_spectrum(image, centres, extents, OUTLINE_RADII, OUTLINE_ANGLES)
        want = want.reshape(2, len(OUTLINE_RADII), CONTOUR_ORDERS + 1, h, w)
        want = torch.cat((want[:, :, :1], want[:, :, 1:].log()), dim=2).reshape(2, -1, h, w)
        got = real(stride4, stride2, size, offset, image)[:, -want.shape[1] :]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="needs the key image"):
        real(stride4, stride2, size, offset)


def test_outline_spectra_of_a_uniform_image_are_its_value_and_the_magnitude_floor():
    """A known answer: on a uniform image every ring's mean is the value and every Fourier magnitude is the
    floor sqrt(_MAGNITUDE_EPS) = 1e-3, given as its log."""
    head = BoxPooledTagHead(4, 3, num_tags=2, outline=True)
    h, w = 6, 5
    stride4, stride2 = torch.randn(1, 4, h, w), torch.randn(1, 3, 2 * h, 2 * w)
    size = torch.full((1, 2, h, w), math.log(4.0))  # 4 x 4 px boxes: rings of radius <= 2.5 px
    offset = torch.full((1, 2, h, w), 0.5)
    image = torch.full((1, 1, 4 * h, 4 * w), 0.7)
    with torch.no_grad():
        got = head.pooled(stride4, stride2, size, offset, image)[
            :, -len(OUTLINE_RADII) * (CONTOUR_ORDERS + 1) :
        ]
    rings = got.reshape(len(OUTLINE_RADII), CONTOUR_ORDERS + 1, h, w)[
        ..., 1:-1, 1:-1
    ]  # rings inside the image
    torch.testing.assert_close(rings[:, 0], torch.full_like(rings[:, 0], 0.7))
    torch.testing.assert_close(rings[:, 1:], torch.full_like(rings[:, 1:], math.log(1e-3)), atol=2e-2, rtol=0)
