"""Label flipping: random flips and targeted class-pair flips (source -> target)."""

from __future__ import annotations

import numpy as np

from keras_secure.poisoning._common import (check_data, check_fraction, check_pair, check_seed,
                                            count_for)


def flip_labels(x, y, fraction: float, *, source: int | None = None, target: int | None = None,
                num_classes: int | None = None, seed: int | None = None):
    """Poison a training set by flipping labels; the inputs are returned unchanged.

    - **Random flips** (``source`` and ``target`` None): exactly ``round(fraction * n)``
      examples, drawn uniformly without replacement, get a label drawn uniformly from the
      ``num_classes - 1`` other classes.
    - **Targeted class-pair flips** (``source`` and ``target`` given): exactly
      ``round(fraction * n_source)`` of the ``n_source`` examples labelled ``source``, drawn
      uniformly, are relabelled ``target``. Here ``fraction`` is a fraction of the source class.

    Args:
        x: training inputs ``(n, ...)`` (checked, returned as they are).
        y: labels ``(n,)``, ``(n, 1)`` or one-hot ``(n, k)``.
        fraction: fraction of the examples (random) or of the source class (targeted) to flip,
            in [0, 1].
        source: the class whose labels are flipped (targeted mode). Defaults to None.
        target: the class they are flipped to (targeted mode), != ``source``. Defaults to None.
        num_classes: number of classes; None reads it from one-hot ``y`` (random flips refuse
            None with class-index labels: the largest label present need not be the last
            class); targeted flips read it from ``y`` (one-hot width, else the
            largest label + 1). Defaults to None.
        seed: seed of the NumPy generator that draws the flips (same seed, same flips).
            Defaults to None.

    Returns:
        ``(x, y_poisoned, mask)``: ``x`` as given (NumPy), int32 labels ``(n,)``, and a
        boolean ``(n,)`` mask, True where the label was flipped.

    Raises:
        ValueError: for ``fraction`` outside [0, 1], ``source``/``target`` out of
            ``[0, num_classes - 1]``, equal, or only one of them given; bad ``x``/``y`` (see
            :func:`keras_secure.classifier.check_labels`).

    Example:
        >>> x_p, y_p, mask = flip_labels(x, y, 0.2, seed=0)                 # 20% random flips
        >>> x_p, y_p, mask = flip_labels(x, y, 0.5, source=7, target=1, seed=0)

    References:
        Biggio, Nelson & Laskov (2011), "Support Vector Machines Under Adversarial Label Noise";
        Biggio, Nelson & Laskov (2012), "Poisoning Attacks against Support Vector Machines".
    """
    fraction = check_fraction(fraction)
    seed = check_seed(seed)
    x, labels, k = check_data(x, y, num_classes, required_for=(
        "random flips (no source/target)" if source is None and target is None else None))
    source, target = check_pair(source, target, k)
    rng = np.random.default_rng(seed)
    poisoned = labels.copy()
    mask = np.zeros(labels.shape[0], dtype=bool)
    if source is None:
        chosen = rng.choice(labels.shape[0], count_for(fraction, labels.shape[0]), replace=False)
        shift = rng.integers(1, k, size=chosen.shape[0])  # never the true label
        poisoned[chosen] = (labels[chosen] + shift) % k
    else:
        candidates = np.flatnonzero(labels == source)
        chosen = rng.choice(candidates, count_for(fraction, candidates.shape[0]), replace=False)
        poisoned[chosen] = target
    mask[chosen] = True
    return x, poisoned.astype(np.int32), mask
