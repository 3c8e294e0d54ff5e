"""Dice and HD95 per class against MONAI's metric classes and hand-computed cases."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot

from medmtl.metrics import SegMetrics, dice_hd95

CLASSES = ("other", "grey_matter", "white_matter")


def _square(shape, box, label, out=None):
    out = torch.zeros(shape, dtype=torch.long) if out is None else out
    out[box[0] : box[1], box[2] : box[3]] = label
    return out


def test_known_case():
    target = _square((17, 19), (2, 8, 2, 8), 1)  # 6x6 square of class 1, class 2 absent
    pred = _square((17, 19), (3, 9, 2, 8), 1)  # shifted down by one row
    dice, hd95 = dice_hd95(pred[None], target[None], 3)
    assert dice[0, 0] == pytest.approx(2 * 30 / 72)
    assert hd95[0, 0] == pytest.approx(1.0)
    assert math.isnan(dice[0, 1]) and math.isnan(hd95[0, 1])


def test_missed_class_has_zero_dice_and_no_hd95():
    target = _square((12, 12), (2, 6, 2, 6), 2)
    dice, hd95 = dice_hd95(torch.zeros_like(target)[None], target[None], 3)
    assert dice[0, 1] == 0
    assert math.isnan(hd95[0, 1])


@pytest.mark.parametrize("shape", [(16, 16), (21, 13)])
def test_matches_monai_metric_classes(shape):
    gen = torch.Generator().manual_seed(0)
    target = torch.zeros(4, *shape, dtype=torch.long)
    pred = torch.zeros_like(target)
    for b in range(4):
        for label in (1, 2):
            r, c = torch.randint(0, shape[0] - 6, (2,), generator=gen).tolist()
            _square(shape, (r, r + 5, c, c + 5), label, target[b])
            _square(shape, (r + b % 2, r + 5, c, c + 4 + b % 3), label, pred[b])
    metric = SegMetrics(CLASSES)
    metric.update(pred[:2], target[:2])
    metric.update(pred[2:], target[2:])
    out = metric.compute()

    p, t = one_hot(pred[:, None], 3), one_hot(target[:, None], 3)
    want_dice = DiceMetric(include_background=False, reduction="mean_batch")
    want_dice(p, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="mean_batch")
        want_hd(p, t)
        want_hd = want_hd.aggregate()
    want_dice = want_dice.aggregate()
    for i, name in enumerate(CLASSES[1:]):
        assert float(out[f"dice_{name}"]) == pytest.approx(float(want_dice[i]), abs=1e-6)
        assert float(out[f"hd95_{name}"]) == pytest.approx(float(want_hd[i]), abs=1e-5)
    assert float(out["dice_mean"]) == pytest.approx(float(want_dice.mean()), abs=1e-6)
