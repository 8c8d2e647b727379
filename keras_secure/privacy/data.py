"""Poisson-sampled batches, the sampling that DP-SGD's privacy amplification assumes.

A dataset made by :func:`poisson_batches` carries that fact (:func:`poisson_sampling_of`), so
:class:`keras_secure.callbacks.DPSGD` can check that the batches ``fit`` trains on justify the
Poisson accounting. The mark is on that dataset object only: a dataset derived from it
(``.map``, ``.prefetch``, ``.unbatch().batch(...)``, ...) is no longer known to be
Poisson-sampled, since a transformation may change which examples form a batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from keras_secure.validation import check_number

_MARK = "_keras_secure_poisson_sampling"


@dataclasses.dataclass(frozen=True)
class PoissonSampling:
    """How a :func:`poisson_batches` dataset samples its batches.

    Attributes:
        num_examples: the number ``N`` of examples sampled from.
        batch_size: the expected batch size ``q * N``.
        seed: the seed of the sampling (None: unseeded).
    """

    num_examples: int
    batch_size: int
    seed: int | None = None

    @property
    def sampling_rate(self) -> float:
        """``q = batch_size / num_examples``, the probability that an example joins a batch."""
        return self.batch_size / self.num_examples


def poisson_sampling_of(data) -> PoissonSampling | None:
    """The :class:`PoissonSampling` of a dataset made by :func:`poisson_batches`, else None.

    Args:
        data: anything given to ``fit`` as ``x`` (a ``tf.data.Dataset``, arrays, ...).

    Returns:
        The sampling record, or None when ``data`` is not a dataset returned by
        :func:`poisson_batches` (including datasets derived from one by a transformation).

    Example:
        >>> ds, steps = poisson_batches(x, y, batch_size=64, seed=0)
        >>> poisson_sampling_of(ds).sampling_rate == 64 / len(x)
        True
        >>> poisson_sampling_of(ds.prefetch(2)) is None
        True
    """
    mark = getattr(data, _MARK, None)
    return mark if isinstance(mark, PoissonSampling) else None


def poisson_batches(x, y, batch_size: int, seed: int | None = None):
    """An endless ``tf.data.Dataset`` of Poisson-sampled batches, and the steps per epoch.

    Every batch includes each of the ``N`` examples independently with probability
    ``q = batch_size / N``, so batch sizes vary around ``batch_size`` (and may be 0: an empty
    batch is a legal DP-SGD step, noise only). This is the sampling for which DP-SGD's
    accounting with ``sampling="poisson"`` holds (Abadi et al. 2016; shuffled fixed-size
    batches are not Poisson samples). The returned dataset is marked as Poisson-sampled
    (:func:`poisson_sampling_of`); ``DPSGD(sampling="poisson")`` accepts only such a dataset.
    Train on it as it is, with ``model.fit(dataset, steps_per_epoch=steps, epochs=...)``:
    a dataset derived from it (``.map``, ``.prefetch``, ...) is no longer marked.

    Args:
        x: inputs ``(N, ...)``.
        y: labels ``(N, ...)``.
        batch_size: expected batch size, 1..N.
        seed: seed of the sampling: the same seed gives the same batches in any process
            (whatever TensorFlow's global seed). None draws one from the operating system's
            entropy. Defaults to None.

    Returns:
        ``(dataset, steps_per_epoch)`` with ``steps_per_epoch = round(N / batch_size)``.

    Raises:
        ValueError / TypeError: for mismatched ``x``/``y`` or ``batch_size`` out of range.

    Example:
        >>> ds, steps = poisson_batches(x_train, y_train, batch_size=64, seed=0)
        >>> model.fit(ds, steps_per_epoch=steps, epochs=10, callbacks=[DPSGD(
        ...     1.0, 1.1, num_examples=len(x_train), batch_size=64, delta=1e-5)])
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError("`x` and `y` must be non-empty and of the same length. "
                         f"Received: {len(x)} and {len(y)}")
    n = len(x)
    batch_size = check_number("batch_size", batch_size, low=1, high=n, integer=True)
    q = batch_size / n
    x_t, y_t = tf.constant(x), tf.constant(y)

    # Batch i's membership draws are a stateless function of (seed, i): the same seed gives
    # the same batches in every process, whatever TensorFlow's global seed (tf.data's
    # Dataset.random(seed) mixes in the global seed, so workers and tests disagreed). No
    # seed: a fresh one from the operating system's entropy, so the sampling stays secret.
    stream = int(np.random.SeedSequence(seed).generate_state(1)[0] % (2 ** 31 - 1))

    def sample(i):
        key = tf.stack([tf.constant(stream, tf.int64), i])
        keep = tf.random.stateless_uniform([n], seed=key) < q
        idx = tf.where(keep)[:, 0]
        return tf.gather(x_t, idx), tf.gather(y_t, idx)

    dataset = tf.data.Dataset.counter(dtype=tf.int64).map(sample)
    object.__setattr__(dataset, _MARK, PoissonSampling(n, batch_size, seed))
    return dataset, max(1, int(round(n / batch_size)))
