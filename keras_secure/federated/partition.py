"""Splitting one dataset into the private datasets of federated clients: IID, or non-IID by a
Dirichlet distribution over labels (Hsu, Qi & Brown 2019)."""

from __future__ import annotations

import numpy as np

from keras_secure.classifier import check_inputs, check_labels
from keras_secure.validation import check_number


class Partition(tuple):
    """One client's data: a ``(x, y)`` pair with the indices it was drawn from.

    A tuple, so ``x, y = partition`` works. ``y`` keeps the encoding it was given in (class
    indices or one-hot rows).

    Attributes:
        x: the client's inputs, ``(n_i, ...)``.
        y: its labels, ``(n_i,)``/``(n_i, 1)`` class indices or ``(n_i, k)`` one-hot.
        indices: positions of these examples in the dataset that was split, ``(n_i,)`` int64.

    Example:
        >>> part = iid_partition(x, y, num_clients=10)[0]
        >>> x_0, y_0 = part; part.indices[:5]
    """

    def __new__(cls, x, y, indices):
        obj = super().__new__(cls, (x, y))
        obj.indices = np.asarray(indices, dtype=np.int64)
        return obj

    @property
    def x(self):
        return self[0]

    @property
    def y(self):
        return self[1]

    def __len__(self) -> int:  # number of examples, not the tuple's length
        return int(self.indices.shape[0])

    def __reduce__(self):  # pickled to Ray actors and subprocesses
        return (Partition, (self[0], self[1], self.indices))


def _class_ids(y, n: int, num_classes: int | None) -> tuple[np.ndarray, int]:
    """Class indices of ``y`` through the classifier contract's label check."""
    arr = np.asarray(y)
    if num_classes is None:
        if arr.ndim == 2 and arr.shape[1] > 1:
            num_classes = int(arr.shape[1])
        else:
            flat = arr.reshape(-1) if arr.size else arr
            if flat.size and np.issubdtype(flat.dtype, np.number) and np.isfinite(flat).all():
                num_classes = int(np.max(flat)) + 1 if flat.size else 1
            else:
                num_classes = 1
        num_classes = max(num_classes, 1)
    else:
        num_classes = check_number("num_classes", num_classes, low=1, integer=True)
    try:
        return check_labels(y, num_classes, n=n), num_classes
    except ValueError as err:  # no model here: the class count is num_classes
        raise ValueError(str(err).replace(f"(the model has {num_classes} classes)",
                                          f"(`num_classes`={num_classes})")) from None


def _split(x, y, groups, method: str) -> list[Partition]:
    parts = []
    for client, idx in enumerate(groups):
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        if idx.size == 0:
            raise ValueError(
                f"The {method} partition left client {client} without any example: every "
                "client needs data to train on. Use fewer clients, more data, a larger "
                f"`alpha` (Dirichlet) or a `min_size`. Received: {len(groups)} clients, "
                f"sizes {[len(g) for g in groups]}")
        parts.append(Partition(x[idx], y[idx], idx))
    return parts


def iid_partition(x, y, num_clients: int, *, seed: int | None = 0) -> list[Partition]:
    """Split ``(x, y)`` uniformly at random into ``num_clients`` disjoint partitions whose sizes
    differ by at most one.

    Args:
        x: inputs ``(n, ...)``, NumPy or tensor; no NaN/inf.
        y: labels ``(n,)``, ``(n, 1)`` or one-hot ``(n, k)``; returned in the same encoding.
        num_clients: number of partitions, 1..n.
        seed: seed of the permutation. Defaults to 0.

    Returns:
        A list of ``num_clients`` :class:`Partition` (``x_i, y_i = partition``).

    Raises:
        ValueError / TypeError: for ``num_clients`` out of 1..n, inputs that are not finite
            numbers, or labels that are not class labels.

    Example:
        >>> parts = iid_partition(x, y, num_clients=10, seed=0)
        >>> [len(p) for p in parts]
    """
    x = check_inputs(x)
    n = int(x.shape[0])
    _class_ids(y, n, None)
    y = np.asarray(y)
    num_clients = check_number("num_clients", num_clients, low=1, high=n, integer=True)
    order = np.random.default_rng(seed).permutation(n)
    return _split(x, y, np.array_split(order, num_clients), "IID")


