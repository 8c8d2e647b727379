"""The training-step hook, adversarial training and robustness monitoring."""

import csv
import os
import textwrap

import keras
import numpy as np
import pytest
from _subprocess import run_python
import tensorflow as tf

import keras_secure as ks
from keras_secure import attacks as A
from keras_secure.callbacks import AdversarialTraining, RobustnessMonitor
from keras_secure.training import Stage, StageCallback, hook_of

from conftest import VALUE_RANGE, accuracy

EVAL_PGD = A.PGD(0.1, steps=20, value_range=VALUE_RANGE, seed=1)


def fresh_model(seed=0, lr=2e-3):
    keras.utils.set_random_seed(seed)
    model = ks.models.small_cnn(seed=seed)
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def train_pgd():
    return A.PGD(0.1, steps=7, value_range=VALUE_RANGE, seed=0)


@pytest.fixture(scope="module")
def pgd_trained(digits):
    x, y, _, _ = digits
    model = fresh_model()
    history = model.fit(x, y, epochs=10, batch_size=64, verbose=0,
                        callbacks=[AdversarialTraining(train_pgd())])
    return model, history


def robust(model, eval_set):
    x, y = eval_set
    return accuracy(model, EVAL_PGD(model, x, y), y)


# -- evidence ---------------------------------------------------------------------------------
def test_pgd_training_makes_the_cnn_robust(pgd_trained, cnn, eval_set):
    model, history = pgd_trained
    x, y = eval_set
    # measured: standard 96.5% clean / 53% under PGD-20; PGD-AT 98.5% / 87.5%
    assert robust(model, eval_set) >= robust(cnn, eval_set) + 0.30
    assert accuracy(model, x, y) >= accuracy(cnn, x, y) - 0.05
    assert "adv_loss" in history.history and len(history.history["adv_loss"]) == 10
    assert history.history["adv_loss"][-1] < history.history["adv_loss"][0]


def test_fast_mode_is_close_to_pgd_training(pgd_trained, digits, eval_set):
    x, y, _, _ = digits
    model = fresh_model()
    model.fit(x, y, epochs=10, batch_size=64, verbose=0,
              callbacks=[AdversarialTraining(train_pgd(), mode="fast")])
    assert robust(model, eval_set) >= robust(pgd_trained[0], eval_set) - 0.10


def test_trades_beta_trades_accuracy_for_robustness(digits, eval_set):
    x, y, _, _ = digits
    results = {}
    for beta in (0.0, 6.0):
        model = fresh_model()
        history = model.fit(x, y, epochs=8, batch_size=64, verbose=0, callbacks=[
            AdversarialTraining(train_pgd(), mode="trades", beta=beta)])
        results[beta] = (accuracy(model, *eval_set), robust(model, eval_set))
        assert "trades_kl" in history.history
    assert results[6.0][1] >= results[0.0][1] + 0.15, results  # robustness grows with beta
    assert results[6.0][0] <= results[0.0][0] + 0.01, results  # clean accuracy does not


def test_mixed_mode_weights_clean_and_adversarial_losses(digits):
    x, y, _, _ = digits
    model = fresh_model()
    history = model.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0,
                        callbacks=[AdversarialTraining(train_pgd(), mode="mixed", ratio=1.0)])
    assert np.isfinite(history.history["adv_loss"][0])
    # ratio=1: the clean half has weight 0, so the loss is (about) the adversarial loss
    assert history.history["loss"][-1] == pytest.approx(history.history["adv_loss"][-1],
                                                        rel=0.25)


# -- the hook ---------------------------------------------------------------------------------
def test_step_is_restored_and_reusable(digits):
    x, y, _, _ = digits
    model = fresh_model()
    callback = AdversarialTraining(train_pgd())
    for _ in range(2):
        history = model.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0,
                            callbacks=[callback])
        assert "adv_loss" in history.history
        assert "train_step" not in model.__dict__ and hook_of(model) is None
    plain = model.fit(x[:128], y[:128], epochs=1, verbose=0)
    assert "adv_loss" not in plain.history


class Boom(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        raise RuntimeError("boom")


def test_step_is_restored_after_fit_raises(digits):
    x, y, _, _ = digits
    model = fresh_model()
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x[:128], y[:128], epochs=1, verbose=0,
                  callbacks=[AdversarialTraining(train_pgd()), Boom()])
    history = model.fit(x[:128], y[:128], epochs=1, verbose=0)
    assert "adv_loss" not in history.history and "train_step" not in model.__dict__


