"""Square attack (L-inf): score-based black-box random search."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_secure.attacks.base import (
    Attack,
    batch_mask,
    check_number,
    margin,
)

# Square's schedule of the fraction p of pixels changed, defined on a 10,000-query scale.
_SCHEDULE_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, i, n_queries: int):
    """Fraction of pixels to change at iteration ``i``: ``p_init`` halved at each bound of
    ``(10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)`` on the iteration count rescaled to a
    budget of 10,000 queries (Andriushchenko et al. 2020, section 3)."""
    it = tf.cast(tf.cast(i, tf.float32) / float(n_queries) * 10000.0, tf.int32)
    halvings = tf.reduce_sum(tf.cast(it > tf.constant(_SCHEDULE_BOUNDS), tf.float32))
    return p_init / tf.pow(2.0, halvings)


class Square(Attack):
    """Square attack, L-inf (Andriushchenko, Croce, Flammarion & Hein 2020).

    A gradient-free attack that uses only the model's scores, so it is not fooled by gradient
    masking (a good cross-check for defences that break gradients). It starts from vertical
    stripes of +-eps and then, each iteration, proposes for every not-yet-fooled example a new
    random square window whose channels are set to +-eps, keeping the proposal when it lowers
    the margin loss (cross-entropy of the target for targeted attacks). The window side shrinks
    with the schedule of :func:`square_fraction`. Each iteration costs one query per active
    example; examples stop once fooled.

    Args:
        eps: L-inf budget in input units, > 0. Required.
        queries: query budget per example (including the initial point), >= 2. Defaults to
            1000.
        p_init: initial fraction of pixels changed, in (0, 1]. Defaults to 0.05 (the paper's
            L-inf value).
        value_range: ``(low, high)`` to clip to, or None. Defaults to None.
        targeted: push towards the classes in ``y``. Defaults to False.
        seed: seed of the random search. Defaults to None.
        batch_size: examples attacked at once by ``__call__``. Defaults to None (all).

    Returns:
        Adversarial images (rank 4, channels last) with ``||x_adv - x||_inf <= eps``.

    Raises:
        ValueError / TypeError: for an invalid argument, or inputs that are not images.

    Example:
        >>> x_adv = Square(eps=0.1, queries=1000, value_range=(0.0, 1.0), seed=0)(model, x, y)

    References:
        Andriushchenko, Croce, Flammarion & Hein (2020), "Square Attack: a query-efficient
        black-box adversarial attack via random search", ECCV.
    """

    name = "Square"
    uses_gradients = False

    def __init__(self, eps: float, *, queries: int = 1000, p_init: float = 0.05,
                 value_range: tuple[float, float] | None = None, targeted: bool = False,
                 seed: int | None = None, batch_size: int | None = None):
        super().__init__(eps=eps, norm="linf", value_range=value_range, targeted=targeted,
                         seed=seed, batch_size=batch_size)
        self.queries = check_number("queries", queries, low=2, integer=True)
        self.p_init = check_number("p_init", p_init, low=0.0, high=1.0, low_inclusive=False)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["norm"]
        return {**config, "queries": self.queries, "p_init": self.p_init}

    def _check_x(self, x):
        x = super()._check_x(x)
        if x.shape.rank != 4:
            raise ValueError(
                "`x` must be images of shape (n, height, width, channels) for the Square attack. "
                f"Received: x.shape={tuple(x.shape)}"
            )
        return x

    def _losses(self, logits, y):
        """(acceptance loss to minimise, margin: < 0 once the attack succeeded)."""
        m = margin(logits, y)
        if self.targeted:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            return ce, -m
        return m, m

    def _clip(self, z):
        if self.value_range is None:
            return z
        return tf.clip_by_value(z, *self.value_range)

    def _perturb(self, logits_fn, x, y):
        n, h, w, c = tf.shape(x)[0], x.shape[1], x.shape[2], x.shape[3]
        eps, seed = self.eps, self._seed_generator
        rows = tf.reshape(tf.range(h), [1, h, 1, 1])
        cols = tf.reshape(tf.range(w), [1, 1, w, 1])

        def random_signs(shape):
            return tf.where(keras.random.uniform(shape, seed=seed) < 0.5, -eps, eps)

        x_best = self._clip(x + random_signs(tf.stack([n, 1, w, c])))
        loss_best, margin_best = self._losses(logits_fn(x_best), y)
        for i in tf.range(1, self.queries):
            active = margin_best > 0.0
            if not tf.reduce_any(active):
                break
            p = square_fraction(self.p_init, i, self.queries)
            side = tf.cast(tf.round(tf.sqrt(p * float(h * w))), tf.int32)
            side = tf.clip_by_value(side, 1, max(min(h, w) - 1, 1))
            top = tf.cast(keras.random.uniform([n], 0.0, 1.0, seed=seed)
                          * tf.cast(h - side, tf.float32), tf.int32)
            left = tf.cast(keras.random.uniform([n], 0.0, 1.0, seed=seed)
                           * tf.cast(w - side, tf.float32), tf.int32)
            top, left = batch_mask(top, x), batch_mask(left, x)
            window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
            # Propose new +-eps values per channel; redraw (a few times) where the window would
            # not change at all, as the reference does.
            candidate = x_best
            unchanged = tf.ones([n], tf.bool)
            for _ in tf.range(8):
                if not tf.reduce_any(unchanged):
                    break
                proposal = self._clip(tf.where(window, x + random_signs(tf.stack([n, 1, 1, c])),
                                               x_best))
                candidate = tf.where(batch_mask(unchanged, x), proposal, candidate)
                changed = tf.reduce_any(tf.abs(candidate - x_best) > 1e-7, axis=[1, 2, 3])
                unchanged = ~changed
            loss, m = self._losses(logits_fn(candidate), y)
            accept = active & (loss < loss_best)
            x_best = tf.where(batch_mask(accept, x), candidate, x_best)
            loss_best = tf.where(accept, loss, loss_best)
            margin_best = tf.where(accept, m, margin_best)
        return x_best
