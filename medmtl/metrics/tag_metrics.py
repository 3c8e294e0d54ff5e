"""Multi-label tag metrics: ROC AUC per tag, and F1 at per-tag thresholds chosen on another set.

K samples (for lesions: detections matched to a ground-truth lesion), T tags. ``probs`` (K, T) are predicted
probabilities (any real scores work: only their order and the thresholds matter); ``labels`` (K, T) are
multi-hot, a label counts as positive when it is above 1/2; a NaN label is uncertain (MULAN's uncertain
labels, ``Lesion.uncertain_tags``) and that tag's metrics leave the sample out. A tag is predicted where
``probs >= threshold``.

As in MULAN, thresholds are chosen on a validation set (``choose_tag_thresholds``) and applied to the test
set (``tag_f1``), so the reported F1 does not see the test labels twice.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from medmtl.errors import InputError


def _pairs(probs, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, positive, known): (K, T) float64 and bool, known False where a label is uncertain (NaN)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.float64)
    if probs.ndim != 2 or probs.shape != labels.shape:
        raise InputError("tag metrics", f"probs {probs.shape} and labels {labels.shape} must both be (K, T)")
    return probs, labels > 0.5, ~np.isnan(labels)


def tag_auc(probs, labels) -> np.ndarray:
    """ROC AUC of each tag: (T,) float64, the probability that a random positive sample scores above a random
    negative one, ties counting one half (the Mann-Whitney statistic from average ranks). NaN for a tag whose
    known labels are all positive or all negative (AUC undefined there)."""
    probs, labels, known = _pairs(probs, labels)
    auc = np.full(probs.shape[1], np.nan)
    for t in range(probs.shape[1]):
        p, positive = probs[known[:, t], t], labels[known[:, t], t]
        n_pos = int(positive.sum())
        n_neg = len(positive) - n_pos
        if n_pos and n_neg:
            auc[t] = (rankdata(p)[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return auc


def choose_tag_thresholds(probs, labels) -> np.ndarray:
    """Per-tag thresholds (T,) float64 that maximise F1 on this set: each is one of the tag's probabilities,
    the highest among equally good ones; ``inf`` (never predicted) for a tag without positive labels, where
    any prediction is a false positive."""
    probs, labels, known = _pairs(probs, labels)
    thresholds = np.full(probs.shape[1], np.inf)
    for t in range(probs.shape[1]):
        p, positive = probs[known[:, t], t], labels[known[:, t], t]
        if not positive.any():
            continue
        order = np.argsort(-p, kind="mergesort")
        p, y = p[order], positive[order]
        # Cutting after the last of each run of equal probabilities predicts that run and everything above.
        last = np.r_[p[1:] != p[:-1], True]
        true_pos = np.cumsum(y)[last]
        predicted = np.arange(1, len(p) + 1)[last]
        f1 = 2 * true_pos / (predicted + positive.sum())
        thresholds[t] = p[last][np.argmax(f1)]  # the first maximum: the highest threshold
    return thresholds


def tag_f1(probs, labels, thresholds) -> np.ndarray:
    """F1 of each tag (T,) float64 when predicting ``probs >= thresholds`` ((T,)): 2 TP / (2 TP + FP + FN),
    NaN where a tag has neither positive labels nor positive predictions (0 / 0)."""
    probs, labels, known = _pairs(probs, labels)
    thresholds = np.asarray(thresholds, np.float64)
    if thresholds.shape != (probs.shape[1],):
        raise InputError("tag metrics", f"thresholds {thresholds.shape} must be ({probs.shape[1]},)")
    predicted = (probs >= thresholds) & known
    true_pos = (predicted & labels).sum(0)
    denominator = predicted.sum(0) + labels.sum(0)
    return np.divide(2.0 * true_pos, denominator, out=np.full(len(thresholds), np.nan), where=denominator > 0)
