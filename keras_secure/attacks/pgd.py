"""Projected Gradient Descent (L-inf and L2) with random start, restarts and step schedules."""

from __future__ import annotations

import math

import tensorflow as tf

from keras_secure.attacks.base import (
    Attack,
    check_bool,
    check_choice,
    check_loss,
    check_number,
    init_best,
    objective,
    objective_and_gradient,
    project_and_clip,
    random_start,
    steepest_direction,
    update_best,
)

SCHEDULES = ("constant", "linear", "cosine", "step")


def step_factor(schedule: str, i, steps: int):
    """Multiplier of the step size at iteration ``i`` (0-based) of ``steps``.

    ``constant``: 1; ``linear``: ``1 - i / steps``; ``cosine``: ``(1 + cos(pi i / steps)) / 2``;
    ``step``: 1, halved at 50% and again at 75% of the iterations.
    """
    t = tf.cast(i, tf.float32) / float(steps)
    if schedule == "constant":
        return tf.constant(1.0)
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + tf.cos(math.pi * t))
    return tf.where(t < 0.5, 1.0, tf.where(t < 0.75, 0.5, 0.25))


class PGD(Attack):
    """Projected Gradient Descent (Madry et al. 2018), L-inf or L2.

    From a random point of the ``eps`` ball (or from ``x``), repeat ``steps`` times: step
    ``step_size`` along the steepest-ascent direction of the loss (gradient sign for L-inf,
    normalised gradient for L2), project back onto the ball and clip to ``value_range``.
    With ``restarts > 1`` the attack runs again from new random starts. For every example the
    returned point is the best iterate of all restarts: a misclassified one if any iterate was
    misclassified, else the one with the highest loss - so more steps or restarts never weaken
    the attack.

    Args:
        eps: perturbation budget in input units, > 0. Required.
        steps: number of gradient steps per restart, >= 1. Defaults to 10.
        step_size: step length in input units, > 0. Defaults to ``2.5 * eps / steps``
            (Madry et al.).
        norm: ``"linf"`` or ``"l2"``. Defaults to ``"linf"``.
        restarts: number of random restarts, >= 1. Defaults to 1.
        random_init: start from a uniformly random point of the ball. Defaults to True.
        step_schedule: ``"constant"``, ``"linear"``, ``"cosine"`` or ``"step"`` (see
            :func:`step_factor`). Defaults to ``"constant"``.
        loss: ``"ce"``, ``"margin"`` (C&W) or ``"dlr"`` (untargeted only). Defaults to ``"ce"``.
        value_range: ``(low, high)`` to clip to, or None. Defaults to None.
        targeted: push towards the classes in ``y``. Defaults to False.
        seed: seed of the random starts. Defaults to None.
        batch_size: examples attacked at once by ``__call__``. Defaults to None (all).
        eot_samples: gradients averaged over this many evaluations of a randomized model per
            step (Expectation over Transformation, Athalye et al. 2018), >= 1. Defaults to 1.

    Call arguments:
        model, x, y: see :meth:`Attack.__call__`.

    Returns:
        Adversarial inputs with ``||x_adv - x|| <= eps``, inside ``value_range``.

    Raises:
        ValueError / TypeError: for an invalid argument, naming it.

    Example:
        >>> attack = PGD(eps=8 / 255, steps=10, value_range=(0.0, 1.0), seed=0)
        >>> x_adv = attack(model, x, y)

    References:
        Madry, Makelov, Schmidt, Tsipras & Vladu (2018), "Towards Deep Learning Models Resistant
        to Adversarial Attacks", ICLR.
    """

    name = "PGD"
    supports_eot = True

    def __init__(self, eps: float, *, steps: int = 10, step_size: float | None = None,
                 norm: str = "linf", restarts: int = 1, random_init: bool = True,
                 step_schedule: str = "constant", loss: str = "ce",
                 value_range: tuple[float, float] | None = None, targeted: bool = False,
                 seed: int | None = None, batch_size: int | None = None,
                 eot_samples: int = 1):
        super().__init__(eps=eps, norm=norm, value_range=value_range, targeted=targeted,
                         seed=seed, batch_size=batch_size,
                         eot_samples=eot_samples)
        self.steps = check_number("steps", steps, low=1, integer=True)
        self.step_size = check_number("step_size", step_size, low=0.0, low_inclusive=False,
                                      allow_none=True)
        self.restarts = check_number("restarts", restarts, low=1, integer=True)
        self.random_init = check_bool("random_init", random_init)
        self.step_schedule = check_choice("step_schedule", step_schedule, SCHEDULES)
        self.loss = check_loss(loss, targeted)

    @property
    def effective_step_size(self) -> float:
        """The step size used: ``step_size`` or ``2.5 * eps / steps``."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def get_config(self) -> dict:
        return {**super().get_config(), "steps": self.steps, "step_size": self.step_size,
                "restarts": self.restarts, "random_init": self.random_init,
                "step_schedule": self.step_schedule, "loss": self.loss}

    def _perturb(self, logits_fn, x, y):
        best = init_best(x)
        alpha = self.effective_step_size
        for _ in tf.range(self.restarts):
            x_adv = x
            if self.random_init:
                x_adv = project_and_clip(random_start(x, self.eps, self.norm,
                                                      self._seed_generator),
                                         x, self.eps, self.norm, self.value_range)
            for i in tf.range(self.steps):
                values, grad, logits = objective_and_gradient(logits_fn, x_adv, y, self.loss,
                                                              self.targeted, self.eot_samples)
                best = update_best(best, x_adv, values, logits, y, self.targeted)
                step = alpha * step_factor(self.step_schedule, i, self.steps)
                x_adv = project_and_clip(x_adv + step * steepest_direction(grad, self.norm),
                                         x, self.eps, self.norm, self.value_range)
            logits = logits_fn(x_adv)
            best = update_best(best, x_adv, objective(logits, y, self.loss, self.targeted),
                               logits, y, self.targeted)
        return best[0]
