"""Shared by the benchmark scripts: time per training step of ``fit``."""

from __future__ import annotations

import statistics
import time

import keras


class StepTimer(keras.callbacks.Callback):
    """Wall-clock time of each epoch."""

    def __init__(self):
        super().__init__()
        self.epoch_times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_times.append(time.perf_counter() - self._start)


def fit_step_time(model, x, y, callbacks=(), epochs=4, batch=64, **fit_kwargs) -> float:
    """Median seconds per step of ``model.fit`` over epochs 2.. (epoch 1 traces the step)."""
    timer = StepTimer()
    model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, callbacks=[*callbacks, timer],
              **fit_kwargs)
    steps = -(-len(x) // batch)
    return statistics.median(timer.epoch_times[1:]) / steps
