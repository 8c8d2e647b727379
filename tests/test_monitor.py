"""RobustnessMonitor with `every=`: exact values on measured epochs, NaN on the others."""

import csv
import math

import keras
import numpy as np
import pytest

import keras_secure as ks
from keras_secure import attacks as A
from keras_secure.callbacks import RobustnessMonitor

from conftest import VALUE_RANGE


class _Reference(keras.callbacks.Callback):
    """Robust accuracy under FGSM (deterministic) computed independently at each epoch end:
    a fresh attack, Keras's predictions, NumPy's arg-max."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.values = x, y, []

    def on_epoch_end(self, epoch, logs=None):
        x_adv = A.FGSM(0.1, value_range=VALUE_RANGE)(self.model, self.x, self.y)
        clean = self.model.predict(self.x, verbose=0).argmax(1) == self.y
        adv = self.model.predict(x_adv, verbose=0).argmax(1) == self.y
        self.values.append(float(np.mean(clean & adv)))


def test_every_k_logs_the_measured_value_and_nan_between(digits, tmp_path):
    x, y, x_test, y_test = digits
    x_val, y_val = x_test[:80], y_test[:80]
    keras.utils.set_random_seed(0)
    model = ks.models.small_cnn(seed=0)
    model.compile(keras.optimizers.Adam(2e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    monitor = RobustnessMonitor(x_val, y_val[:, None], A.FGSM(0.1, value_range=VALUE_RANGE),
                                every=2)
    reference = _Reference(x_val, y_val)
    log = tmp_path / "log.csv"
    model.fit(x[:256], y[:256], epochs=4, verbose=0,
              callbacks=[monitor, reference, keras.callbacks.CSVLogger(str(log))])
    rows = list(csv.DictReader(open(log)))
    assert len(rows) == 4
    logged = [float(r["val_robust_accuracy"]) for r in rows]
    # measured at the first epoch (so that EarlyStopping / ModelCheckpoint start from a real
    # value), every 2 epochs after it, and at the last epoch; NaN in between
    assert [e for e, _ in monitor.history] == [0, 2, 3]
    assert math.isnan(logged[1])
    for epoch in (0, 2, 3):
        assert logged[epoch] == pytest.approx(reference.values[epoch], abs=1e-12)
    collapsed = [r["val_robust_accuracy_collapsed"] for r in rows]
    assert collapsed[1] == "nan" and collapsed[0] == "0.0"


def test_every_k_keeps_early_stopping_and_checkpoints_on_real_values(digits, tmp_path):
    x, y, x_test, y_test = digits
    keras.utils.set_random_seed(0)
    model = ks.models.small_cnn(seed=0)
    model.compile(keras.optimizers.Adam(2e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    monitor = RobustnessMonitor(x_test[:60], y_test[:60], A.FGSM(0.1, value_range=VALUE_RANGE),
                                every=3)
    best = tmp_path / "best.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(str(best), monitor="val_robust_accuracy",
                                                 mode="max", save_best_only=True)
    model.fit(x[:256], y[:256], epochs=4, verbose=0, callbacks=[monitor, checkpoint])
    # the checkpoint's best is the best measured value, never NaN
    assert checkpoint.best == max(v for _, v in monitor.history)


def test_labels_are_checked_against_the_model_before_the_first_step(digits):
    x, y, x_test, y_test = digits
    model = ks.models.small_cnn(seed=0)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in model.get_weights()]
    monitor = RobustnessMonitor(x_test[:8], np.full(8, 12), A.FGSM(0.1))
    with pytest.raises(ValueError, match=r"`y_val` must hold labels in \[0, 9\]"):
        model.fit(x[:64], y[:64], epochs=1, verbose=0, callbacks=[monitor])
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)
