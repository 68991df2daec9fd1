"""classifiers.metrics: every metric agrees with scikit-learn, and undefined cases say so instead of NaN."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from classifiers import (
    METRIC_NAMES,
    ClassifierError,
    accuracy,
    auroc,
    average_precision,
    balanced_accuracy,
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    npv,
    ppv,
    sensitivity,
    specificity,
)

Y_TRUE = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1])
Y_PROB = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.6, 0.55, 0.3, 0.05, 0.5, 0.7])
Y_PRED = (Y_PROB >= 0.5).astype(int)


@pytest.fixture(autouse=True)
def no_warnings():
    """Metrics must neither warn nor return NaN: any warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_each_metric_matches_scikit_learn():
    assert accuracy(Y_TRUE, Y_PROB) == pytest.approx(skm.accuracy_score(Y_TRUE, Y_PRED))
    assert balanced_accuracy(Y_TRUE, Y_PROB) == pytest.approx(skm.balanced_accuracy_score(Y_TRUE, Y_PRED))
    assert auroc(Y_TRUE, Y_PROB) == pytest.approx(skm.roc_auc_score(Y_TRUE, Y_PROB))
    assert average_precision(Y_TRUE, Y_PROB) == pytest.approx(skm.average_precision_score(Y_TRUE, Y_PROB))
    assert sensitivity(Y_TRUE, Y_PROB) == pytest.approx(skm.recall_score(Y_TRUE, Y_PRED))
    assert specificity(Y_TRUE, Y_PROB) == pytest.approx(skm.recall_score(Y_TRUE, Y_PRED, pos_label=0))
    assert ppv(Y_TRUE, Y_PROB) == pytest.approx(skm.precision_score(Y_TRUE, Y_PRED))
    assert npv(Y_TRUE, Y_PROB) == pytest.approx(skm.precision_score(Y_TRUE, Y_PRED, pos_label=0))


def test_binary_metrics_collects_every_metric_at_a_threshold():
    m = binary_metrics(Y_TRUE, Y_PROB, threshold=0.3)
    assert list(m) == list(METRIC_NAMES) and m.undefined == {}
    assert m["sensitivity"] == pytest.approx(skm.recall_score(Y_TRUE, Y_PROB >= 0.3))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(Y_TRUE, Y_PROB))  # threshold-free


def test_one_class_subset_is_undefined_with_a_reason():
    m = binary_metrics([0, 0, 0], [0.2, 0.7, 0.1])
    assert m["auroc"] is None and m["balanced_accuracy"] is None and m["sensitivity"] is None
    assert m["ap"] is None  # no positives
    assert "both classes" in m.undefined["auroc"]
    assert m["accuracy"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert not any(isinstance(v, float) and np.isnan(v) for v in m.values())


def test_no_predicted_positives_leaves_ppv_undefined():
    m = binary_metrics([0, 1, 1], [0.1, 0.2, 0.3])
    assert m["ppv"] is None and m.undefined["ppv"] == "no predicted positives"
    assert m["npv"] == pytest.approx(1 / 3)


def test_choose_threshold_on_validation_data():
    youden = choose_threshold(Y_TRUE, Y_PROB, rule="youden")
    fpr, tpr, thresholds = skm.roc_curve(Y_TRUE, Y_PROB)
    assert youden == pytest.approx(thresholds[np.argmax(tpr - fpr)])
    assert 0.0 < choose_threshold(Y_TRUE, Y_PROB, rule="f1") <= 1.0
    assert choose_threshold(Y_TRUE, Y_PROB, rule="fixed") == 0.5
    assert choose_threshold([1, 1], [0.2, 0.9]) == 0.5  # one class: nothing to choose from


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    ci = bootstrap_ci(Y_TRUE, Y_PROB, "auroc", n=200, seed=0, level=0.9)
    assert ci == bootstrap_ci(Y_TRUE, Y_PROB, "auroc", n=200, seed=0, level=0.9)
    assert ci.low <= ci.estimate <= ci.high and ci.level == 0.9
    assert 0 < ci.n_resamples <= 200  # one-class resamples are skipped
    undefined = bootstrap_ci([1, 1, 1], [0.3, 0.6, 0.9], "auroc", n=50)
    assert undefined.estimate is None and undefined.low is None and "both classes" in undefined.reason


@pytest.mark.parametrize("metric", ["auroc", "balanced_accuracy"])
def test_bootstrap_replicates_are_scikit_learns(metric):
    """The all-at-once replicates equal scikit-learn's value on every resample: ties (coarse scores), one-class
    resamples (skipped), small sets; the interval is that of the per-resample loop."""
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(4, 40))
        y_true, y_prob = rng.integers(0, 2, n), np.round(rng.random(n), 1)
        y_true[:2] = [0, 1]
        draws = np.random.default_rng(seed)
        values = []
        for _ in range(100):
            idx = draws.integers(0, n, n)
            t, p = y_true[idx], y_prob[idx]
            if t.min() != t.max():
                values.append(skm.roc_auc_score(t, p) if metric == "auroc" else
                              skm.balanced_accuracy_score(t, (p >= 0.5).astype(int)))
        ci = bootstrap_ci(y_true, y_prob, metric, n=100, seed=seed)
        assert ci.n_resamples == len(values)
        assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ClassifierError, match="3 values but y_prob has 2"):
        binary_metrics([0, 1, 1], [0.2, 0.3])
    with pytest.raises(ClassifierError, match="0 or 1"):
        binary_metrics([0, 2], [0.2, 0.3])
    with pytest.raises(ClassifierError, match="unknown metric 'f2'"):
        bootstrap_ci(Y_TRUE, Y_PROB, "f2")
    with pytest.raises(ValueError):  # ClassifierError is a ValueError
        choose_threshold(Y_TRUE, Y_PROB, rule="best")
