"""Tag metrics against hand-computed values: AUC with ties and skipped tags, F1-maximising thresholds, F1."""

from __future__ import annotations

import numpy as np
import pytest

from medmtl.errors import InputError
from medmtl.metrics.tag_metrics import choose_tag_thresholds, tag_auc, tag_f1


def test_auc_counts_ties_as_half_and_skips_one_class_tags():
    probs = np.array([[0.9, 0.5, 0.3, 0.2], [0.8, 0.5, 0.1, 0.4], [0.1, 0.2, 0.7, 0.6], [0.3, 0.9, 0.2, 0.8]])
    labels = np.array([[1, 1, 0, 1], [0, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0]])
    # tag 0: positives .9, .1 vs negatives .8, .3: wins 2 of 4. tag 1: .5 vs (.5, .2, .9): 1/2 + 1 + 0 of 3.
    # tag 2: no positives. tag 3: (.2, .4, .6) vs .8: none of 3.
    np.testing.assert_allclose(tag_auc(probs, labels), [0.5, 0.5, np.nan, 0.0])
    assert tag_auc(np.zeros((0, 2)), np.zeros((0, 2))).shape == (2,)


def test_uncertain_labels_leave_the_sample_out_of_that_tag():
    rng = np.random.default_rng(1)
    probs, labels = rng.uniform(size=(40, 3)), rng.integers(0, 2, (40, 3)).astype(np.float64)
    uncertain = rng.uniform(size=labels.shape) < 0.3
    with_nan = np.where(uncertain, np.nan, labels)
    thresholds = choose_tag_thresholds(probs, with_nan)
    for t in range(3):
        known = ~uncertain[:, t]
        one = (probs[known, t : t + 1], labels[known, t : t + 1])
        assert tag_auc(probs, with_nan)[t] == tag_auc(*one)[0]
        assert thresholds[t] == choose_tag_thresholds(*one)[0]
        assert tag_f1(probs, with_nan, thresholds)[t] == tag_f1(*one, thresholds[t : t + 1])[0]
    # an uncertain label scored high is no false positive
    assert tag_f1([[0.9], [0.8]], [[1.0], [np.nan]], [0.5]).tolist() == [1.0]


def test_auc_of_a_perfect_ranking_is_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (31, 3))
    labels[0], labels[1] = 0, 1  # both classes in every tag
    probs = labels * 0.5 + rng.uniform(0, 0.4, labels.shape)
    np.testing.assert_allclose(tag_auc(probs, labels), 1.0)
    np.testing.assert_allclose(tag_auc(-probs, labels), 0.0)


def test_thresholds_maximise_f1_and_prefer_the_highest():
    probs = np.array([[0.9, 0.9, 0.2], [0.8, 0.7, 0.6], [0.3, 0.6, 0.4], [0.2, 0.5, 0.1]])
    labels = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    # tag 0, cutting below .9, .8, .3, .2: F1 2/3, 2/4, 4/5, 4/6 -> .3.
    # tag 1, below .9, .7, .6, .5: F1 2/3, 2/4, 2/5, 4/6 -> a tie of 2/3, the higher one, .9.
    # tag 2: no positives -> never predicted.
    np.testing.assert_array_equal(choose_tag_thresholds(probs, labels), [0.3, 0.9, np.inf])
    np.testing.assert_allclose(tag_f1(probs, labels, [0.3, 0.9, np.inf]), [0.8, 2 / 3, np.nan])


def test_thresholds_treat_equal_probabilities_as_one_cut():
    probs = np.array([[0.5], [0.5], [0.5], [0.1]])
    labels = np.array([[1], [0], [0], [1]])
    # cut at .5 predicts three (F1 2 / (3 + 2) = .4); at .1 all four (4 / 6): .1 wins
    assert choose_tag_thresholds(probs, labels).tolist() == [0.1]


def test_f1_applies_thresholds_from_another_set():
    probs = np.array([[0.5, 0.2, 0.95], [0.2, 0.1, 0.1], [0.4, 0.9, 0.9]])
    labels = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 0]])
    # tag 0 predicts (1, 0, 1): TP 1, 2 predicted, 2 positive -> 1/2. tag 1: nothing to find, nothing
    # predicted -> undefined. tag 2 predicts (1, 0, 1) against (1, 0, 0) -> 2/3.
    np.testing.assert_allclose(tag_f1(probs, labels, [0.3, np.inf, 0.5]), [0.5, np.nan, 2 / 3])
    assert tag_f1(probs, labels, [0.3, 0.5, 0.5])[1] == 0.0  # a false positive where nothing is to find


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros((3, 2)), np.zeros((3, 3))), "must both be"),
        ((np.zeros(3), np.zeros(3)), "must both be"),
        ((np.zeros((3, 2)), np.zeros((3, 2)), [0.5]), "thresholds"),
    ],
)
def test_bad_shapes(args, message):
    function = tag_f1 if len(args) == 3 else tag_auc
    with pytest.raises(InputError, match=message):
        function(*args)
