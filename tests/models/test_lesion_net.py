"""``LesionNet`` and its trunk: shapes, the 2.5D fusion, losses (no lesion, edge lesions, hard-example mining),
the score refinement, and a tiny overfit that must end in a detection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data.box_utils import box_iou

from medmtl.errors import ConfigError, InputError
from medmtl.keys import Keys
from medmtl.models.lesion_decode import decode_detections
from medmtl.models.lesion_losses import hard_negative_mask, tag_loss
from medmtl.models.lesion_net import TASKS, LesionNet
from medmtl.models.lesion_trunk import LesionTrunk

NUM_TAGS = 3
TINY = {"num_tags": NUM_TAGS, "widths": (4, 8), "refine_hidden": 4}


def _disc_sample(height: int, width: int, centre: tuple[float, float], radius: float, seed: int):
    """A 9-slice context with a bright disc on its five central slices: (context, boxes (1, 4), mask (1, H, W))."""
    gen = torch.Generator().manual_seed(seed)
    ii, jj = torch.meshgrid(torch.arange(height * 1.0), torch.arange(width * 1.0), indexing="ij")
    mask = (ii - centre[0]) ** 2 + (jj - centre[1]) ** 2 <= radius**2
    context = 0.2 + 0.2 * torch.rand(9, height, width, generator=gen)
    context[2:7] += 0.6 * mask
    rows, cols = torch.nonzero(mask).T
    box = torch.stack((rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)).float()[None]
    return context, box, mask[None].to(torch.uint8)


def _batch(samples, tags) -> dict:
    return {
        Keys.CONTEXT: torch.stack([c for c, _, _ in samples]),
        Keys.BOXES: [b for _, b, _ in samples],
        Keys.MASKS: [m for _, _, m in samples],
        Keys.TAGS: tags,
        Keys.SLICE_POSITION: torch.linspace(0.2, 0.8, len(samples)),
    }


@pytest.mark.parametrize("tag_pooling", ["cell", "box", "contour", "outline"])
@pytest.mark.parametrize(("height", "width"), [(33, 47), (48, 48), (17, 20), (5, 3)])
def test_output_shapes_at_odd_sizes(height, width, tag_pooling):
    torch.manual_seed(0)
    net = LesionNet(**{**TINY, "widths": (4, 8, 8)}, tag_pooling=tag_pooling).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 9, height, width), torch.tensor([0.1, 0.9]))
    h, w = math.ceil(height / 4), math.ceil(width / 4)
    assert out.heatmap.shape == out.refined_heatmap.shape == (2, 1, h, w)
    assert out.size.shape == out.offset.shape == (2, 2, h, w)
    assert out.tags.shape == out.refined_tags.shape == (2, NUM_TAGS, h, w)
    assert out.mask.shape == (2, 1, height, width)
    assert all(torch.isfinite(t).all() for t in out)


@pytest.mark.parametrize("tasks", [("det",), ("det", "tag"), ("det", "tag", "mask"), TASKS])
def test_tasks_select_heads_and_losses(tasks):
    torch.manual_seed(0)
    net = LesionNet(**TINY, tasks=tasks)
    context, box, mask = _disc_sample(24, 20, (10, 9), 4, seed=0)
    out = net(context[None], torch.tensor([0.5]))
    assert net.tasks == tasks
    assert (out.tags is not None) == ("tag" in tasks) and (out.mask is not None) == ("mask" in tasks)
    assert (out.refined_heatmap is not None) == ("refine" in tasks)
    losses = net.compute_losses(out, _batch([(context, box, mask)], [torch.tensor([[1.0, 0.0, 1.0]])]))
    assert tuple(losses) == tasks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tasks": ("tag",)}, "det"),
        ({"tasks": ("det", "refine")}, "needs 'tag'"),
        ({"tasks": ("det", "colour")}, "det"),
        ({"tag_pos_weight": [1.0, 2.0]}, "tag_pos_weight"),
        ({"num_slices": 5}, "num_slices"),
        ({"num_slices": 6}, "num_slices"),
        ({"widths": (4,)}, "widths"),
    ],
)
def test_configurations_that_cannot_work_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LesionNet(**{**TINY, **kwargs})


def test_inputs_the_refinement_needs_are_checked():
    net = LesionNet(**TINY, num_clinical=2)
    context = torch.rand(1, 9, 8, 8)
    with pytest.raises(InputError, match="slice_position"):
        net(context)
    with pytest.raises(InputError, match="clinical"):
        net(context, torch.tensor([0.5]))
    with pytest.raises(InputError, match="context"):
        net(torch.rand(1, 7, 8, 8), torch.tensor([0.5]))
    assert net(context, torch.tensor([0.5]), torch.tensor([[0.6, 1.0]])).refined_heatmap.shape == (1, 1, 2, 2)


def test_patient_positions_of_the_refinement_by_hand():
    net = LesionNet(**TINY, refine_position="patient")
    assert net.reads_patient_frame and not LesionNet(**TINY).reads_patient_frame
    # 2 mm along R per row, 0.5 mm along A per column, pixel (0, 0) at (-30, 10, 50) mm.
    frame = torch.tensor([[[2.0, 0.0, -30.0], [0.0, 0.5, 10.0], [0.0, 0.0, 50.0]]])
    heatmap = torch.zeros(1, 1, 3, 5)
    positions = net._positions(heatmap, None, frame)
    assert positions.shape == (1, 3, 3, 5)
    # Cell (u, v) is centred on pixel (4 u + 1.5, 4 v + 1.5); positions come in units of 100 mm.
    for u, v in ((0, 0), (2, 4), (1, 3)):
        i, j = 4 * u + 1.5, 4 * v + 1.5
        want = torch.tensor([-30 + 2 * i, 10 + 0.5 * j, 50.0]) / 100
        torch.testing.assert_close(positions[0, :, u, v], want)
    context = torch.rand(1, 9, 12, 20)
    with pytest.raises(InputError, match=r"patient_frame: .*\(1, 3, 3\) patient frames, got None"):
        net(context, torch.tensor([0.5]))
    with pytest.raises(InputError, match=r"got \(1, 3\)"):
        net(context, torch.tensor([0.5]), None, frame[:, 0])
    out = net(context, None, None, frame)  # the slice position is not read
    assert out.refined_heatmap.shape == (1, 1, 3, 5)


@pytest.mark.parametrize("num_slices", [3, 9, 15])
def test_only_the_central_group_matters_until_the_fusion_learns(num_slices):
    torch.manual_seed(0)
    trunk = LesionTrunk(num_slices, widths=(4, 8, 8)).eval()
    context = torch.rand(1, num_slices, 19, 22)
    centre = slice(num_slices // 2 - 1, num_slices // 2 + 2)
    other = context.clone()
    other[:, : centre.start] = torch.rand_like(other[:, : centre.start])
    other[:, centre.stop :] = torch.rand_like(other[:, centre.stop :])
    with torch.no_grad():
        base = trunk(context)
        assert torch.equal(base.stride4, trunk(other).stride4)  # the fusion starts at zero
        assert base.stride1.shape == (1, trunk.stem_chans, 19, 22)
        assert base.stride2.shape == (1, 4, 10, 11) and base.stride4.shape == (1, 8, 5, 6)
        for fusion in trunk.fusions.values():
            fusion.mix.weight.normal_()
        changed = not torch.equal(base.stride4, trunk(other).stride4)
    assert changed == (num_slices > 3)


def test_losses_are_finite_without_lesions_and_with_lesions_at_the_edge():
    torch.manual_seed(0)
    net = LesionNet(**TINY)
    height, width = 21, 18
    edge = _disc_sample(height, width, (20, 17), 3, seed=1)  # the disc is cut by the bottom-right corner
    empty = (
        torch.rand(9, height, width),
        torch.zeros(0, 4),
        torch.zeros(0, height, width, dtype=torch.uint8),
    )
    batch = _batch([edge, empty], [torch.tensor([[0.0, 1.0, 1.0]]), torch.zeros(0, NUM_TAGS)])
    assert edge[1].tolist() == [[17.0, 14.0, 21.0, 18.0]]
    out = net(batch[Keys.CONTEXT], batch[Keys.SLICE_POSITION])
    losses = net.compute_losses(out, batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)

    net.zero_grad()
    no_lesions = _batch([empty, empty], [torch.zeros(0, NUM_TAGS)] * 2)
    losses = net.compute_losses(net(no_lesions[Keys.CONTEXT], no_lesions[Keys.SLICE_POSITION]), no_lesions)
    assert losses["tag"] == 0 and all(torch.isfinite(v) for v in losses.values())
    for loss in losses.values():  # every task's loss has a graph, as per-task balancers need
        assert loss.requires_grad


def test_hard_example_mining_keeps_positives_and_the_hardest_negatives():
    targets = torch.tensor([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 1, 0]], dtype=torch.float32)
    losses = torch.tensor(
        [[0.1, 0.5, 2.0, 0.3, 1.5, 0.2], [0.4, 0.1, 0.9, 0.8, 0.2, 0.3], [0.1, 0.2, 0.3, 0.7, 0.9, 0.8]]
    )
    keep = hard_negative_mask(losses, targets, negative_ratio=2.0)
    expected = [
        [1, 0, 1, 0, 1, 0],  # 1 positive: the 2 hardest negatives (2.0, 1.5)
        [0, 0, 1, 1, 0, 0],  # no positive: counted as one, 2 negatives (0.9, 0.8)
        [1, 1, 1, 1, 1, 1],  # 3 positives: 6 negatives wanted, all 3 kept
    ]
    assert keep.tolist() == [[bool(v) for v in row] for row in expected]


def test_uncertain_tags_are_neither_mined_nor_trained():
    """NaN targets (uncertain tags) are never kept, do not count as positives for the negatives' quota, and
    get no gradient: the loss is the loss over the known tags alone."""
    nan = float("nan")
    targets = torch.tensor([[1.0, nan, 0.0, 0.0, nan], [nan, nan, nan, nan, nan]])
    losses = torch.tensor([[0.1, 9.0, 0.5, 0.2, 8.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    keep = hard_negative_mask(losses, targets, negative_ratio=1.0)
    assert keep.tolist() == [[True, False, True, False, False], [False] * 5]
    logits = torch.tensor([[0.5, 4.0, 2.0, -1.0, -3.0], [1.0, 2.0, 3.0, 4.0, 5.0]], requires_grad=True)
    loss = tag_loss(logits, targets, negative_ratio=1.0)
    known = tag_loss(logits[:1, [0, 2, 3]], targets[:1, [0, 2, 3]], negative_ratio=1.0)
    torch.testing.assert_close(loss, known)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and not logits.grad[targets.isnan()].any()


def test_tag_loss_ignores_easy_negatives_and_weighs_positives():
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    logits = torch.tensor([[0.0, 3.0, -9.0, -9.0]])  # one hard negative, two easy ones
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")[0]
    torch.testing.assert_close(tag_loss(logits, targets, negative_ratio=1.0), (bce[0] + bce[1]) / 2)
    weighted = tag_loss(logits, targets, pos_weight=torch.tensor([4.0, 1, 1, 1]), negative_ratio=1.0)
    torch.testing.assert_close(weighted, (4 * bce[0] + bce[1]) / 2)


def test_refinement_starts_as_the_identity_and_trains_only_itself():
    torch.manual_seed(0)
    net = LesionNet(**TINY)
    context, box, mask = _disc_sample(16, 16, (8, 8), 3, seed=2)
    batch = _batch([(context, box, mask)], [torch.tensor([[1.0, 1.0, 0.0]])])
    out = net(batch[Keys.CONTEXT], batch[Keys.SLICE_POSITION])
    assert torch.equal(out.refined_heatmap, out.heatmap) and torch.equal(out.refined_tags, out.tags)
    net.compute_losses(out, batch)["refine"].backward()
    with_grad = {
        name.split(".")[0] for name, p in net.named_parameters() if p.grad is not None and p.grad.any()
    }
    assert with_grad == {"refiner"}


@pytest.mark.parametrize("tag_pooling", ["cell", "box", "contour", "outline"])
def test_a_tiny_network_overfits_two_images(tag_pooling):
    torch.manual_seed(0)
    samples = [_disc_sample(48, 48, (14, 30), 6, seed=0), _disc_sample(48, 48, (33, 12), 8, seed=1)]
    tags = [torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 1.0]])]
    batch = _batch(samples, tags)
    net = LesionNet(**{**TINY, "widths": (4, 8, 16), "refine_hidden": 8}, tag_pooling=tag_pooling)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    history = []
    for _ in range(25):
        losses = net.compute_losses(net(batch[Keys.CONTEXT], batch[Keys.SLICE_POSITION]), batch)
        total = sum(losses.values())
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        history.append(total.item())
    assert history[-1] < 0.3 * history[0]
    net.eval()
    with torch.no_grad():
        found = decode_detections(
            net(batch[Keys.CONTEXT], batch[Keys.SLICE_POSITION]), pixel_spacing=(1.0, 1.0)
        )
    for detections, (_, box, _), tag in zip(found, samples, tags):
        assert detections.scores[0] > 0.5
        assert box_iou(torch.from_numpy(detections.boxes[:1]), box).item() > 0.5
        np.testing.assert_array_equal(detections.tags[0] > 0.5, tag[0].numpy() > 0.5)
        assert np.isfinite(detections.long_axis_mm[0])
