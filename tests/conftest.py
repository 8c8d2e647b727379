import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_secure as ks  # noqa: E402

tf.get_logger().setLevel("ERROR")
VALUE_RANGE = (0.0, 1.0)


@pytest.fixture(scope="session")
def digits():
    """(x_train, y_train, x_test, y_test) of the embedded digits."""
    return (*ks.datasets.load_digits("train"), *ks.datasets.load_digits("test"))


@pytest.fixture(scope="session")
def cnn(digits):
    """A small CNN trained on the digits (about 97% test accuracy), logits output."""
    x_train, y_train, _, _ = digits
    return ks.models.train_small_cnn(x_train, y_train, epochs=12, seed=0)


@pytest.fixture(scope="session")
def eval_set(digits, cnn):
    """200 test digits and labels."""
    _, _, x_test, y_test = digits
    return x_test[:200], y_test[:200]


@pytest.fixture
def linear_model():
    """A tiny linear classifier on 4 features with known weights (3 classes)."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    w = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 1.0]],
                 dtype=np.float32)
    model.layers[-1].set_weights([w, np.array([0.1, -0.2, 0.0], np.float32)])
    return model


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