def dirichlet_partition(x, y, num_clients: int, alpha: float, *, num_classes: int | None = None,
                        min_size: int = 1, seed: int | None = 0,
                        max_tries: int = 100) -> list[Partition]:
    """Non-IID split: each class's examples are divided among the clients in proportions drawn
    from ``Dirichlet(alpha, ..., alpha)`` (Hsu, Qi & Brown 2019, "Measuring the Effects of
    Non-Identical Data Distribution for Federated Visual Classification").

    Small ``alpha`` (e.g. 0.1) gives each client a few classes; large ``alpha`` (e.g. 100) is
    close to IID. Draws are repeated (up to ``max_tries``, from the same seeded generator) until
    every client has at least ``min_size`` examples.

    Args:
        x: inputs ``(n, ...)``; no NaN/inf.
        y: labels ``(n,)``, ``(n, 1)`` or one-hot ``(n, k)``; returned in the same encoding.
        num_clients: number of partitions, 1..n.
        alpha: concentration of the Dirichlet distribution, > 0.
        num_classes: number of classes; None reads it from one-hot ``y`` or the largest
            label + 1. Defaults to None.
        min_size: smallest client dataset accepted, >= 1. Defaults to 1.
        seed: seed of the draws. Defaults to 0.
        max_tries: draws before giving up. Defaults to 100.

    Returns:
        A list of ``num_clients`` :class:`Partition`.

    Raises:
        ValueError: for ``alpha <= 0``, ``num_clients`` out of 1..n, ``min_size * num_clients
            > n``, or no draw in ``max_tries`` giving every client ``min_size`` examples
            (the message gives the smallest client of the last draw).

    Example:
        >>> parts = dirichlet_partition(x, y, num_clients=10, alpha=0.5, seed=0)
    """
    alpha = check_number("alpha", alpha, low=0.0, low_inclusive=False)
    x = check_inputs(x)
    n = int(x.shape[0])
    labels, k = _class_ids(y, n, num_classes)
    y = np.asarray(y)
    num_clients = check_number("num_clients", num_clients, low=1, high=n, integer=True)
    min_size = check_number("min_size", min_size, low=1, integer=True)
    max_tries = check_number("max_tries", max_tries, low=1, integer=True)
    if min_size * num_clients > n:
        raise ValueError(f"`min_size` * `num_clients` must be at most the {n} examples. "
                         f"Received: min_size={min_size}, num_clients={num_clients}")
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(k)]
    sizes = []
    for _ in range(max_tries):
        groups = [[] for _ in range(num_clients)]
        for idx in by_class:
            if idx.size == 0:
                continue
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * idx.size).astype(int)
            for client, part in enumerate(np.split(idx, cuts)):
                groups[client].extend(part.tolist())
        sizes = [len(g) for g in groups]
        if min(sizes) >= min_size:
            return _split(x, y, groups, "Dirichlet")
    raise ValueError(
        f"No Dirichlet(alpha={alpha:g}) draw in {max_tries} tries gave each of the "
        f"{num_clients} clients at least {min_size} examples (the last draw's smallest client "
        f"had {min(sizes)}). Use a larger `alpha`, fewer clients or a smaller `min_size`. "
        f"Received: alpha={alpha:g}, num_clients={num_clients}, min_size={min_size}")


def label_distribution(partitions, num_classes: int | None = None) -> np.ndarray:
    """Class counts of each partition, ``(num_clients, num_classes)`` int64: how non-IID a
    split is.

    Example:
        >>> label_distribution(dirichlet_partition(x, y, 10, alpha=0.1))
    """
    ys = [np.asarray(p[1]) for p in partitions]
    if num_classes is None:
        _, num_classes = _class_ids(np.concatenate(ys), sum(len(v) for v in ys), None)
    counts = []
    for v in ys:
        ids = check_labels(v, num_classes, n=len(v))
        counts.append(np.bincount(ids, minlength=num_classes))
    return np.stack(counts).astype(np.int64)
