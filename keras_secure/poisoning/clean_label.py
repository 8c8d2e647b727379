"""Clean-label feature-collision poisons (Poison Frogs, Shafahi et al. 2018)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_secure.classifier import check_inputs
from keras_secure.poisoning._common import (check_class, check_data, check_fraction, check_seed,
                                            choose, feature_model)
from keras_secure.validation import check_number, check_value_range


class FeatureCollision:
    """Poison Frogs' feature collision: poisons that look like their base images (and keep
    the base's correct label) but sit next to a target instance in feature space.

    Each poison ``p`` minimises ``||f(p) - f(t)||^2 + beta * ||p - b||^2`` (``f`` the named
    layer's activations, ``t`` the target, ``b`` the base) by the paper's forward-backward
    splitting, in-graph (one ``tf.while_loop``):

    1. forward step on the feature term: ``p' = p - lr * grad ||f(p) - f(t)||^2``;
    2. backward (proximal) step on the image term: ``p = (p' + lr * beta * b) / (1 + lr *
       beta)``;
    3. projection onto the L-inf ball of radius ``eps`` around ``b`` and clipping to
       ``value_range``: every poison is within the budget ``||p - b||_inf <= eps``.

    A step that increases the objective is rejected and that poison's step size halved; an
    accepted step grows it by 1.2 (the paper's reference code also adapts the step size). So
    the objective never increases.

    Args:
        eps: L-inf budget in input units, > 0. Defaults to 0.1.
        steps: iterations, >= 1. Defaults to 200.
        step_size: initial step size ``lr`` (per poison, adapted), > 0. Defaults to 0.01.
        beta: weight of the image term; None uses the paper's ``beta0 * (d_f / d_x)^2`` with
            ``beta0 = 0.25``, ``d_f`` the feature and ``d_x`` the input dimension. Defaults to
            None.
        layer: name of the feature layer; None is the penultimate layer (the input of the
            classification layer, as in the paper's transfer-learning setting). Defaults to
            None.
        value_range: ``(low, high)`` of valid inputs, or None for no clipping. Defaults to
            (0, 1).

    Raises:
        ValueError: bad arguments; when called: an unknown ``layer``, bad images.

    Example:
        >>> fc = FeatureCollision(eps=0.1, steps=200)
        >>> poisons = fc(model, x_bases, x_target)     # one poison per base
        >>> fc.feature_distance(model, poisons, x_target)

    References:
        Shafahi, Huang, Najibi, Suciu, Studer, Dumitras & Goldstein (2018), "Poison Frogs!
        Targeted Clean-Label Poisoning Attacks on Neural Networks", NeurIPS (Algorithm 1).

    Limitations:
        One-shot success needs the feature extractor to stay fixed (transfer learning, only the
        last layer retrained); end-to-end retraining moves the features and the paper needs
        watermarking and many poisons there. The L-inf projection is added to the paper's
        algorithm (which has none) to give a hard perceptibility budget.
    """

    def __init__(self, eps: float = 0.1, steps: int = 200, step_size: float = 0.01,
                 beta: float | None = None, layer: str | None = None,
                 value_range=(0.0, 1.0)):
        self.eps = check_number("eps", eps, low=0.0, low_inclusive=False)
        self.steps = check_number("steps", steps, low=1, integer=True)
        self.step_size = check_number("step_size", step_size, low=0.0, low_inclusive=False)
        self.beta = check_number("beta", beta, low=0.0, allow_none=True)
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"`layer` must be a layer name (str) or None. Received: "
                            f"layer={layer!r}")
        self.layer = layer
        self.value_range = check_value_range(value_range)

    def _inputs(self, model, x_base, x_target):
        fm = feature_model(model, self.layer)
        base = check_inputs(x_base, "x_base").astype(np.float32)
        target = check_inputs(x_target if np.ndim(x_target) == base.ndim else
                              np.asarray(x_target)[None], "x_target").astype(np.float32)
        if target.shape[1:] != base.shape[1:]:
            raise ValueError("`x_target` must have the shape of one base image "
                             f"{base.shape[1:]}. Received: x_target.shape={target.shape}")
        if target.shape[0] not in (1, base.shape[0]):
            raise ValueError("`x_target` must be one target (for every base) or one per base. "
                             f"Received: {target.shape[0]} targets for {base.shape[0]} bases")
        return fm, base, target

    def feature_distance(self, model, x, x_target) -> np.ndarray:
        """``||f(x_i) - f(t)||_2`` per image of ``x`` (the quantity the poisons shrink).

        Example:
            >>> fc.feature_distance(model, x_bases, x_target)   # before
        """
        fm, x, target = self._inputs(model, x, x_target)
        f = tf.reshape(fm(x, training=False), [x.shape[0], -1])
        ft = tf.reshape(fm(target, training=False), [target.shape[0], -1])
        return tf.norm(f - ft, axis=1).numpy()

    def __call__(self, model, x_base, x_target) -> np.ndarray:
        """Poisons for ``x_base`` ``(m, ...)`` against ``x_target`` (one image, or ``(1, ...)``,
        or one per base).

        Returns:
            float32 poisons ``(m, ...)`` with ``|p - b| <= eps`` everywhere.
        """
        fm, base, target = self._inputs(model, x_base, x_target)
        d_x = int(np.prod(base.shape[1:]))
        ft = tf.reshape(fm(target, training=False), [target.shape[0], -1])
        d_f = int(ft.shape[-1])
        beta = 0.25 * (d_f / d_x) ** 2 if self.beta is None else self.beta
        return self._run(fm, tf.constant(base), ft, beta).numpy()

    def _run(self, fm, base, ft, beta):
        eps, lr0, steps, value_range = self.eps, self.step_size, self.steps, self.value_range
        axes = list(range(1, base.shape.rank))
        expand = [-1] + [1] * (base.shape.rank - 1)

        def feature_term(x):
            f = tf.reshape(fm(x, training=False), [tf.shape(x)[0], -1])
            return tf.reduce_sum(tf.square(f - ft), axis=1)

        def objective(x):
            return feature_term(x) + beta * tf.reduce_sum(tf.square(x - base), axis=axes)

        @tf.function
        def run():
            def body(i, x, value, lr):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = tf.reduce_sum(feature_term(x))
                grad = tape.gradient(loss, x)
                step = tf.reshape(lr, expand)
                forward = x - step * grad
                candidate = (forward + step * beta * base) / (1.0 + step * beta)
                candidate = tf.clip_by_value(candidate, base - eps, base + eps)
                if value_range is not None:
                    candidate = tf.clip_by_value(candidate, *value_range)
                new_value = objective(candidate)
                accept = new_value <= value
                x = tf.where(tf.reshape(accept, expand), candidate, x)
                value = tf.where(accept, new_value, value)
                lr = tf.where(accept, lr * 1.2, lr * 0.5)
                return i + 1, x, value, lr

            m = tf.shape(base)[0]
            start = (tf.constant(0), base, objective(base), tf.fill([m], tf.constant(lr0)))
            _, x, _, _ = tf.while_loop(lambda i, *_: i < steps, body, start)
            return x

        return run()


def clean_label_poison(model, x, y, x_target, *, base_class: int, fraction: float,
                       attack: FeatureCollision | None = None, num_classes: int | None = None,
                       seed: int | None = None):
    """Poison a training set with clean-label feature-collision poisons.

    ``round(fraction * n)`` training images of ``base_class``, drawn uniformly, are replaced by
    poisons made from them (:class:`FeatureCollision`); their labels stay ``base_class``, which
    is correct for what the images look like. Trained on the result, the model is meant to
    classify ``x_target`` as ``base_class`` (:func:`targeted_misclassification`).

    Args:
        model: the (pre-trained) model whose features the poisons collide in.
        x: training images ``(n, ...)``.
        y: training labels.
        x_target: the target instance (one image or ``(1, ...)``).
        base_class: the class of the bases (and the label the attacker wants for the target).
        fraction: fraction of the training set replaced by poisons, in [0, 1].
        attack: the :class:`FeatureCollision` settings. Defaults to ``FeatureCollision()``.
        num_classes: number of classes; None reads it from ``y``. Defaults to None.
        seed: seed of the NumPy generator that picks the bases. Defaults to None.

    Returns:
        ``(x_poisoned, y, mask)``: float32 images, int32 labels (unchanged), boolean mask.

    Raises:
        ValueError: ``fraction`` outside [0, 1] or more poisons than base images,
            ``base_class`` out of range, bad data.

    Example:
        >>> x_p, y_p, mask = clean_label_poison(model, x, y, x_test[7], base_class=3,
        ...                                     fraction=0.01, seed=0)

    References:
        Shafahi et al. (2018), Poison Frogs.
    """
    fraction = check_fraction(fraction)
    seed = check_seed(seed)
    attack = FeatureCollision() if attack is None else attack
    if not isinstance(attack, FeatureCollision):
        raise TypeError(f"`attack` must be a FeatureCollision. Received: attack={attack!r}")
    x, labels, k = check_data(x, y, num_classes)
    base_class = check_class(base_class, k, "base_class")
    chosen = choose(np.flatnonzero(labels == base_class), fraction, x.shape[0], seed,
                    f"images of class {base_class}")
    x_out = x.astype(np.float32, copy=True)
    if chosen.size:
        x_out[chosen] = attack(model, x[chosen], x_target)
    mask = np.zeros(x.shape[0], dtype=bool)
    mask[chosen] = True
    return x_out, labels, mask
