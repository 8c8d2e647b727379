"""Gradient-masking diagnostics in both directions: known masking is flagged, an honestly
robust model is not."""

import json

import keras
import numpy as np
import pytest

import keras_secure as ks
from keras_secure import attacks as A
from keras_secure.callbacks import AdversarialTraining, defensive_distillation
from keras_secure.evaluation import evaluate_robustness

from conftest import VALUE_RANGE

EPS = 0.1


def attacks():
    return [A.FGSM(EPS, value_range=VALUE_RANGE),
            A.PGD(EPS, steps=20, value_range=VALUE_RANGE, seed=0)]


def fired(report) -> set:
    return {f["flag"] for f in report.flags}


@pytest.fixture(scope="module")
def test_set(digits):
    _, _, x_test, y_test = digits
    return x_test[:120], y_test[:120]


def test_exact_gradient_of_squeezing_is_flagged_and_bpda_is_not(cnn, test_set):
    """2-bit squeezing differentiated exactly (zero gradient almost everywhere): the white-box
    attacks do nothing, so every indicator that can see it fires; through keras_secure's
    adaptive path (BPDA) the same model is attacked properly and nothing fires."""
    x, y = test_set
    squeezed = keras.Sequential([keras.Input((8, 8, 1)),
                                 ks.layers.BitDepthReduction(2, VALUE_RANGE, gradient="exact"),
                                 cnn])
    masked = evaluate_robustness(ks.Classifier(squeezed, adaptive=False), x, y, attacks(),
                                 surrogate=cnn)
    assert {"vanishing_gradients", "unstable_gradients", "unbounded_attack_fails",
            "black_box_beats_white_box", "transfer_beats_white_box"} <= fired(masked)
    assert masked.masking_suspected
    worst = masked.worst_case
    assert "black_box_beats_white_box" in worst.flags
    assert "not evidence of robustness" in str(masked)
    adaptive = evaluate_robustness(squeezed, x, y, attacks(), surrogate=cnn)
    assert not adaptive.masking_suspected, adaptive.diagnostics_text()
    assert adaptive.worst_case.adversarial_accuracy < worst.adversarial_accuracy - 0.2


def test_defensive_distillation_is_flagged(digits, test_set):
    """T = 50 saturates the deployed softmax: the cross-entropy's gradient is exactly zero in
    float32 on most examples (Carlini & Wagner 2016)."""
    x_train, y_train, _, _ = digits
    x, y = test_set
    _, student = defensive_distillation(lambda: ks.models.small_cnn(seed=0), x_train, y_train,
                                        temperature=50.0, epochs=6, seed=0)
    report = evaluate_robustness(student, x, y, attacks())
    assert "vanishing_gradients" in fired(report)
    flag = next(f for f in report.flags if f["flag"] == "vanishing_gradients")
    assert flag["evidence"]["cross_entropy_vanishing"] >= 0.5
    assert flag["evidence"]["attack_direction_vanishing"] == 0.0  # ours do not vanish