def test_data_formats_validation_and_weights(digits):
    x, y, x_test, y_test = digits
    model = fresh_model()
    ds = tf.data.Dataset.from_tensor_slices((x[:256], y[:256])).batch(64)
    history = model.fit(ds, epochs=1, verbose=0, validation_data=(x_test[:64], y_test[:64]),
                        callbacks=[AdversarialTraining(train_pgd())])
    assert {"adv_loss", "val_loss", "val_accuracy"} <= set(history.history)
    weights = np.where(y[:256] == 0, 5.0, 1.0)
    history = model.fit(x[:256], y[:256], sample_weight=weights, epochs=1, verbose=0,
                        callbacks=[AdversarialTraining(train_pgd(), mode="mixed")])
    assert np.isfinite(history.history["loss"][0])
    history = model.fit(x[:256], y[:256], class_weight={0: 5.0}, epochs=1, verbose=0,
                        callbacks=[AdversarialTraining(train_pgd(), mode="trades")])
    assert np.isfinite(history.history["loss"][0])
    onehot = keras.utils.to_categorical(y[:128], 10)
    model_ce = ks.models.small_cnn(seed=0)
    model_ce.compile("adam", keras.losses.CategoricalCrossentropy(from_logits=True))
    model_ce.fit(x[:128], onehot, epochs=1, verbose=0,
                 callbacks=[AdversarialTraining(train_pgd())])


def test_softmax_output_models_are_trained_adversarially(digits):
    x, y, _, _ = digits
    model = keras.Sequential([ks.models.small_cnn(seed=0), keras.layers.Softmax()])
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(x[:128], y[:128], epochs=1, verbose=0,
                        callbacks=[AdversarialTraining(train_pgd(), mode="trades")])
    assert np.isfinite(history.history["trades_kl"][0])


def test_mixed_precision(digits):
    x, y, _, _ = digits
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = fresh_model()
        history = model.fit(x[:128], y[:128], epochs=1, verbose=0,
                            callbacks=[AdversarialTraining(train_pgd())])
    finally:
        keras.config.set_dtype_policy(previous)
    assert np.isfinite(history.history["adv_loss"][0])


def test_eps_warmup_ramps_linearly(digits):
    x, y, _, _ = digits
    callback = AdversarialTraining(train_pgd(), warmup_epochs=4)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(callback.stage.eps_var.numpy()))

    fresh_model().fit(x[:64], y[:64], epochs=5, verbose=0, callbacks=[callback, Spy()])
    np.testing.assert_allclose(seen, [0.025, 0.05, 0.075, 0.1, 0.1], rtol=1e-6)


class GradientStage(Stage):
    computes_gradients = True


def test_hook_refuses_bad_setups(digits):
    x, y, _, _ = digits
    uncompiled = ks.models.small_cnn(seed=0)
    with pytest.raises(ValueError, match="compile"):  # Keras' own check comes first in fit
        uncompiled.fit(x[:8], y[:8], verbose=0, callbacks=[AdversarialTraining(train_pgd())])
    with pytest.raises(ValueError, match="needs a compiled model"):
        AdversarialTraining(train_pgd()).set_model(uncompiled)
    model = fresh_model()
    with pytest.raises(ValueError, match="two gradient stages"):
        model.fit(x[:8], y[:8], verbose=0, callbacks=[StageCallback(GradientStage()),
                                                      StageCallback(GradientStage())])
    model = fresh_model()
    with pytest.raises(ValueError, match="need labels"):
        model.fit(x[:8], verbose=0, callbacks=[AdversarialTraining(train_pgd())])


