"""Poisson-sampled batches, the sampling that DP-SGD's privacy amplification assumes."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_secure.attacks.base import check_number


def poisson_batches(x, y, batch_size: int, seed: int | None = None):
    """An endless ``tf.data.Dataset`` of Poisson-sampled batches, and the steps per epoch.

    Every batch includes each of the ``N`` examples independently with probability
    ``q = batch_size / N``, so batch sizes vary around ``batch_size`` (and may be 0). This is
    the sampling for which DP-SGD's accounting with ``sampling="poisson"`` holds (Abadi et al.
    2016; shuffled fixed-size batches are not Poisson samples). Train with
    ``model.fit(dataset, steps_per_epoch=steps, epochs=...)``.

    Args:
        x: inputs ``(N, ...)``.
        y: labels ``(N, ...)``.
        batch_size: expected batch size, 1..N.
        seed: seed of the sampling. Defaults to None.

    Returns:
        ``(dataset, steps_per_epoch)`` with ``steps_per_epoch = round(N / batch_size)``.

    Raises:
        ValueError / TypeError: for mismatched ``x``/``y`` or ``batch_size`` out of range.

    Example:
        >>> ds, steps = poisson_batches(x_train, y_train, batch_size=64, seed=0)
        >>> model.fit(ds, steps_per_epoch=steps, epochs=10, callbacks=[DPSGD(...)])
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError("`x` and `y` must be non-empty and of the same length. "
                         f"Received: {len(x)} and {len(y)}")
    n = len(x)
    batch_size = check_number("batch_size", batch_size, low=1, high=n, integer=True)
    q = batch_size / n
    x_t, y_t = tf.constant(x), tf.constant(y)

    def sample(s):
        keep = tf.random.stateless_uniform([n], seed=tf.stack([s, 0])) < q
        idx = tf.where(keep)[:, 0]
        return tf.gather(x_t, idx), tf.gather(y_t, idx)

    dataset = tf.data.Dataset.random(seed=seed).map(sample)
    return dataset, max(1, int(round(n / batch_size)))