@pytest.fixture(scope="module")
def adversarially_trained(digits):
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    model = ks.models.small_cnn(seed=0)
    model.compile(keras.optimizers.Adam(2e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0,
              callbacks=[AdversarialTraining(A.PGD(EPS, steps=7, value_range=VALUE_RANGE,
                                                   seed=0))])
    return model


def test_adversarially_trained_model_is_not_flagged(adversarially_trained, cnn, test_set):
    x, y = test_set
    report = evaluate_robustness(adversarially_trained, x, y, attacks(), surrogate=cnn)
    assert report.masking_suspected is False, report.diagnostics_text()
    checked = {f["flag"]: f["fired"] for f in report.diagnostics}
    assert checked == {"randomness_without_eot": False, "vanishing_gradients": False,
                       "unstable_gradients": False, "unbounded_attack_fails": False,
                       "black_box_beats_white_box": False, "transfer_beats_white_box": False,
                       "not_converged": False}
    assert report.worst_case.adversarial_accuracy > 0.6  # it is robust, and not by masking


def test_weak_attacks_are_flagged_as_not_converged(cnn, test_set):
    x, y = test_set
    report = evaluate_robustness(cnn, x, y, [A.FGSM(EPS, value_range=VALUE_RANGE)])
    assert "not_converged" in fired(report)
    assert report.results[0].flags == ("not_converged",)


def test_minimal_norm_attacks_that_fail_are_attack_failures(cnn, test_set):
    x, y = test_set[0][:40], test_set[1][:40]
    weak = A.CarliniWagnerL2(value_range=VALUE_RANGE, steps=2, binary_search_steps=1)
    report = evaluate_robustness(cnn, x, y, [weak, A.DeepFool(value_range=VALUE_RANGE)])
    failures = [f for f in report.diagnostics if f["flag"] == "unbounded_attack_fails"]
    by_attack = {f["evidence"]["attack"]: f["fired"] for f in failures}
    assert by_attack == {"C&W-L2": True, "DeepFool-L2": False}
    assert report["C&W-L2"].flags == ("unbounded_attack_fails",)
    assert report["DeepFool-L2"].flags == ()
    # a second, identical attack's row (labelled "#2") gets its own flag
    twice = evaluate_robustness(cnn, x, y, [weak, A.CarliniWagnerL2(
        value_range=VALUE_RANGE, steps=2, binary_search_steps=1)], diagnostic_examples=10)
    assert twice["C&W-L2 #2"].flags == ("unbounded_attack_fails",)


def test_randomized_models_need_eot(cnn, test_set):
    x, y = test_set[0][:20], test_set[1][:20]
    smoothed = keras.Sequential([keras.Input((8, 8, 1)),
                                 ks.layers.RandomizedSmoothing(cnn, sigma=0.1, num_samples=4,
                                                               seed=0)])
    plain = evaluate_robustness(smoothed, x, y, [A.PGD(EPS, steps=3, value_range=VALUE_RANGE,
                                                       seed=0)], diagnostic_examples=10)
    assert "randomness_without_eot" in fired(plain)
    eot = evaluate_robustness(smoothed, x, y, [A.PGD(EPS, steps=3, value_range=VALUE_RANGE,
                                                     seed=0, eot_samples=4)],
                              diagnostic_examples=10)
    flag = next(f for f in eot.diagnostics if f["flag"] == "randomness_without_eot")
    assert flag["fired"] is False


def test_diagnostics_in_every_export(cnn, test_set, tmp_path):
    x, y = test_set  # FGSM alone leaves examples that APGD-50 breaks (not_converged)
    report = evaluate_robustness(cnn, x, y, [A.FGSM(EPS, value_range=VALUE_RANGE)])
    data = json.loads(report.to_json(str(tmp_path / "r.json")))
    assert data["masking_suspected"] is True
    assert {f["flag"] for f in data["diagnostics"]} >= {"not_converged", "vanishing_gradients"}
    assert data["results"][0]["flags"] == ["not_converged"]
    assert "Masking Flags" in report.table()
    assert report.to_dataframe().loc["FGSM-Linf (eps=0.1)", "flags"] == ["not_converged"]
    off = evaluate_robustness(cnn, x, y, [A.FGSM(EPS, value_range=VALUE_RANGE)],
                              diagnostics=False)
    assert off.masking_suspected is None and off.diagnostics is None
    assert "not run" in off.diagnostics_text()
    with pytest.raises(ValueError, match="diagnostic_examples"):
        evaluate_robustness(cnn, x, y, [A.FGSM(EPS, value_range=VALUE_RANGE)],
                            diagnostic_examples=0)


@pytest.mark.slow
def test_minimal_norm_attacks_converge_at_their_defaults_on_mnist():
    """On MNIST-sized inputs (28x28, mostly saturated pixels) an unbounded minimal-norm attack
    must break >= 99% of the correctly classified inputs of an undefended model at its
    defaults; C&W at the paper's learning rate with 100 steps broke 51%."""
    x_train, y_train = ks.datasets.load_mnist("train")
    x_test, y_test = ks.datasets.load_mnist("test")
    model = ks.models.train_small_cnn(x_train[:2000], y_train[:2000], epochs=3, seed=0)
    clf = ks.Classifier(model)
    correct = np.flatnonzero(clf.predict_labels(x_test) == y_test)[:40]
    x, y = x_test[correct], y_test[correct]
    report = evaluate_robustness(model, x, y, [
        A.CarliniWagnerL2(value_range=VALUE_RANGE), A.DeepFool(value_range=VALUE_RANGE),
        A.FAB(value_range=VALUE_RANGE, seed=0)], diagnostic_examples=20)
    for row in report.results:
        assert row.success_rate >= 0.99, row
        assert row.flags == ()


def linear_digits_model(digits):
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=10, verbose=0)
    return model