@pytest.mark.parametrize("make, match", [
    (lambda: AdversarialTraining("pgd"), "`attack` must be a keras_secure"),
    (lambda: AdversarialTraining(train_pgd(), mode="free"), "`mode`"),
    (lambda: AdversarialTraining(train_pgd(), mode="mixed", ratio=1.5), "`ratio`"),
    (lambda: AdversarialTraining(train_pgd(), beta=-1), "`beta`"),
    (lambda: AdversarialTraining(train_pgd(), warmup_epochs=-1), "`warmup_epochs`"),
    (lambda: AdversarialTraining(A.PGD(0.1, targeted=True)), "untargeted"),
    (lambda: AdversarialTraining(A.DeepFool()), "`eps` budget"),
    (lambda: AdversarialTraining(A.PGD(1.0, norm="l2"), mode="fast"), "L-inf only"),
    (lambda: AdversarialTraining(A.FGSM(0.1), mode="trades"), "iterative attack"),
    (lambda: RobustnessMonitor(np.zeros((4, 8, 8, 1)), None, train_pgd()), "`y_val`"),
    (lambda: RobustnessMonitor(np.zeros((4, 8, 8, 1)), np.zeros(3), train_pgd()), "same length"),
    (lambda: RobustnessMonitor(np.zeros((4, 8, 8, 1)), np.zeros(4), "pgd"), "`attack`"),
    (lambda: RobustnessMonitor(np.zeros((4, 8, 8, 1)), np.zeros(4), train_pgd(), every=0),
     "`every`"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_invalid_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# -- monitoring -------------------------------------------------------------------------------
def test_robustness_monitor_feeds_keras_callbacks(digits, tmp_path):
    x, y, x_test, y_test = digits
    monitor = RobustnessMonitor(x_test, y_test, A.FGSM(0.1, value_range=VALUE_RANGE),
                                max_samples=100)
    best = str(tmp_path / "best.keras")
    log = str(tmp_path / "log.csv")
    model = fresh_model()
    model.fit(x[:512], y[:512], epochs=3, verbose=0, callbacks=[
        monitor,
        keras.callbacks.ModelCheckpoint(best, monitor="val_robust_accuracy", mode="max",
                                        save_best_only=True),
        keras.callbacks.CSVLogger(log),
        keras.callbacks.EarlyStopping(monitor="val_robust_accuracy", mode="max", patience=5),
    ])
    rows = list(csv.DictReader(open(log)))
    assert len(rows) == 3 and "val_robust_accuracy" in rows[0]
    values = [float(r["val_robust_accuracy"]) for r in rows]
    assert values == [v for _, v in monitor.history]
    assert os.path.exists(best)
    saved = keras.saving.load_model(best)
    assert monitor.attack_label == "FGSM-Linf (eps=0.1)"
    x_m, y_m = x_test[:100], y_test[:100]
    x_adv = A.FGSM(0.1, value_range=VALUE_RANGE)(saved, x_m, y_m)
    assert accuracy(saved, x_adv, y_m) == pytest.approx(max(values), abs=1e-9)


MIRRORED = textwrap.dedent("""
    import os
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    import keras_secure as ks
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = ks.datasets.load_digits("train")
    with strategy.scope():
        model = ks.models.small_cnn(seed=0)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        at = ks.callbacks.AdversarialTraining(
            ks.attacks.PGD(0.1, steps=3, value_range=(0, 1), seed=0), mode="trades")
    history = model.fit(x[:512], y[:512], batch_size=64, epochs=2, verbose=0, callbacks=[at])
    h = history.history
    assert strategy.num_replicas_in_sync == 2
    assert np.isfinite(h["loss"]).all() and np.isfinite(h["trades_kl"]).all(), h
    assert h["loss"][-1] < h["loss"][0], h
    print("MIRRORED OK", {k: v[-1] for k, v in h.items()})
""")


@pytest.mark.slow
def test_adversarial_training_under_mirrored_strategy():
    result = run_python(MIRRORED)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "MIRRORED OK" in result.stdout


def test_monitor_warns_when_robust_accuracy_collapses():
    monitor = RobustnessMonitor(np.zeros((4, 8, 8, 1)), np.zeros(4), train_pgd(),
                                collapse_drop=0.2)
    values = iter([0.8, 0.7, 0.4])
    monitor.robust_accuracy = lambda: next(values)
    logs = [{}, {}, {}]
    monitor.on_epoch_end(0, logs[0])
    monitor.on_epoch_end(1, logs[1])
    with pytest.warns(UserWarning, match="catastrophic overfitting"):
        monitor.on_epoch_end(2, logs[2])
    assert [lg["val_robust_accuracy_collapsed"] for lg in logs] == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="`collapse_drop`"):
        RobustnessMonitor(np.zeros((4, 8, 8, 1)), np.zeros(4), train_pgd(), collapse_drop=2)


class PlainGradientStage(Stage):
    """A gradient stage doing what Keras does, from the hook's per-example losses."""

    computes_gradients = True
    needs_labels = True

    def apply_gradients(self, model, x, y, sample_weight, per_example_loss):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            losses = per_example_loss(y, y_pred, sample_weight)
            loss = tf.reduce_mean(losses)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return y_pred, losses


def test_gradient_stage_interface_reproduces_a_plain_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    weights, losses = [], []
    for callbacks in ([], [StageCallback(PlainGradientStage())]):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.layers[-1].set_weights([np.ones((4, 3), np.float32) * 0.1,
                                      np.zeros(3, np.float32)])
        model.compile(keras.optimizers.SGD(0.5),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0,
                            callbacks=callbacks)
        weights.append(model.get_weights())
        losses.append(history.history["loss"])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
