"""Membership-inference audit: TF Privacy's attacks on Keras 3 models."""

import sys

import keras
import numpy as np
import pytest
import sklearn.metrics
import sklearn.utils

import keras_secure as ks
from keras_secure.privacy import advantage_bound, audit_membership


@pytest.fixture(scope="module")
def overfit(digits):
    """A CNN trained to memorise 150 digits, so its members have visibly lower loss."""
    x_train, y_train, x_test, y_test = digits
    model = ks.models.train_small_cnn(x_train[:150], y_train[:150], epochs=60, seed=1)
    return model, (x_train[:150], y_train[:150]), (x_test[:150], y_test[:150])


def test_threshold_attack_equals_the_roc_of_the_loss(overfit):
    model, (x_in, y_in), (x_out, y_out) = overfit
    flag_before = getattr(sys, "skip_tf_privacy_import", "unset")
    audit = audit_membership(model, (x_in, y_in), (x_out, y_out),
                             attacks=("threshold", "logistic_regression"))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    scores = -np.concatenate([np.asarray(loss(y_in, model(x_in))),
                              np.asarray(loss(y_out, model(x_out)))])
    members = np.r_[np.ones(len(y_in)), np.zeros(len(y_out))]
    fpr, tpr, _ = sklearn.metrics.roc_curve(members, scores)
    assert audit.auc["threshold"] == pytest.approx(sklearn.metrics.roc_auc_score(members, scores),
                                                   abs=1e-3)
    assert audit.advantage["threshold"] == pytest.approx(np.max(np.abs(tpr - fpr)), abs=1e-3)
    # a memorising model leaks: the loss separates members from non-members
    assert audit.auc["threshold"] > 0.55
    assert 0.0 <= audit.advantage["logistic_regression"] <= 1.0
    assert audit.max_auc == max(audit.auc.values())
    assert audit.to_dict()["n_train"] == 150
    # nothing outlives the call: neither the scikit-learn names nor TF Privacy's import flag
    assert not hasattr(sklearn.utils, "parallel_backend")
    assert getattr(sys, "skip_tf_privacy_import", "unset") == flag_before


def test_identical_member_and_non_member_sets_leak_nothing(overfit):
    model, (x, y), _ = overfit
    audit = audit_membership(model, (x, y), (x, keras.utils.to_categorical(y, 10)),
                             attacks=("threshold", "threshold_entropy"))
    for name in ("threshold", "threshold_entropy"):
        assert audit.auc[name] == pytest.approx(0.5, abs=1e-12)
        assert audit.advantage[name] == pytest.approx(0.0, abs=1e-12)


def test_audit_is_reproducible_and_leaves_numpy_state_alone(overfit):
    model, train, test = overfit
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    first = audit_membership(model, train, test, attacks=("logistic_regression",))
    assert np.random.rand() == expected_next
    second = audit_membership(model, train, test, attacks=("logistic_regression",))
    assert first.auc == second.auc


def test_audit_rejects_bad_input(overfit):
    model, train, test = overfit
    with pytest.raises(ValueError, match="attacks"):
        audit_membership(model, train, test, attacks=("loss_threshold",))
    with pytest.raises(ValueError, match="attacks"):
        audit_membership(model, train, test, attacks=())
    with pytest.raises(TypeError, match="attacks"):
        audit_membership(model, train, test, attacks="threshold")
    with pytest.raises(TypeError, match="train"):
        audit_membership(model, train[0], test)
    with pytest.raises(ValueError, match="`test.0.` and `test.1.` must have the same number"):
        audit_membership(model, train, (test[0], test[1][:10]))
    with pytest.raises(ValueError, match="batch_size"):
        audit_membership(model, train, test, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        audit_membership(model, train, (test[0][:0], test[1][:0]))


def test_advantage_bound_is_the_hypothesis_testing_bound_of_dp():
    # by hand: (e - 1 + 2e-5) / (e + 1) = 1.7182818 / 3.7182818 (+ 2e-5 / 3.718)
    assert advantage_bound(1.0, 1e-5) == pytest.approx((np.e - 1 + 2e-5) / (np.e + 1), rel=1e-12)
    assert advantage_bound(0.0, 0.0) == 0.0
    assert advantage_bound(50.0, 1e-5) == pytest.approx(1.0)
    assert advantage_bound(float("inf"), 1e-5) is None
    with pytest.raises(ValueError, match="epsilon"):
        advantage_bound(-1.0, 1e-5)
    with pytest.raises(ValueError, match="delta"):
        advantage_bound(1.0, 1.0)