def test_no_false_alarm_at_small_budgets_or_without_a_value_range(digits, test_set):
    """An exactly evaluated linear model at a small eps keeps robust examples at 10x that
    eps; the unbounded check uses a budget covering the whole valid range, and without a
    value range it is not made."""
    x, y = test_set
    model = linear_digits_model(digits)
    report = evaluate_robustness(model, x, y, [A.APGD(0.01, value_range=VALUE_RANGE, seed=0)])
    flag = next(f for f in report.diagnostics if f["flag"] == "unbounded_attack_fails")
    assert flag["fired"] is False and flag["evidence"]["eps"] == 1.0
    free = evaluate_robustness(model, x, y, [A.APGD(0.01, seed=0)])
    flag = next(f for f in free.diagnostics if f["flag"] == "unbounded_attack_fails")
    assert flag["fired"] is None and "value_range" in flag["message"]


def test_transfer_check_ignores_transfer_attacks_among_the_white_box_ones(cnn, test_set):
    x, y = test_set
    squeezed = keras.Sequential([keras.Input((8, 8, 1)),
                                 ks.layers.BitDepthReduction(2, VALUE_RANGE, gradient="exact"),
                                 cnn])
    masked = ks.Classifier(squeezed, adaptive=False)
    pgd = A.PGD(EPS, steps=20, value_range=VALUE_RANGE, seed=0)
    report = evaluate_robustness(masked, x, y, [pgd, A.Transfer(cnn, pgd)], surrogate=cnn)
    assert "transfer_beats_white_box" in fired(report)


def test_models_without_input_gradient_are_flagged_not_crashed(cnn, test_set):
    """tf.stop_gradient in front of the model: gradient attacks refuse it, a gradient-free
    report runs, and its diagnostics say the gradient vanishes."""
    import tensorflow as tf

    class StopGradient(keras.layers.Layer):
        def call(self, inputs):
            return tf.stop_gradient(inputs)

    x, y = test_set[0][:40], test_set[1][:40]
    stopped = keras.Sequential([keras.Input((8, 8, 1)), StopGradient(), cnn])
    report = evaluate_robustness(ks.Classifier(stopped, from_logits=True), x, y,
                                 [A.Square(EPS, queries=100, value_range=VALUE_RANGE, seed=0)])
    assert "vanishing_gradients" in fired(report)
    checked = {f["flag"]: f["fired"] for f in report.diagnostics}
    assert checked["unbounded_attack_fails"] is None and checked["not_converged"] is None


def test_surrogate_and_suite_settings_are_checked_before_any_attack(cnn, test_set):
    x, y = test_set[0][:10], test_set[1][:10]
    five = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="`surrogate` must have the model's 10 classes"):
        evaluate_robustness(cnn, x, y, attacks(), surrogate=five)
    flat = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="`surrogate` must take the model's inputs"):
        evaluate_robustness(cnn, x, y, attacks(), surrogate=flat)
    with pytest.raises(ValueError, match="diagnostics=False"):
        evaluate_robustness(cnn, x, y, attacks(), surrogate=cnn, diagnostics=False)
    with pytest.raises(ValueError, match="`norm` is a setting of `suite`"):
        evaluate_robustness(cnn, x, y, attacks(), norm="l2")
