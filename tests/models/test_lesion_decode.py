"""Target encoding and detection decoding of the lesion network (``medmtl.models.lesion_decode``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmtl.data.lesion_geometry import measure_recist
from medmtl.errors import InputError
from medmtl.models.lesion_decode import STRIDE, decode_boxes, decode_detections, encode_targets, peak_cells
from medmtl.models.lesion_net import LesionOutput

NUM_TAGS = 4
HIGH, LOW = 12.0, -12.0


def _cells(height: int, width: int) -> tuple[int, int]:
    return (height + STRIDE - 1) // STRIDE, (width + STRIDE - 1) // STRIDE


def _outputs(targets, h: int, w: int, mask: torch.Tensor | None = None) -> LesionOutput:
    """Dense outputs that say exactly what ``targets`` (one image) encode: high logits at the centres."""
    heatmap = torch.full((1, 1, h, w), LOW)
    size = torch.zeros(1, 2, h, w)
    offset = torch.zeros(1, 2, h, w)
    tags = torch.full((1, NUM_TAGS, h, w), LOW)
    u, v = targets.cells // w, targets.cells % w
    heatmap[0, 0, u, v] = HIGH
    size[0, :, u, v] = targets.size.T
    offset[0, :, u, v] = targets.offset.T
    if targets.tags is not None:
        tags[0, :, u, v] = torch.where(targets.tags.T > 0.5, HIGH, LOW)
    return LesionOutput(heatmap, None, size, offset, tags, None, mask)


@pytest.mark.parametrize(
    ("height", "width", "boxes"),
    [
        (48, 48, [[4, 6, 14, 18], [30, 30, 46, 40]]),  # integer centres
        (37, 29, [[0, 0, 5, 7], [30, 20, 37, 29]]),  # at the corners of an odd-sized image
        (33, 47, [[10.5, 3.25, 19.0, 20.75], [20, 30, 21, 31]]),  # fractional, and a one-pixel lesion
    ],
)
def test_encode_decode_round_trip(height, width, boxes):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    tags = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.float32)
    h, w = _cells(height, width)
    targets = encode_targets(boxes, h, w, tags=tags)
    (found,) = decode_detections(_outputs(targets, h, w), image_size=(height, width), nms_iou=0.9)
    order = np.argsort(found.boxes[:, 0])
    np.testing.assert_allclose(found.boxes[order], boxes.numpy(), atol=1e-4)
    np.testing.assert_array_equal(found.tags[order] > 0.5, tags.numpy() > 0.5)
    assert found.scores.min() > 0.99


def test_integer_centred_boxes_decode_exactly():
    boxes = torch.tensor([[8.0, 12.0, 16.0, 20.0], [1.0, 2.0, 3.0, 6.0]])
    targets = encode_targets(boxes, 8, 8)
    decoded = decode_boxes(targets.cells, targets.size, targets.offset, 8)
    # exp(log(n)) may miss n by one ulp; everything else is exact in float32.
    torch.testing.assert_close(decoded, boxes, rtol=0, atol=4e-6)


def test_heatmap_target_peaks_at_the_centre_cells():
    boxes = torch.tensor([[0.0, 0.0, 3.0, 3.0], [20.0, 8.0, 36.0, 40.0]])
    targets = encode_targets(boxes, 10, 12)
    assert targets.heatmap.shape == (1, 10, 12)
    assert targets.heatmap.min() >= 0 and targets.heatmap.max() <= 1
    peaks = torch.nonzero(targets.heatmap[0] == 1).tolist()
    assert sorted(peaks) == [[0, 0], [7, 6]]
    assert targets.cells.tolist() == [0, 7 * 12 + 6]
    # the wide lesion's peak spreads further along j than along i
    assert targets.heatmap[0, 7, 8] > targets.heatmap[0, 9, 6]


def test_no_lesion_gives_an_empty_target():
    targets = encode_targets(torch.zeros(0, 4), 5, 7, tags=torch.zeros(0, NUM_TAGS))
    assert targets.heatmap.shape == (1, 5, 7) and not targets.heatmap.any()
    assert (
        targets.cells.shape == (0,) and targets.size.shape == (0, 2) and targets.tags.shape == (0, NUM_TAGS)
    )


def test_a_centre_outside_the_map_is_refused():
    with pytest.raises(InputError, match="outside"):
        encode_targets(torch.tensor([[40.0, 0.0, 50.0, 4.0]]), 10, 10)
    with pytest.raises(InputError, match="tags"):
        encode_targets(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 10, 10, tags=torch.zeros(2, 3))


def test_nothing_above_the_threshold_gives_empty_detections():
    h, w = 6, 5
    out = LesionOutput(
        torch.full((2, 1, h, w), LOW),
        None,
        torch.zeros(2, 2, h, w),
        torch.zeros(2, 2, h, w),
        None,
        None,
        None,
    )
    found = decode_detections(out, pixel_spacing=[1.0, 1.0])
    assert len(found) == 2
    for f in found:
        assert f.boxes.shape == (0, 4) and f.scores.shape == (0,) and f.tags.shape == (0, 0)
        assert f.masks is None and f.long_axis_mm.shape == (0,)


def test_peaks_are_local_maxima_by_descending_score():
    scores = torch.zeros(5, 6)
    scores[1, 1], scores[1, 2], scores[4, 5] = 0.9, 0.8, 0.95  # (1, 2) is beside a higher peak
    cells, values = peak_cells(scores, top_k=10, threshold=0.5)
    assert cells.tolist() == [4 * 6 + 5, 1 * 6 + 1]
    torch.testing.assert_close(values, torch.tensor([0.95, 0.9]))
    assert peak_cells(scores, top_k=1, threshold=0.5)[0].tolist() == [29]


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [8.0, 0.0, 48.0, 40.0]])  # centres two cells apart, IoU 2/3
    targets = encode_targets(boxes, 12, 12)
    out = _outputs(targets, 12, 12)
    out.heatmap[0, 0, 7, 5] = HIGH / 2
    found = decode_detections(out, nms_iou=0.5)[0]
    np.testing.assert_allclose(found.boxes, boxes[:1].numpy(), atol=1e-4)
    assert len(decode_detections(out, nms_iou=0.9)[0].boxes) == 2


def test_refined_outputs_score_when_asked():
    targets = encode_targets(torch.tensor([[8.0, 8.0, 16.0, 16.0]]), 6, 6, tags=torch.ones(1, NUM_TAGS))
    out = _outputs(targets, 6, 6)._replace(
        refined_heatmap=torch.full((1, 1, 6, 6), LOW), refined_tags=torch.full((1, NUM_TAGS, 6, 6), LOW)
    )
    assert len(decode_detections(out, refined=True)[0].boxes) == 0
    unrefined = decode_detections(out, refined=False)[0]
    assert len(unrefined.boxes) == 1 and unrefined.tags.min() > 0.99


def test_instance_masks_and_axes_from_the_mask_map():
    height, width = 30, 26
    h, w = _cells(height, width)
    boxes = torch.tensor([[4.0, 4.0, 12.0, 14.0], [18.0, 10.0, 28.0, 20.0]])
    logits = torch.full((1, 1, height, width), -5.0)
    logits[0, 0, 5:11, 5:13] = 5.0  # lesion 1
    logits[0, 0, 20:27, 12:19] = 5.0  # lesion 2
    logits[0, 0, 0:3, 20:26] = 5.0  # foreground outside every box: in no instance
    out = _outputs(encode_targets(boxes, h, w), h, w, mask=logits)
    spacing = (0.8, 1.25)
    found = decode_detections(out, pixel_spacing=spacing)[0]
    order = np.argsort(found.boxes[:, 0])
    masks = found.masks[order]
    assert masks.shape == (2, height, width)
    expected = np.zeros((2, height, width), bool)
    expected[0, 5:11, 5:13] = True
    expected[1, 20:27, 12:19] = True
    np.testing.assert_array_equal(masks, expected)
    for k in range(2):
        long_mm, short_mm, _ = measure_recist(expected[k], np.array(spacing))
        assert found.long_axis_mm[order][k] == pytest.approx(long_mm, rel=1e-6)
        assert found.short_axis_mm[order][k] == pytest.approx(short_mm, rel=1e-6)
    assert np.isnan(decode_detections(out)[0].long_axis_mm).all()  # no spacing, no measurement


def test_numpy_and_torch_inputs_decode_alike():
    gen = torch.Generator().manual_seed(3)
    h, w = 7, 9
    out = LesionOutput(
        torch.randn(2, 1, h, w, generator=gen) * 3,
        torch.randn(2, 1, h, w, generator=gen) * 3,
        torch.randn(2, 2, h, w, generator=gen) + 2,
        torch.rand(2, 2, h, w, generator=gen),
        torch.randn(2, NUM_TAGS, h, w, generator=gen),
        torch.randn(2, NUM_TAGS, h, w, generator=gen),
        torch.randn(2, 1, 4 * h - 1, 4 * w - 2, generator=gen),
    )
    as_numpy = LesionOutput(*(t.numpy() for t in out))
    spacing = np.array([[0.7, 0.7], [1.0, 2.0]])
    for a, b in zip(
        decode_detections(out, pixel_spacing=spacing), decode_detections(as_numpy, pixel_spacing=spacing)
    ):
        assert len(a.boxes) > 0
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
