"""Lesion metrics against hand-computed values: greedy matching, FROC (checked against monai.metrics.froc),
COCO mAP, tag AUC and F1, Dice on matched masks and given-box masks, and diameter errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.detection.metrics.matching import matching_batch
from monai.metrics import compute_froc_curve_data, compute_froc_score

from medmtl.errors import InputError
from medmtl.metrics.lesion import COCO_IOU_RANGE, LesionMetrics, box_iou, froc, greedy_match, score_at_fp_rate

SIZE = (64, 64)
NAN = float("nan")


def box_mask(box, cols=None) -> np.ndarray:
    """A (64, 64) mask filling ``box``, or only its first ``cols`` columns."""
    i0, j0, i1, j1 = box
    mask = np.zeros(SIZE, bool)
    mask[i0:i1, j0 : (j1 if cols is None else j0 + cols)] = True
    return mask


def image(dets, gts, with_masks=True) -> dict:
    """Arguments of ``update`` from detections [(score, box, tags, diameters, mask)] and lesions
    [(box, tags, diameters, mask)]; T = 3."""
    out = {
        "boxes": np.array([d[1] for d in dets], np.float32).reshape(-1, 4),
        "scores": np.array([d[0] for d in dets], np.float32),
        "tags": np.array([d[2] for d in dets], np.float32).reshape(-1, 3),
        "diameters": np.array([d[3] for d in dets], np.float32).reshape(-1, 2),
        "gt_boxes": np.array([g[0] for g in gts], np.float32).reshape(-1, 4),
        "gt_tags": np.array([g[1] for g in gts], np.float32).reshape(-1, 3),
        "gt_diameters": np.array([g[2] for g in gts], np.float32).reshape(-1, 2),
    }
    if with_masks:
        out["masks"] = np.array([d[4] for d in dets], bool).reshape(-1, *SIZE)
        out["gt_masks"] = np.array([g[3] for g in gts], bool).reshape(-1, *SIZE)
    return out


G1, G2, G3, G4, G6 = [0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 15, 15], [0, 0, 8, 8], [30, 30, 40, 40]
NONE = np.zeros(SIZE, bool)
# Four images, five lesions, eight detections (d1 .. d8 by name; d2 re-finds g1; d3 overlaps g2 with IoU
# 40 / 100 = 0.4, a hit at IoU 0.1 only). Detections come in shuffled order. False positives carry tags that
# would change the AUC if they were counted.
CASE = [
    image(  # A
        [
            (0.3, [40, 40, 45, 45], [0, 1, 1], [9, 9], NONE),  # d4: FP
            (0.8, [1, 1, 11, 11], [0, 1, 1], [9, 9], NONE),  # d2: duplicate of g1 (IoU 81 / 119): FP
            (0.9, G1, [0.9, 0.2, 0.5], [12, 8], box_mask(G1, cols=5)),  # d1: g1
            (0.6, [20, 20, 30, 24], [0, 1, 1], [9, 9], NONE),  # d3: g2 at IoU 0.1 only
        ],
        [(G1, [1, 0, 1], [10, 9], box_mask(G1)), (G2, [1, 1, 1], [7, 7], box_mask(G2))],
    ),
    image(  # B
        [
            (0.1, G6, [0.1, 0.4, 0.2], [3, 3], box_mask(G6)),  # d8: g6, found last
            (0.7, G3, [0.7, 0.3, 0.5], [5, NAN], box_mask(G3)),  # d5: g3
            (0.4, [50, 50, 55, 55], [0, 1, 1], [9, 9], NONE),  # d6: FP
        ],
        [(G3, [0, 0, 0], [6, 4], box_mask(G3)), (G6, [1, 0, 0], [NAN, NAN], NONE)],  # g6: mask unknown
    ),
    image([(0.5, [0, 0, 4, 4], [0, 1, 1], [9, 9], NONE)], []),  # C: no lesions, d7: FP
    image([], [(G4, [1, 1, 1], [5, 5], box_mask(G4))]),  # D: no detections, g4 missed
]


@pytest.fixture(scope="module")
def case_results() -> dict:
    metrics = LesionMetrics()
    for kwargs in CASE:
        metrics.update(**kwargs)
    return metrics.compute(tag_thresholds=np.array([0.3, np.inf, 0.5]))


def test_box_iou_is_exact_for_half_open_boxes():
    iou = box_iou([[0, 0, 10, 10], [0, 0, 2, 2]], [[0, 0, 10, 5], [1, 1, 11, 11], [5, 5, 5, 9]])
    np.testing.assert_allclose(iou, [[0.5, 81 / 119, 0], [4 / 50, 1 / 103, 0]], rtol=0, atol=1e-15)
    assert iou[0, 0] >= 0.5  # an IoU of exactly 1/2 reaches the 0.5 threshold
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]])[0, 0] == 0  # two empty boxes


def test_greedy_match_takes_the_best_free_lesion_in_score_order():
    iou = np.array([[0.6, 0.7], [0.9, 0.2], [0.55, 0.1], [0.3, 0.3]])
    np.testing.assert_array_equal(greedy_match(iou, 0.5), [1, 0, -1, -1])  # row 2 finds both taken
    np.testing.assert_array_equal(greedy_match(iou, 0.65), [1, 0, -1, -1])
    np.testing.assert_array_equal(greedy_match(iou, 0.8), [-1, 0, -1, -1])
    assert greedy_match(np.zeros((3, 0)), 0.5).tolist() == [-1, -1, -1]
    assert greedy_match(np.zeros((0, 2)), 0.5).shape == (0,)


@pytest.mark.parametrize("seed", range(3))
def test_greedy_match_agrees_with_monai_matching_batch(seed):
    rng = np.random.default_rng(seed)
    lo = rng.integers(0, 40, (5, 2))
    gt = np.concatenate([lo, lo + rng.integers(3, 15, (5, 2))], axis=1).astype(np.float64)
    moved = gt[rng.integers(0, 5, 12)] + rng.integers(-4, 5, (12, 4))  # near a lesion, some re-finding one
    boxes = np.concatenate(
        [np.minimum(moved[:, :2], moved[:, 2:]), np.maximum(moved[:, :2], moved[:, 2:])], 1
    )
    scores = rng.permutation(12) / 12.0
    order = np.argsort(-scores, kind="mergesort")
    thresholds = [0.1, 0.3, 0.5, 0.7]
    monai = matching_batch(
        box_iou, thresholds, [boxes], [np.zeros(12, int)], [scores], [gt], [np.zeros(5, int)]
    )[0][0]["dtMatches"]
    iou = box_iou(boxes[order], gt)
    ours = np.array([greedy_match(iou, t) >= 0 for t in thresholds])
    np.testing.assert_array_equal(ours, monai.astype(bool))
    assert 0 < ours.sum() < ours.size  # the case has hits and misses


def test_froc_hand_computed_and_as_monai_computes_it(case_results):
    # IoU 0.5, detections by score: d1 TP, d2 FP, d5 TP, d3 FP, d7 FP, d6 FP, d4 FP, d8 TP; 5 lesions, 4 images.
    # With at most 2 FPs (0.5 per image) and 4 (1 per image) 2 lesions are found; all 8 detections find 3.
    # IoU 0.1: d3 is a TP, so 3 before the 2nd FP; d8 comes right after the 4th FP, at 1 FP per image.
    expected = {0.5: [0.4, 0.4, 0.6, 0.6, 0.6], 0.1: [0.6, 0.8, 0.8, 0.8, 0.8]}
    for iou, sens in expected.items():
        got = case_results["froc"][iou]
        assert list(got["at"]) == [0.5, 1.0, 2.0, 4.0, 8.0]
        np.testing.assert_allclose(list(got["at"].values()), sens, atol=1e-12)
        assert got["score"] == pytest.approx(np.mean(sens))
    # MONAI's own functions on the hand-listed probabilities (missed lesions as 0) give the same curve.
    fps, sens = compute_froc_curve_data(
        np.array([0.8, 0.6, 0.5, 0.4, 0.3]), np.array([0.9, 0.7, 0.1, 0.0, 0.0]), 5, 4
    )
    np.testing.assert_allclose(case_results["froc"][0.5]["fp_per_image"], fps)
    np.testing.assert_allclose(case_results["froc"][0.5]["sensitivity"], sens)
    assert [compute_froc_score(fps, sens, (r,)) for r in (0.5, 1, 2)] == pytest.approx([0.4, 0.4, 0.6])
    assert case_results["num_images"] == 4 and case_results["num_lesions"] == 5
    assert case_results["num_detections"] == 8


def test_froc_counts_the_lowest_detection_and_tied_scores():
    # One image, two lesions; scores 0.0 (a TP) and two tied at 0.5 (one TP, one FP).
    got = froc([0.5, 0.5, 0.0], [True, False, True], 2, 1, (0.5, 1.0))
    # the tie adds a TP and an FP at once: (0, 0) -> (1, 0.5); then the TP at 0 reaches (1, 1)
    assert got["at"] == pytest.approx({0.5: 0.25, 1.0: 1.0})
    assert froc([], [], 3, 2)["at"][8.0] == 0.0  # no detections
    with pytest.raises(InputError, match="2 TPs for 1 lesions"):
        froc([0.9, 0.8], [True, True], 1, 1)
    nothing = froc([0.9], [False], 0, 1)
    assert np.isnan(nothing["score"]) and len(nothing["fp_per_image"]) == 0  # no lesions


def test_coco_map_hand_computed():
    # TP, FP, TP, TP over 3 lesions at every IoU: recall 1/3, 1/3, 2/3, 1, precision (box-smoothed) 1, .75,
    # .75, .75. Of the 101 recall points 0, .01, .., 1, the 34 up to .33 read 1, the other 67 read .75.
    metrics = LesionMetrics()
    metrics.update([G1, [50, 50, 60, 60], G2], [0.9, 0.8, 0.7], np.zeros((3, 0)), [G1, G2], np.zeros((2, 0)))
    metrics.update([G1], [0.6], np.zeros((1, 0)), [G1], np.zeros((1, 0)))
    results = metrics.compute()
    assert results["mAP"] == pytest.approx((34 + 67 * 0.75) / 101)
    assert results["coco"]["AP_IoU_0.50_MaxDet_100"] == pytest.approx((34 + 67 * 0.75) / 101)


def test_coco_map_over_the_iou_range():
    # IoU 0.32 is a hit at the thresholds 0.1, 0.15, .., 0.3 (5 of the 9 up to 0.5): AP 1 there, 0 above.
    metrics = LesionMetrics()
    metrics.update([[0, 0, 10, 3.2]], [0.9], np.zeros((1, 0)), [G1], np.zeros((1, 0)))
    results = metrics.compute()
    assert COCO_IOU_RANGE == (0.1, 0.5, 0.05)
    assert results["mAP"] == pytest.approx(5 / 9)
    assert results["coco"]["AP_IoU_0.10_MaxDet_100"] == pytest.approx(1.0)
    assert results["coco"]["AP_IoU_0.50_MaxDet_100"] == pytest.approx(0.0)


def test_all_false_positives_no_detections_and_no_lesions():
    fp_only = LesionMetrics()
    fp_only.update([[40, 40, 50, 50], [0, 0, 2, 2]], [0.9, 0.2], np.zeros((2, 1)), [G1], np.zeros((1, 1)))
    results = fp_only.compute()
    assert results["mAP"] == 0.0
    assert all(v == 0.0 for curve in results["froc"].values() for v in curve["at"].values())
    assert results["tag_auc_skipped"] == [0] and np.isnan(results["tag_auc_mean"])

    blind = LesionMetrics()
    blind.update(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 2)), [G1, G2], np.ones((2, 2)))
    results = blind.compute()
    assert results["mAP"] == 0.0 and results["froc"][0.5]["score"] == 0.0
    assert results["num_detections"] == 0 and results["dice_count"] == 0

    healthy = LesionMetrics()
    healthy.update([G1], [0.5], np.zeros((1, 2)), np.zeros((0, 4)), np.zeros((0, 2)))
    results = healthy.compute()
    assert np.isnan(results["mAP"]) and results["coco"] == {}
    assert np.isnan(results["froc"][0.1]["score"]) and np.isnan(results["long_axis_mae_mm"])

    assert np.isnan(LesionMetrics().compute()["froc"][0.5]["at"][1.0])  # nothing at all


def test_tag_auc_and_f1_on_matched_pairs(case_results):
    # Pairs at IoU 0.5: d1-g1, d5-g3, d8-g6. Tag 0: probs (.9, .7, .1), labels (1, 0, 1): AUC 1/2.
    # Tag 1: no positive label among the pairs: skipped. Tag 2: (.5, .5, .2), labels (1, 0, 0): a tie (1/2)
    # and a win, AUC 3/4.
    np.testing.assert_allclose(case_results["tag_auc"], [0.5, NAN, 0.75])
    assert case_results["tag_auc_skipped"] == [1]
    assert case_results["tag_auc_mean"] == pytest.approx(0.625)
    # Thresholds (.3, inf, .5): tag 0 predicts (1, 1, 0): F1 2 / (2 + 2) = 1/2; tag 1: 0 / 0; tag 2 predicts
    # (1, 1, 0) against (1, 0, 0): F1 2 / 3.
    np.testing.assert_allclose(case_results["tag_f1"], [0.5, NAN, 2 / 3])
    assert case_results["tag_f1_mean"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_dice_and_diameters_on_matched_pairs(case_results):
    # d1's mask is half of g1's (50 of 100 pixels): 2/3; d5's is g3's: 1; g6's mask is empty (unknown).
    assert case_results["dice_count"] == 2
    assert case_results["dice_mean"] == pytest.approx((2 / 3 + 1) / 2)
    # d1 (12, 8) vs g1 (10, 9); d5 (5, ?) vs g3 (6, 4); d8 (3, 3) vs g6 (?, ?)
    assert case_results["long_axis_mae_mm"] == pytest.approx(1.5) and case_results["long_axis_count"] == 2
    assert case_results["short_axis_mae_mm"] == pytest.approx(1.0) and case_results["short_axis_count"] == 1


def test_dice_of_masks_predicted_on_the_given_boxes():
    metrics = LesionMetrics()
    truth = np.stack([box_mask(G1), box_mask(G3)])
    given = np.stack([box_mask(G1, cols=5), box_mask(G3)])
    # no detections at all: the masks for the given boxes are scored anyway
    metrics.update(
        np.zeros((0, 4)),
        np.zeros(0),
        np.zeros((0, 0)),
        [G1, G3],
        np.zeros((2, 0)),
        gt_masks=truth,
        gt_box_masks=given,
    )
    results = metrics.compute()
    assert results["dice_count"] == 2 and results["dice_mean"] == pytest.approx((2 / 3 + 1) / 2)


def test_tensors_give_the_same_results(case_results):
    metrics = LesionMetrics()
    for kwargs in CASE:
        metrics.update(**{k: torch.from_numpy(v) for k, v in kwargs.items()})
    results = metrics.compute(tag_thresholds=np.array([0.3, np.inf, 0.5]))
    for key in ("mAP", "tag_auc_mean", "tag_f1_mean", "dice_mean", "long_axis_mae_mm"):
        assert results[key] == pytest.approx(case_results[key])
    assert results["froc"][0.1]["at"] == pytest.approx(case_results["froc"][0.1]["at"])
    probs, labels = metrics.tag_pairs()
    assert probs.shape == labels.shape == (3, 3)
    metrics.reset()
    assert metrics.compute()["num_images"] == 0 and metrics.tag_pairs()[0].shape == (0, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"boxes": np.zeros((2, 3))}, "`boxes` is"),
        ({"tags": np.zeros((2, 4))}, "`gt_tags` is"),
        ({"scores": np.array([0.5, np.nan])}, "finite"),
        ({"masks": np.zeros((2, 8, 8)), "gt_masks": np.zeros((1, 9, 9))}, "`masks` is"),
        ({"diameters": np.zeros((2, 3)), "gt_diameters": np.zeros((1, 2))}, "`diameters` is"),
    ],
)
def test_bad_inputs(change, message):
    kwargs = {
        "boxes": np.array([G1, G2]),
        "scores": np.array([0.5, 0.4]),
        "tags": np.zeros((2, 2)),
        "gt_boxes": np.array([G1]),
        "gt_tags": np.zeros((1, 2)),
    }
    with pytest.raises(InputError, match=message):
        LesionMetrics().update(**(kwargs | change))


def test_tag_count_must_stay_the_same():
    metrics = LesionMetrics()
    metrics.update([G1], [0.5], np.zeros((1, 2)), [G1], np.zeros((1, 2)))
    with pytest.raises(InputError, match="earlier images had 2"):
        metrics.update([G1], [0.5], np.zeros((1, 3)), [G1], np.zeros((1, 3)))


def test_score_at_fp_rate_by_hand():
    # 2 images; false positives score 0.9, 0.6, 0.3; true positives 0.8, 0.2.
    scores = [0.9, 0.8, 0.6, 0.3, 0.2]
    is_tp = [False, True, False, False, True]
    # 1 FP per image over 2 images allows 2 FPs: keep above the third (0.3), i.e. 0.9, 0.8, 0.6.
    t = score_at_fp_rate(scores, is_tp, num_images=2, rate=1.0)
    assert 0.3 < t <= 0.3 + 1e-12
    kept = np.asarray(scores) >= t
    assert (kept & ~np.asarray(is_tp)).sum() == 2 and kept.sum() == 3
    # 0.5 FP per image allows 1: keep above 0.6.
    assert 0.6 < score_at_fp_rate(scores, is_tp, 2, 0.5) <= 0.6 + 1e-12
    # A budget above the false positives keeps everything; no detections or images give NaN.
    assert score_at_fp_rate(scores, is_tp, 4, 1.0) == 0.2
    assert np.isnan(score_at_fp_rate([], [], 2, 1.0)) and np.isnan(score_at_fp_rate(scores, is_tp, 0, 1.0))
