"""Distributed evaluation (issue 17): evaluate_robustness(strategy=...) splits attack batches
across replicas with strategy.run, and the report is identical to the single-device one under
the same seeds (two logical CPUs, in a child process: logical devices must be set before
TensorFlow starts)."""

import numpy as np
import pytest
import tensorflow as tf

import keras_secure as ks
from keras_secure.evaluation import evaluate_robustness

from _subprocess import run_python

VALUE_RANGE = (0.0, 1.0)


def test_bad_strategy_arguments_are_refused_before_any_work(cnn, eval_set):
    x, y = eval_set
    fgsm = ks.attacks.FGSM(0.1, value_range=VALUE_RANGE)
    with pytest.raises(TypeError, match="`strategy` must be a tf.distribute.Strategy.*"
                                        "Received: strategy of type str"):
        evaluate_robustness(cnn, x[:8], y[:8], [fgsm], strategy="mirrored")
    with pytest.raises(TypeError, match="Received: strategy of type int"):
        evaluate_robustness(cnn, x[:8], y[:8], [fgsm], strategy=2)


def test_one_device_strategy_gives_the_default_report(cnn, eval_set):
    x, y = eval_set[0][:40], eval_set[1][:40]
    attacks = [ks.attacks.PGD(0.1, steps=3, value_range=VALUE_RANGE, seed=3),
               ks.attacks.Square(0.1, queries=20, value_range=VALUE_RANGE, seed=4)]
    reports = [evaluate_robustness(cnn, x, y, attacks, batch_size=16, diagnostics=False,
                                   keep_adversarial=True, strategy=strategy)
               for strategy in (None, tf.distribute.OneDeviceStrategy("/cpu:0"))]
    for label in reports[0].adversarial:
        np.testing.assert_array_equal(reports[0].adversarial[label],
                                      reports[1].adversarial[label])
    # the evaluation does not consume the attacks' own random streams: run again, same figures
    again = evaluate_robustness(cnn, x, y, attacks, batch_size=16, diagnostics=False,
                                keep_adversarial=True)
    for label in reports[0].adversarial:
        np.testing.assert_array_equal(reports[0].adversarial[label], again.adversarial[label])


TWO_CPUS = """
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    import keras_secure as ks
    from keras_secure.evaluation import evaluate_robustness

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    x, y = ks.datasets.load_digits("train")
    x_test, y_test = ks.datasets.load_digits("test")
    model = ks.models.train_small_cnn(x, y, epochs=3, seed=0)
    surrogate = ks.models.train_small_cnn(x, y, epochs=2, seed=1)
    vr = (0.0, 1.0)

    def same(one, two):
        assert [r.attack for r in one.rows] == [r.attack for r in two.rows]
        for a, b in zip(one.rows, two.rows):
            for field in ("adversarial_accuracy", "success_rate", "mean_perturbation",
                          "median_perturbation", "p90_perturbation"):
                va, vb = getattr(a, field), getattr(b, field)
                assert va == vb or (np.isnan(va) and np.isnan(vb)), (a.attack, field, va, vb)
        for label in one.robust:
            assert np.array_equal(one.robust[label], two.robust[label]), label
        for label in one.adversarial:
            assert np.array_equal(one.adversarial[label], two.adversarial[label]), label

    # random attacks (random starts, Square's windows, a transfer attack's inner PGD), 50
    # examples in units of 16: four units, the last padded; two steps of two replicas
    attacks = [ks.attacks.FGSM(0.1, value_range=vr),
               ks.attacks.PGD(0.1, steps=5, value_range=vr, seed=1),
               ks.attacks.PGD(1.0, norm="l2", steps=5, restarts=2, value_range=vr, seed=2),
               ks.attacks.Square(0.1, queries=60, value_range=vr, seed=3),
               ks.attacks.Transfer(surrogate, ks.attacks.PGD(0.1, steps=5, value_range=vr,
                                                             seed=4))]
    runs = [evaluate_robustness(model, x_test[:50], y_test[:50], attacks, batch_size=16,
                                keep_adversarial=True, diagnostics=False, strategy=s)
            for s in (None, mirrored)]
    same(*runs)
    assert runs[0]["PGD-Linf (eps=0.1)"].adversarial_accuracy < runs[0].clean_accuracy

    # an odd number of units (three: one replica idles in the second step)
    runs = [evaluate_robustness(model, x_test[:45], y_test[:45], attacks[1:3], batch_size=16,
                                keep_adversarial=True, diagnostics=False, strategy=s)
            for s in (None, mirrored)]
    same(*runs)
    with mirrored.scope():  # strategy=None: the enclosing scope's strategy
        in_scope = evaluate_robustness(model, x_test[:45], y_test[:45], attacks[1:3],
                                       batch_size=16, keep_adversarial=True, diagnostics=False)
    same(runs[0], in_scope)

    # AutoAttack's standard suite (cascade: later attacks on fewer examples), at a small eps
    runs = [evaluate_robustness(model, x_test[:16], y_test[:16], suite="standard", eps=0.1,
                                value_range=vr, batch_size=8, keep_adversarial=True,
                                diagnostics=False, strategy=s)
            for s in (None, mirrored)]
    same(*runs)
    assert len(runs[0].results) == 4, runs[0].suite
    assert runs[0].results[-1].adversarial_accuracy > 0  # Square ran on survivors

    # refused with a strategy of two replicas: randomized layers, an attack with its own call
    smoothed = keras.Sequential([keras.Input((8, 8, 1)), ks.layers.RandomizedSmoothing(
        model, sigma=0.1, num_samples=4, seed=0)])
    try:
        evaluate_robustness(smoothed, x_test[:8], y_test[:8], attacks[:1], strategy=mirrored,
                            diagnostics=False)
        raise AssertionError("no error for a randomized model")
    except ValueError as err:
        assert "randomized layers (RandomizedSmoothing)" in str(err), err
        assert "Received: strategy=MirroredStrategy with 2 replicas" in str(err), err

    class OwnCall(ks.attacks.FGSM):
        def __call__(self, model, x, y=None):
            return super().__call__(model, x, y)

    try:
        evaluate_robustness(model, x_test[:8], y_test[:8], [OwnCall(0.1, value_range=vr)],
                            strategy=mirrored, diagnostics=False)
        raise AssertionError("no error for an attack with its own __call__")
    except ValueError as err:
        assert "run their own __call__" in str(err), err
    print("DISTRIBUTED EVAL OK")
"""


@pytest.mark.slow
def test_two_replicas_give_the_single_device_report():
    result = run_python(TWO_CPUS)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DISTRIBUTED EVAL OK" in result.stdout
