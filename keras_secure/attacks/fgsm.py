"""Fast Gradient Sign Method (and its L2 variant, the Fast Gradient Method)."""

from __future__ import annotations

from keras_secure.attacks.base import (
    Attack,
    check_loss,
    objective_and_gradient,
    project_and_clip,
    steepest_direction,
)


class FGSM(Attack):
    """Fast Gradient Sign Method: one step of size ``eps`` along the gradient's sign.

    ``x_adv = clip(x + eps * sign(grad_x loss(f(x), y)))`` for ``norm="linf"`` (Goodfellow et
    al. 2015); with ``norm="l2"`` the step is ``eps * g / ||g||_2`` (the Fast Gradient Method).
    Targeted attacks step down the cross-entropy of the target class.

    Args:
        eps: step size = perturbation budget in input units, > 0 (and <= the width of
            ``value_range`` for L-inf). Required.
        norm: ``"linf"`` or ``"l2"``. Defaults to ``"linf"``.
        loss: ``"ce"`` (cross-entropy), ``"margin"`` (C&W margin) or ``"dlr"``. Defaults to
            ``"ce"``.
        value_range: ``(low, high)`` to clip adversarial inputs to, or None. Defaults to None.
        targeted: push towards the classes in ``y``. Defaults to False.
        seed: unused by FGSM (deterministic); accepted for a uniform interface. Defaults to None.
        batch_size: examples attacked at once by ``__call__``. Defaults to None (all).
        eot_samples: gradients averaged over this many evaluations of a randomized model per
            step (Expectation over Transformation, Athalye et al. 2018), >= 1. Defaults to 1.

    Call arguments:
        model, x, y: see :meth:`Attack.__call__`.

    Returns:
        Adversarial inputs with ``||x_adv - x|| <= eps``, inside ``value_range``.

    Raises:
        ValueError / TypeError: for an invalid argument (at construction) or invalid data (at
            call), naming it.

    Example:
        >>> attack = FGSM(eps=0.1, value_range=(0.0, 1.0))
        >>> x_adv = attack(model, x, y)

    References:
        Goodfellow, Shlens & Szegedy (2015), "Explaining and Harnessing Adversarial Examples",
        ICLR.
    """

    name = "FGSM"
    supports_eot = True

    def __init__(self, eps: float, *, norm: str = "linf", loss: str = "ce",
                 value_range: tuple[float, float] | None = None, targeted: bool = False,
                 seed: int | None = None, batch_size: int | None = None,
                 eot_samples: int = 1):
        super().__init__(eps=eps, norm=norm, value_range=value_range, targeted=targeted,
                         seed=seed, batch_size=batch_size,
                         eot_samples=eot_samples)
        self.loss = check_loss(loss, targeted)

    def get_config(self) -> dict:
        return {**super().get_config(), "loss": self.loss}

    def _perturb(self, logits_fn, x, y):
        _, grad, _ = objective_and_gradient(logits_fn, x, y, self.loss, self.targeted,
                                            self.eot_samples)
        x_adv = x + self.eps * steepest_direction(grad, self.norm)
        return project_and_clip(x_adv, x, self.eps, self.norm, self.value_range)
