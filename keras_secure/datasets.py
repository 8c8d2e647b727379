"""Datasets that ship with the installation (nothing is downloaded at run time)."""

from __future__ import annotations

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
    if split not in _SPLITS:
        raise ValueError(
            f"`split` must be one of {_SPLITS}. Received: split={split!r}"
        )
    if not isinstance(test_fraction, (int, float)) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(
            "`test_fraction` must be a number in the open interval (0, 1). "
            f"Received: test_fraction={test_fraction!r}"
        )
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., np.newaxis]
    y = bunch.target.astype(np.int64)
    if split == "all":
        return x, y
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=float(test_fraction), stratify=y, random_state=seed
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)
