"""Lesion metrics over a set of 2D images (key slices): detection (FROC, COCO mAP), tags (AUC, F1), masks
(Dice) and RECIST diameters.

Per image (``LesionMetrics.update``), M detections, N ground-truth lesions, T tags:

- ``boxes`` (M, 4), ``gt_boxes`` (N, 4): (i0, j0, i1, j1) half-open pixel boxes, as ``Keys.BOXES``.
- ``scores`` (M,); ``tags`` (M, T) tag probabilities; ``gt_tags`` (N, T) multi-hot, NaN where uncertain
  (T may be 0).
- optional ``masks`` (M, H, W) instance masks, ``gt_masks`` (N, H, W), and ``gt_box_masks`` (N, H, W), a mask
  predicted for each ground-truth box (MULAN's segmentation on given boxes); masks are binarised at 1/2.
- optional ``diameters`` (M, 2), ``gt_diameters`` (N, 2): long and short axis in mm, NaN when unknown.

numpy arrays or torch tensors (any device) are accepted.

Matching. Detections are taken by descending score (equal scores in input order). Each one takes the
still-unmatched ground-truth box of highest IoU if that IoU is at least the threshold, and is otherwise a
false positive, so a second detection of a found lesion is a false positive. This is the greedy matching
of COCO, nnDetection and MONAI's ``matching_batch`` (which the mAP goes through, with the same IoU
function). IoU is exact in float64 (``box_iou``): MONAI's ``box_iou`` adds a float32 epsilon to the union,
so an IoU of exactly 1/2 would miss the 0.5 threshold.

Metrics (``LesionMetrics.compute``):

- FROC at IoU >= 0.5 (DeepLesion, MULAN) and >= 0.1 (nnDetection) (``FROC_IOUS``): the curve of
  ``monai.metrics.compute_froc_curve_data`` from every detection's TP/FP flag, and the sensitivity at 0.5,
  1, 2, 4 and 8 false positives per image (``FROC_FP_RATES``) read off it by
  ``monai.metrics.compute_froc_score``: linear between operating points, so with distinct scores it is the
  fraction of lesions found before the false positives exceed that many per image; past the last
  operating point, the sensitivity of all detections. ``score`` is the mean over the rates.
- COCO (``monai.apps.detection.metrics.coco.COCOMetric``, one class): AP at IoU 0.1 and 0.5, mAP over
  IoU 0.1:0.5:0.05 (nnDetection's, ``COCO_IOU_RANGE``) and AR, at most ``max_detections`` per image.
- On the pairs matched at ``MATCH_IOU``: tag AUC and F1 (``medmtl.metrics.tag_metrics``; unmatched
  detections and missed lesions are left out, as MULAN does), the absolute error of the long and short
  axis in mm (pairs where both values are known), and the Dice of each ground-truth mask with the matched
  detection's mask, or with its ``gt_box_masks`` mask when given (missed lesions and empty ground-truth
  masks are left out: detection misses are FROC's business).

Undefined values (no lesions, no matched pair, ...) are NaN. The state is plain Python lists on the host;
it is not synchronised across processes.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.metrics import compute_froc_curve_data, compute_froc_score

from medmtl.errors import InputError
from medmtl.metrics.tag_metrics import tag_auc, tag_f1

FROC_FP_RATES = (0.5, 1.0, 2.0, 4.0, 8.0)
FROC_IOUS = (0.5, 0.1)
MATCH_IOU = 0.5
OPERATING_IOU = 0.5  # the IoU of the inference operating point (score_at_1fp), MULAN's criterion
COCO_IOUS = (0.1, 0.5)
COCO_IOU_RANGE = (0.1, 0.5, 0.05)
MAX_DETECTIONS = 100
_WHERE = "lesion metrics"


def box_iou(a, b) -> np.ndarray:
    """IoU (M, N) float64 of half-open boxes a (M, 4) and b (N, 4), both (i0, j0, i1, j1) (or both any other
    (lo, lo, hi, hi) order); 0 where both boxes are empty."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)

    def area(x: np.ndarray) -> np.ndarray:
        return np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)

    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_match(iou: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching (see the module docstring). iou: (M, N) between detections, already in descending
    score order, and ground truth. Returns (M,) int64: the ground truth each detection matches, -1 for none."""
    matched = np.full(iou.shape[0], -1, np.int64)
    free = np.ones(iou.shape[1], bool)
    for d in range(iou.shape[0] if iou.shape[1] else 0):
        candidates = np.where(free, iou[d], -1.0)
        g = int(np.argmax(candidates))
        if candidates[g] >= threshold:
            matched[d], free[g] = g, False
    return matched


def froc(
    scores, is_tp, num_lesions: int, num_images: int, fp_rates: tuple[float, ...] = FROC_FP_RATES
) -> dict:
    """FROC from every detection's score (D,) and TP flag (D,) over ``num_images`` images with ``num_lesions``
    lesions, each lesion matched by at most one detection.

    Returns {"fp_per_image": (P,), "sensitivity": (P,)} (MONAI's curve, by increasing score threshold, so
    from all detections down to none), "at": {rate: sensitivity}, "score": their mean. Without lesions or
    images the curve is empty and the values NaN.
    """
    scores, is_tp = np.asarray(scores, np.float64).reshape(-1), np.asarray(is_tp, bool).reshape(-1)
    if len(scores) != len(is_tp) or is_tp.sum() > num_lesions:
        raise InputError(
            _WHERE,
            f"{len(scores)} scores, {len(is_tp)} TP flags and {is_tp.sum()} TPs for {num_lesions} lesions",
        )
    if num_lesions == 0 or num_images == 0:
        nan = float("nan")
        return {
            "fp_per_image": np.zeros(0),
            "sensitivity": np.zeros(0),
            "at": dict.fromkeys(fp_rates, nan),
            "score": nan,
        }
    # MONAI's curve starts at the second-lowest probability, because CAMELYON's tp_probs hold 0 for missed
    # lesions. Ranks (1 = lowest score) with a 0 among the false positives, which no threshold counts,
    # start it at the lowest detection whatever the scores are.
    rank = np.unique(scores, return_inverse=True)[1].reshape(-1).astype(np.float64) + 1
    fp_probs = np.append(rank[~is_tp], 0.0)
    tp_probs = np.zeros(num_lesions)
    tp_probs[: int(is_tp.sum())] = rank[is_tp]
    fps, sensitivity = compute_froc_curve_data(fp_probs, tp_probs, num_lesions, num_images)
    at = {rate: float(compute_froc_score(fps, sensitivity, (rate,))) for rate in fp_rates}
    return {
        "fp_per_image": fps,
        "sensitivity": sensitivity,
        "at": at,
        "score": float(np.mean(list(at.values()))),
    }


def score_at_fp_rate(scores, is_tp, num_images: int, rate: float) -> float:
    """The lowest score threshold at which the detections kept (score >= threshold) hold at most ``rate``
    false positives per image: an operating point for inference chosen on a validation set.

    scores, is_tp: (D,) every detection's score and TP flag over ``num_images`` images. With no more false
    positives than allowed it is the lowest detection score (every detection is kept); NaN without images or
    detections.
    """
    scores, is_tp = np.asarray(scores, np.float64).reshape(-1), np.asarray(is_tp, bool).reshape(-1)
    if num_images == 0 or len(scores) == 0:
        return float("nan")
    false = np.sort(scores[~is_tp])[::-1]
    allowed = int(np.floor(rate * num_images + 1e-9))
    if allowed >= len(false):
        return float(scores.min())
    # Keep what scores above the first false positive over the budget (ties with it are dropped with it).
    return float(np.nextafter(false[allowed], np.inf))


def _array(value, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``value`` as a numpy array whose shape matches ``shape`` (None: any size)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, array.shape)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise InputError(_WHERE, f"`{name}` is {array.shape}; expected {want}")
    return array


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


class LesionMetrics:
    """Accumulates lesion metrics over images (see the module docstring).

    Args:
        fp_rates: false positives per image at which FROC sensitivities are read.
        froc_ious: IoU thresholds of the FROC curves.
        match_iou: the IoU threshold of the pairs behind tag, Dice and diameter metrics.
        max_detections: detections per image that the COCO metric looks at (highest scores first).
    """

    def __init__(
        self,
        fp_rates: tuple[float, ...] = FROC_FP_RATES,
        froc_ious: tuple[float, ...] = FROC_IOUS,
        match_iou: float = MATCH_IOU,
        max_detections: int = MAX_DETECTIONS,
    ):
        self.fp_rates, self.froc_ious = tuple(fp_rates), tuple(froc_ious)
        self.match_iou, self.max_detections = float(match_iou), int(max_detections)
        self._coco = COCOMetric(
            classes=["lesion"],
            iou_list=COCO_IOUS,
            iou_range=COCO_IOU_RANGE,
            max_detection=(self.max_detections,),
            per_class=False,
            verbose=False,
        )
        self.reset()

    def reset(self) -> None:
        self.num_images = self.num_lesions = 0
        self.num_tags: int | None = None
        self._scores: list[np.ndarray] = []
        self._tp: dict[float, list[np.ndarray]] = {t: [] for t in self.froc_ious}
        self._coco_matches: list[dict] = []
        self._tag_probs: list[np.ndarray] = []
        self._tag_labels: list[np.ndarray] = []
        self._axis_errors: list[np.ndarray] = []
        self._dice: list[float] = []

    def update(
        self,
        boxes,
        scores,
        tags,
        gt_boxes,
        gt_tags,
        masks=None,
        diameters=None,
        gt_masks=None,
        gt_diameters=None,
        gt_box_masks=None,
    ) -> None:
        """Add one image (shapes in the module docstring)."""
        scores = _array(scores, "scores", (None,)).astype(np.float64)
        m = len(scores)
        boxes = _array(boxes, "boxes", (m, 4)).astype(np.float64)
        tags = _array(tags, "tags", (m, None)).astype(np.float64)
        gt_boxes = _array(gt_boxes, "gt_boxes", (None, 4)).astype(np.float64)
        n = len(gt_boxes)
        gt_tags = _array(gt_tags, "gt_tags", (n, tags.shape[1]))
        if self.num_tags not in (None, tags.shape[1]):
            raise InputError(_WHERE, f"`tags` has {tags.shape[1]} tags; earlier images had {self.num_tags}")
        if not (np.isfinite(scores).all() and np.isfinite(boxes).all() and np.isfinite(gt_boxes).all()):
            raise InputError(_WHERE, "`scores`, `boxes` and `gt_boxes` must be finite")
        self.num_tags = tags.shape[1]

        order = np.argsort(-scores, kind="mergesort")
        scores, boxes, tags = scores[order], boxes[order], tags[order]
        iou = box_iou(boxes, gt_boxes)
        self.num_images += 1
        self.num_lesions += n
        self._scores.append(scores)
        for threshold in self.froc_ious:
            self._tp[threshold].append(greedy_match(iou, threshold) >= 0)
        self._coco_matches += matching_batch(
            iou_fn=box_iou,
            iou_thresholds=self._coco.iou_thresholds,
            pred_boxes=[boxes],
            pred_classes=[np.zeros(m, np.int64)],
            pred_scores=[scores],
            gt_boxes=[gt_boxes],
            gt_classes=[np.zeros(n, np.int64)],
            max_detections=self.max_detections,
        )

        match = greedy_match(iou, self.match_iou)
        det, gt = np.flatnonzero(match >= 0), match[match >= 0]
        self._tag_probs.append(tags[det])
        self._tag_labels.append(gt_tags[gt].astype(np.float64))
        if diameters is not None and gt_diameters is not None:
            mine = _array(diameters, "diameters", (m, 2)).astype(np.float64)[order]
            truth = _array(gt_diameters, "gt_diameters", (n, 2)).astype(np.float64)
            self._axis_errors.append(np.abs(mine[det] - truth[gt]))
        if gt_masks is not None:
            truth = _array(gt_masks, "gt_masks", (n, None, None)) > 0.5
            size = truth.shape[1:]
            if gt_box_masks is not None:
                given = _array(gt_box_masks, "gt_box_masks", (n, *size)) > 0.5
                pairs = [(given[g], truth[g]) for g in range(n)]
            elif masks is not None:
                mine = (_array(masks, "masks", (m, *size)) > 0.5)[order]
                pairs = [(mine[d], truth[g]) for d, g in zip(det, gt)]
            else:
                pairs = []
            self._dice += [_dice(a, b) for a, b in pairs if b.any()]

    def tag_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The matched pairs' tag probabilities (K, T) and ground-truth tags (K, T), in update order: the input
        of ``medmtl.metrics.tag_metrics.choose_tag_thresholds`` on a validation set."""
        t = self.num_tags or 0
        probs = np.concatenate([np.zeros((0, t)), *self._tag_probs])
        labels = np.concatenate([np.zeros((0, t)), *self._tag_labels])
        return probs, labels

    def compute(self, tag_thresholds=None) -> dict:
        """The metrics so far.

        Args:
            tag_thresholds: (T,) per-tag thresholds chosen on another set; adds the tag F1 values.

        Returns a dict: ``num_images``, ``num_lesions``, ``num_detections``; ``froc``: {IoU threshold:
        ``froc(...)``}; ``coco``: MONAI's COCO values by MONAI's names (NaN where undefined; empty without
        lesions) and ``mAP`` (over ``COCO_IOU_RANGE``); ``tag_auc`` (T,) with NaN for tags whose matched
        pairs' known labels hold one class only, listed in ``tag_auc_skipped``, and ``tag_auc_mean`` over the
        others;
        ``tag_f1`` (T,) and ``tag_f1_mean`` when thresholds are given; ``dice_mean``, ``dice_count``;
        ``long_axis_mae_mm``, ``short_axis_mae_mm`` and the pairs behind each, ``long_axis_count``,
        ``short_axis_count``; ``score_at_1fp``: ``score_at_fp_rate`` at 1 false positive per image and IoU
        ``OPERATING_IOU`` (a threshold for ``medmtl lesion --score-threshold``).
        """
        scores = np.concatenate([np.zeros(0), *self._scores])
        out: dict = {
            "num_images": self.num_images,
            "num_lesions": self.num_lesions,
            "num_detections": len(scores),
        }
        out["froc"] = {}
        out["score_at_1fp"] = float("nan")
        for t in self.froc_ious:
            is_tp = np.concatenate([np.zeros(0, bool), *self._tp[t]])
            out["froc"][t] = froc(scores, is_tp, self.num_lesions, self.num_images, self.fp_rates)
            if t == OPERATING_IOU:
                out["score_at_1fp"] = score_at_fp_rate(scores, is_tp, self.num_images, 1.0)
        coco = {}
        if self.num_lesions:  # MONAI logs to the root logger when a class has no ground truth
            values = self._coco(self._coco_matches)[0]
            coco = {key: float("nan") if value == -1 else float(value) for key, value in values.items()}
        out["coco"] = coco
        lo, hi, step = COCO_IOU_RANGE
        out["mAP"] = coco.get(
            f"mAP_IoU_{lo:.2f}_{hi:.2f}_{step:.2f}_MaxDet_{self.max_detections}", float("nan")
        )

        probs, labels = self.tag_pairs()
        auc = tag_auc(probs, labels)
        out["tag_auc"] = auc
        out["tag_auc_skipped"] = [int(t) for t in np.flatnonzero(np.isnan(auc))]
        out["tag_auc_mean"] = _mean(list(auc[np.isfinite(auc)]))
        if tag_thresholds is not None:
            f1 = tag_f1(probs, labels, tag_thresholds)
            out["tag_f1"] = f1
            out["tag_f1_mean"] = _mean(list(f1[np.isfinite(f1)]))

        out["dice_mean"], out["dice_count"] = _mean(self._dice), len(self._dice)
        errors = np.concatenate([np.zeros((0, 2)), *self._axis_errors])
        for axis, name in enumerate(("long_axis", "short_axis")):
            known = errors[np.isfinite(errors[:, axis]), axis]
            out[f"{name}_mae_mm"], out[f"{name}_count"] = _mean(list(known)), len(known)
        return out
