"""Momentum Iterative FGSM."""

from __future__ import annotations

import tensorflow as tf

from keras_secure.attacks.base import (
    Attack,
    batch_mask,
    check_loss,
    check_number,
    init_best,
    objective,
    objective_and_gradient,
    project_and_clip,
    steepest_direction,
    update_best,
)


class MIFGSM(Attack):
    """Momentum Iterative Fast Gradient Sign Method (Dong et al. 2018).

    Accumulates a velocity of L1-normalised gradients, ``g <- decay * g + grad / ||grad||_1``,
    and steps ``step_size`` along ``sign(g)`` (L-inf) or ``g / ||g||_2`` (L2), projecting onto
    the ``eps`` ball. Momentum stabilises the update direction, which makes the examples
    transfer better to other models (black-box setting). Returns, per example, the best iterate
    (misclassified if any iterate was, else the highest-loss one).

    Args:
        eps: perturbation budget in input units, > 0. Required.
        steps: number of iterations, >= 1. Defaults to 10.
        step_size: step in input units, > 0. Defaults to ``eps / steps`` (the paper's choice).
        decay: momentum decay factor ``mu``, >= 0. Defaults to 1.0.
        norm: ``"linf"`` or ``"l2"``. Defaults to ``"linf"``.
        loss: ``"ce"``, ``"margin"`` or ``"dlr"``. Defaults to ``"ce"``.
        value_range: ``(low, high)`` to clip to, or None. Defaults to None.
        targeted: push towards the classes in ``y``. Defaults to False.
        seed: unused (deterministic). Defaults to None.
        batch_size: examples attacked at once by ``__call__``. Defaults to None (all).
        eot_samples: gradients averaged over this many evaluations of a randomized model per
            step (Expectation over Transformation, Athalye et al. 2018), >= 1. Defaults to 1.

    Returns:
        Adversarial inputs with ``||x_adv - x|| <= eps``, inside ``value_range``.

    Raises:
        ValueError / TypeError: for an invalid argument, naming it.

    Example:
        >>> x_adv = MIFGSM(eps=0.1, steps=10, value_range=(0.0, 1.0))(model, x, y)

    References:
        Dong, Liao, Pang, Su, Zhu, Hu & Li (2018), "Boosting Adversarial Attacks with Momentum",
        CVPR.
    """

    name = "MI-FGSM"
    supports_eot = True

    def __init__(self, eps: float, *, steps: int = 10, step_size: float | None = None,
                 decay: float = 1.0, norm: str = "linf", loss: str = "ce",
                 value_range: tuple[float, float] | None = None, targeted: bool = False,
                 seed: int | None = None, batch_size: int | None = None,
                 eot_samples: int = 1):
        super().__init__(eps=eps, norm=norm, value_range=value_range, targeted=targeted,
                         seed=seed, batch_size=batch_size,
                         eot_samples=eot_samples)
        self.steps = check_number("steps", steps, low=1, integer=True)
        self.step_size = check_number("step_size", step_size, low=0.0, low_inclusive=False,
                                      allow_none=True)
        self.decay = check_number("decay", decay, low=0.0)
        self.loss = check_loss(loss, targeted)

    def get_config(self) -> dict:
        return {**super().get_config(), "steps": self.steps, "step_size": self.step_size,
                "decay": self.decay, "loss": self.loss}

    def _perturb(self, logits_fn, x, y):
        alpha = self.step_size if self.step_size is not None else self.eps / self.steps
        x_adv, velocity = x, tf.zeros_like(x)
        best = init_best(x)
        for _ in tf.range(self.steps):
            values, grad, logits = objective_and_gradient(logits_fn, x_adv, y, self.loss,
                                                          self.targeted, self.eot_samples)
            best = update_best(best, x_adv, values, logits, y, self.targeted)
            l1 = tf.reduce_sum(tf.abs(tf.reshape(grad, [tf.shape(grad)[0], -1])), axis=1)
            velocity = self.decay * velocity + grad / batch_mask(tf.maximum(l1, 1e-12), grad)
            x_adv = project_and_clip(x_adv + alpha * steepest_direction(velocity, self.norm),
                                     x, self.eps, self.norm, self.value_range)
        logits = logits_fn(x_adv)
        best = update_best(best, x_adv, objective(logits, y, self.loss, self.targeted), logits,
                           y, self.targeted)
        return best[0]
