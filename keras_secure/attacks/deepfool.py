"""DeepFool (L2): the minimal step across the nearest linearised decision boundary."""

from __future__ import annotations

import tensorflow as tf

from keras_secure.attacks.base import (
    Attack,
    batch_mask,
    check_number,
    clip_to_range,
    per_example_norm,
)
from keras_secure.classifier import labels_from_logits


class DeepFool(Attack):
    """DeepFool, L2 (Moosavi-Dezfooli, Fawzi & Frossard 2016).

    Linearises the classifier around the current point and steps to the nearest linearised
    boundary between the originally predicted class and the ``num_candidates - 1`` runner-up
    classes: ``r_i = (|f_l| + 1e-4) / ||w_l|| * w_l / ||w_l||`` with ``l = argmin_k |f_k| /
    ||w_k||``, ``f_k = z_k - z_orig`` and ``w_k = grad f_k``. Repeats until the label changes
    (at most ``steps`` times); the total step is scaled by ``1 + overshoot``. Untargeted only;
    examples already misclassified (prediction != ``y``) are returned unchanged.
    Each iteration needs the gradients of all candidate logits (one batched Jacobian).
    An example the attack cannot flip within ``steps`` (or within ``eps``, if given) is
    returned unchanged.

    Args:
        steps: maximal iterations, >= 1. Defaults to 50.
        overshoot: relative overshoot of the final step, >= 0. Defaults to 0.02.
        num_candidates: classes considered (the top-scoring ones at ``x``), >= 2. Defaults to 10.
        eps: optional L2 budget > 0; examples needing more are returned unchanged. Defaults to
            None.
        value_range: ``(low, high)`` to clip to, or None. Defaults to None.
        seed: unused (deterministic). Defaults to None.
        batch_size: examples attacked at once by ``__call__``. Defaults to None (all).

    Returns:
        Adversarial inputs inside ``value_range`` (``x`` where the attack failed).

    Raises:
        ValueError / TypeError: for an invalid argument, naming it.

    Example:
        >>> x_adv = DeepFool(steps=50, value_range=(0.0, 1.0))(model, x, y)

    References:
        Moosavi-Dezfooli, Fawzi & Frossard (2016), "DeepFool: a simple and accurate method to
        fool deep neural networks", CVPR.
    """

    name = "DeepFool"
    minimal_norm = True

    def __init__(self, *, steps: int = 50, overshoot: float = 0.02, num_candidates: int = 10,
                 eps: float | None = None, value_range: tuple[float, float] | None = None,
                 seed: int | None = None, batch_size: int | None = None):
        super().__init__(eps=eps, norm="l2", value_range=value_range, targeted=False,
                         seed=seed, batch_size=batch_size, eps_required=False)
        self.steps = check_number("steps", steps, low=1, integer=True)
        self.overshoot = check_number("overshoot", overshoot, low=0.0)
        self.num_candidates = check_number("num_candidates", num_candidates, low=2, integer=True)

    @property
    def label(self) -> str:
        budget = f" (eps={self.eps:g})" if self.eps is not None else ""
        return f"DeepFool-L2{budget}"

    def get_config(self) -> dict:
        config = super().get_config()
        for key in ("norm", "targeted"):
            del config[key]
        return {**config, "steps": self.steps, "overshoot": self.overshoot,
                "num_candidates": self.num_candidates}

    def _perturb(self, logits_fn, x, y):
        logits0 = logits_fn(x)
        k = min(self.num_candidates, int(logits0.shape[-1]))
        candidates = tf.math.top_k(logits0, k=k).indices  # column 0: the original prediction
        original = candidates[:, 0]
        r_total = tf.zeros_like(x)
        # Examples the model already gets wrong are left alone: pushing them across the
        # nearest boundary could move them *to* the true class.
        active = tf.equal(original, y)
        scale = 1.0 + self.overshoot

        for _ in tf.range(self.steps):
            x_adv = clip_to_range(x + scale * r_total, self.value_range)
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                logits = logits_fn(x_adv)
                z = tf.gather(logits, candidates, batch_dims=1)
            jac = tape.batch_jacobian(z, x_adv)  # (n, k, ...)
            active = active & tf.equal(labels_from_logits(logits), original)
            if not tf.reduce_any(active):
                break
            f = z[:, 1:] - z[:, :1]
            w = jac[:, 1:] - jac[:, :1]
            w_flat = tf.reshape(w, [tf.shape(w)[0], k - 1, -1])
            w_norm = tf.sqrt(tf.reduce_sum(tf.square(w_flat), axis=-1)) + 1e-8
            distance = tf.abs(f) / w_norm
            nearest = tf.argmin(distance, axis=1, output_type=tf.int32)
            d_l = tf.gather(distance, nearest, batch_dims=1)
            w_l = tf.gather(w, nearest, batch_dims=1)
            n_l = tf.gather(w_norm, nearest, batch_dims=1)
            r_i = batch_mask((d_l + 1e-4) / n_l, x) * w_l
            r_total = r_total + tf.where(batch_mask(active, x), r_i, tf.zeros_like(r_i))

        x_adv = clip_to_range(x + scale * r_total, self.value_range)
        fooled = tf.not_equal(labels_from_logits(logits_fn(x_adv)), original)
        fooled = fooled & tf.equal(original, y)
        if self.eps is not None:
            fooled = fooled & (per_example_norm(x_adv - x, "l2") <= self.eps)
        return tf.where(batch_mask(fooled, x), x_adv, x)
