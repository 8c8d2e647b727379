import numpy as np
import pytest

from keras_secure import datasets, models


def test_load_digits_splits():
    x_tr, y_tr = datasets.load_digits("train")
    x_te, y_te = datasets.load_digits("test")
    x_all, y_all = datasets.load_digits("all")
    assert x_tr.shape == (1437, 8, 8, 1) and x_te.shape == (360, 8, 8, 1)
    assert x_all.shape == (1797, 8, 8, 1) and x_tr.dtype == np.float32
    assert x_all.min() == 0.0 and x_all.max() == 1.0
    assert set(np.unique(y_te)) == set(range(10))
    # stratified: every class has about 20% of its images in the test split
    counts_all, counts_te = np.bincount(y_all), np.bincount(y_te)
    assert np.all(np.abs(counts_te / counts_all - 0.2) < 0.02)
    # disjoint and complete: the multiset of images is preserved
    rows = lambda a: {r.tobytes() for r in a.reshape(len(a), -1)}  # noqa: E731
    assert rows(x_tr) | rows(x_te) == rows(x_all)
    np.testing.assert_array_equal(datasets.load_digits("test")[0], x_te)
    assert not np.array_equal(datasets.load_digits("test", seed=1)[0], x_te)


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "valid"}, "`split`"),
    ({"test_fraction": 1.0}, "`test_fraction`"),
    ({"test_fraction": "a"}, "`test_fraction`"),
])
def test_load_digits_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.load_digits(**kwargs)


def test_small_cnn(digits):
    model = models.small_cnn((32, 32, 3), num_classes=5, width=4, seed=0)
    assert model.output_shape == (None, 5)
    with pytest.raises(ValueError, match="`input_shape`"):
        models.small_cnn((8, 8))
    with pytest.raises(ValueError, match="`num_classes`"):
        models.small_cnn(num_classes=1)
    with pytest.raises(ValueError, match="`epochs`"):
        models.train_small_cnn(digits[0], digits[1], epochs=0)


def test_trained_cnn_is_accurate(cnn, digits):
    _, _, x_te, y_te = digits
    assert np.mean(np.argmax(cnn.predict(x_te, verbose=0), 1) == y_te) > 0.93
