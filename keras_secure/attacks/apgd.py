"""Auto-PGD (APGD-CE / APGD-DLR): step-size-free PGD with momentum."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_secure.attacks.base import (
    Attack,
    batch_mask,
    check_loss,
    check_number,
    init_best,
    objective_and_gradient,
    per_example_norm,
    project_and_clip,
    steepest_direction,
    update_best,
)


def checkpoint_lengths(steps: int) -> tuple[int, int, int]:
    """APGD's checkpoint parameters for a budget of ``steps`` iterations.

    Returns ``(first, minimum, decrement)``: the first checkpoint comes after
    ``max(int(0.22 * steps), 1)`` iterations, and each following interval is the previous one
    shortened by ``max(int(0.03 * steps), 1)`` but never below ``max(int(0.06 * steps), 1)``
    (Croce & Hein 2020, section 3.2: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} -
    0.03, 0.06)).
    """
    return (max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1))


class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020): PGD with momentum and an adaptive step size.

    The step size starts at ``2 * eps`` and is halved, per example, at checkpoints where the
    attack stalls: when the loss increased in at most ``rho`` of the iterations since the last
    checkpoint, or when the step size was not reduced at the last checkpoint and the best loss
    has not improved since. After a reduction the iterate restarts from the best point found.
    Each update mixes the projected gradient step with the previous update
    (``x_{k+1} = P(x_k + alpha (z_{k+1} - x_k) + (1 - alpha)(x_k - x_{k-1}))``, alpha = 0.75).
    With ``loss="ce"`` this is APGD-CE, with ``loss="dlr"`` APGD-DLR (scale-invariant, robust to
    logit rescaling). Restarts begin from new random points; the returned point is, per example,
    a misclassified iterate if one was found, else the highest-loss iterate.

    Args:
        eps: perturbation budget in input units, > 0. Required.
        steps: iterations per restart, >= 1. Defaults to 100.
        norm: ``"linf"`` or ``"l2"``. Defaults to ``"linf"``.
        restarts: random restarts, >= 1. Defaults to 1.
        loss: ``"ce"`` or ``"dlr"`` (untargeted only; needs >= 3 classes). Defaults to ``"ce"``.
        rho: oscillation threshold of the checkpoint test, in (0, 1]. Defaults to 0.75.
        momentum: weight ``alpha`` of the new step against the previous update, in (0, 1].
            Defaults to 0.75.
        value_range: ``(low, high)`` to clip to, or None. Defaults to None.
        targeted: push towards the classes in ``y`` (with ``loss="ce"``). Defaults to False.
        seed: seed of the random starts. Defaults to None.
        batch_size: examples attacked at once by ``__call__``. Defaults to None (all).
        eot_samples: gradients averaged over this many evaluations of a randomized model per
            step (Expectation over Transformation, Athalye et al. 2018), >= 1. Defaults to 1.

    Returns:
        Adversarial inputs with ``||x_adv - x|| <= eps``, inside ``value_range``.

    Raises:
        ValueError / TypeError: for an invalid argument, naming it.

    Example:
        >>> x_adv = APGD(eps=8 / 255, steps=100, value_range=(0.0, 1.0), seed=0)(model, x, y)

    References:
        Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
        diverse parameter-free attacks", ICML.
    """

    name = "APGD"
    supports_eot = True

    def __init__(self, eps: float, *, steps: int = 100, norm: str = "linf", restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, momentum: float = 0.75,
                 value_range: tuple[float, float] | None = None, targeted: bool = False,
                 seed: int | None = None, batch_size: int | None = None,
                 eot_samples: int = 1):
        super().__init__(eps=eps, norm=norm, value_range=value_range, targeted=targeted,
                         seed=seed, batch_size=batch_size,
                         eot_samples=eot_samples)
        self.steps = check_number("steps", steps, low=1, integer=True)
        self.restarts = check_number("restarts", restarts, low=1, integer=True)
        self.loss = check_loss(loss, targeted, choices=("ce", "dlr"))
        self.rho = check_number("rho", rho, low=0.0, high=1.0, low_inclusive=False)
        self.momentum = check_number("momentum", momentum, low=0.0, high=1.0,
                                     low_inclusive=False)

    @property
    def name_with_loss(self) -> str:
        return f"APGD-{self.loss.upper()}"

    @property
    def label(self) -> str:
        norm = "Linf" if self.norm == "linf" else "L2"
        return f"{self.name_with_loss}-{norm} (eps={self.eps:g})"

    def get_config(self) -> dict:
        return {**super().get_config(), "steps": self.steps, "restarts": self.restarts,
                "loss": self.loss, "rho": self.rho, "momentum": self.momentum}

    def _start(self, x):
        # As in the reference: L-inf start with the largest coordinate at eps, L2 start on the
        # sphere of radius eps.
        if self.norm == "linf":
            t = keras.random.uniform(tf.shape(x), -1.0, 1.0, seed=self._seed_generator)
        else:
            t = keras.random.normal(tf.shape(x), seed=self._seed_generator)
        t = t / batch_mask(per_example_norm(t, self.norm) + 1e-12, t)
        return project_and_clip(x + self.eps * t, x, self.eps, self.norm, self.value_range)

    def _perturb(self, logits_fn, x, y):
        tracked = init_best(x)
        for _ in tf.range(self.restarts):
            tracked = self._single_run(logits_fn, x, y, tracked)
        return tracked[0]

    def _single_run(self, logits_fn, x, y, tracked):
        first, minimum, decrement = checkpoint_lengths(self.steps)
        n = tf.shape(x)[0]
        feasible = lambda z: project_and_clip(z, x, self.eps, self.norm, self.value_range)  # noqa

        x_adv = self._start(x)
        loss, grad, logits = objective_and_gradient(logits_fn, x_adv, y, self.loss,
                                                    self.targeted, self.eot_samples)
        tracked = update_best(tracked, x_adv, loss, logits, y, self.targeted)
        x_max, grad_max, loss_max = x_adv, grad, loss
        step = tf.fill([n], 2.0 * self.eps)
        x_prev = x_adv
        history = tf.concat([loss[tf.newaxis], tf.zeros([self.steps, n])], axis=0)
        k = tf.constant(first)
        since_check = tf.constant(0)
        loss_max_at_check = loss_max
        reduced_at_check = tf.ones([n], tf.bool)

        for i in tf.range(self.steps):
            a = tf.where(i > 0, self.momentum, 1.0)
            z = feasible(x_adv + batch_mask(step, x) * steepest_direction(grad, self.norm))
            x_new = feasible(x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - x_prev))
            x_prev, x_adv = x_adv, x_new

            loss, grad, logits = objective_and_gradient(logits_fn, x_adv, y, self.loss,
                                                        self.targeted, self.eot_samples)
            tracked = update_best(tracked, x_adv, loss, logits, y, self.targeted)
            history = tf.tensor_scatter_nd_update(history, [[i + 1]], loss[tf.newaxis])
            improved = loss > loss_max
            x_max = tf.where(batch_mask(improved, x), x_adv, x_max)
            grad_max = tf.where(batch_mask(improved, x), grad, grad_max)
            loss_max = tf.where(improved, loss, loss_max)

            since_check += 1
            if since_check == k:
                window = history[i + 2 - k:i + 2]
                previous = history[i + 1 - k:i + 1]
                increases = tf.reduce_sum(tf.cast(window > previous, tf.float32), axis=0)
                oscillating = increases <= tf.cast(k, tf.float32) * self.rho
                stalled = ~reduced_at_check & (loss_max_at_check >= loss_max)
                reduce = oscillating | stalled
                reduced_at_check = reduce
                loss_max_at_check = loss_max
                step = tf.where(reduce, step / 2.0, step)
                x_adv = tf.where(batch_mask(reduce, x), x_max, x_adv)
                grad = tf.where(batch_mask(reduce, x), grad_max, grad)
                k = tf.maximum(k - decrement, minimum)
                since_check = 0
        return tracked
