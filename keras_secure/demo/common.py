"""Pieces shared by the demo's chapters."""

from __future__ import annotations

import keras

from keras_secure import models


def compiled_cnn(seed: int, optimizer):
    """The demo's digits CNN, seeded and compiled with ``optimizer`` (logits, accuracy).

    Example:
        >>> model = compiled_cnn(0, keras.optimizers.Adam(2e-3))
    """
    keras.utils.set_random_seed(seed)
    model = models.small_cnn(seed=seed)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model
