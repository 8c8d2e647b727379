"""Small reference models used by the demo, the examples, the tests and the benchmarks."""

from __future__ import annotations

import keras


def small_cnn(
    input_shape: tuple[int, ...] = (8, 8, 1),
    num_classes: int = 10,
    width: int = 32,
    seed: int | None = None,
) -> keras.Model:
    """A small convolutional classifier that outputs logits.

    Two 3x3 convolutions (the second with stride 2), a dense hidden layer and a linear output
    layer. On the 8x8 digits it reaches about 97% test accuracy after a few seconds of training
    on 2 CPU cores; on 32x32x3 inputs it is a CIFAR-sized ConvNet for benchmarks.

    Args:
        input_shape: shape of one input image ``(height, width, channels)``. Defaults to
            ``(8, 8, 1)``.
        num_classes: number of output logits, at least 2. Defaults to 10.
        width: number of filters of the first convolution (the second has twice as many),
            at least 1. Defaults to 32.
        seed: seed of the weight initialisers, for reproducible models. Defaults to None.

    Returns:
        An uncompiled ``keras.Model`` mapping images to logits of shape ``(batch, num_classes)``.

    Raises:
        ValueError: if ``input_shape`` is not of rank 3, ``num_classes < 2`` or ``width < 1``.

    Example:
        >>> model = small_cnn(seed=0)
        >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """
    if len(tuple(input_shape)) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels). "
            f"Received: input_shape={input_shape!r}"
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}"
        )
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"`width` must be an integer >= 1. Received: width={width!r}")

    def init(offset: int):
        return keras.initializers.GlorotUniform(seed=None if seed is None else seed + offset)

    return keras.Sequential(
        [
            keras.Input(tuple(input_shape)),
            keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                kernel_initializer=init(0)),
            keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu",
                                kernel_initializer=init(1)),
            keras.layers.Flatten(),
            keras.layers.Dense(4 * width, activation="relu", kernel_initializer=init(2)),
            keras.layers.Dense(num_classes, kernel_initializer=init(3)),
        ],
        name="small_cnn",
    )


def train_small_cnn(
    x,
    y,
    epochs: int = 15,
    batch_size: int = 64,
    seed: int = 0,
    verbose: int = 0,
) -> keras.Model:
    """Build :func:`small_cnn` for ``x``'s shape and train it with Adam on cross-entropy.

    Args:
        x: training images of shape ``(n, height, width, channels)``.
        y: integer labels of shape ``(n,)``.
        epochs: number of epochs, at least 1. Defaults to 15.
        batch_size: batch size, at least 1. Defaults to 64.
        seed: seeds the initialisers and the shuffling (``keras.utils.set_random_seed``).
            Defaults to 0.
        verbose: passed to ``fit``. Defaults to 0.

    Returns:
        The trained, compiled model (logits output, accuracy metric).

    Raises:
        ValueError: if ``epochs`` or ``batch_size`` is smaller than 1.

    Example:
        >>> from keras_secure.datasets import load_digits
        >>> model = train_small_cnn(*load_digits("train"), epochs=2)
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` must be an integer >= 1. Received: epochs={epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be an integer >= 1. Received: batch_size={batch_size!r}"
        )
    import numpy as np

    keras.utils.set_random_seed(seed)
    num_classes = int(np.max(y)) + 1
    model = small_cnn(tuple(x.shape[1:]), max(num_classes, 2), seed=seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3 * (batch_size / 32) ** 0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose)
    return model
