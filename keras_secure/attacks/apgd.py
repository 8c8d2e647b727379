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
        evaluate = lambda z: objective_and_gradient(  # noqa: E731
            logits_fn, z, y, self.loss, self.targeted, self.eot_samples)
        for _ in tf.range(self.restarts):
            tracked = self._single_run(evaluate, x, y, tracked)
        return tracked[0]

    def _single_run(self, evaluate, x, y, tracked):
        """One APGD run from a random start; ``evaluate(x) -> (objective, gradient, logits)``
        gives the per-example objective to maximise. Success is judged against ``y`` (and
        ``self.targeted``) by :func:`update_best`."""
        first, minimum, decrement = checkpoint_lengths(self.steps)
        n = tf.shape(x)[0]
        feasible = lambda z: project_and_clip(z, x, self.eps, self.norm, self.value_range)  # noqa

        x_adv = self._start(x)
        loss, grad, logits = evaluate(x_adv)
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

            loss, grad, logits = evaluate(x_adv)
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


def targeted_dlr(logits: tf.Tensor, y: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Targeted Difference of Logits Ratio (Croce & Hein 2020, eq. 7), to be maximised:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` with ``z_pi`` the logits sorted in
    decreasing order. Invariant to shifting and rescaling the logits; needs >= 4 classes."""
    top = tf.math.top_k(logits, k=4).values
    z_y = tf.gather(logits, y, batch_dims=1)
    z_t = tf.gather(logits, target, batch_dims=1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def target_ranking(logits: tf.Tensor, y: tf.Tensor, count: int) -> tf.Tensor:
    """The ``count`` classes other than ``y`` with the highest logits, best first:
    ``(batch, count)`` int32 (the targets of APGD-T and FAB-T)."""
    onehot = tf.one_hot(y, tf.shape(logits)[-1], dtype=logits.dtype)
    others = tf.where(onehot > 0, tf.constant(-float("inf"), logits.dtype), logits)
    return tf.cast(tf.math.top_k(others, k=count).indices, tf.int32)


class APGDT(APGD):
    """APGD-T: APGD on the targeted DLR loss, run once per target class (Croce & Hein 2020).

    For each example the ``target_classes`` classes other than the true label with the highest
    clean logits are attacked one after the other, best first; an example counts as broken as
    soon as any run makes it misclassified (the attack is untargeted in effect: ``y`` holds the
    true labels, and any wrong class counts), and each later target only runs on the examples
    still classified correctly, as in AutoAttack. The targeted DLR loss
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` is scale- and shift-invariant, so
    rescaled logits (defensive distillation) do not weaken it.

    Args:
        eps: perturbation budget in input units, > 0. Required.
        target_classes: number of target classes, >= 1 and at most ``classes - 1`` of the model
            it attacks (checked at call). Defaults to 9 (AutoAttack's standard version).
        steps: iterations per target and restart, >= 1. Defaults to 100.
        restarts: random restarts per target, >= 1. Defaults to 1.
        norm, rho, momentum, value_range, seed, batch_size, eot_samples: as :class:`APGD`.

    Returns:
        Adversarial inputs inside the eps ball and ``value_range``; per example a misclassified
        point if one was found, else the point of highest targeted DLR loss of the last target.

    Raises:
        ValueError / TypeError: for an invalid argument, naming it; at call, for a model with
            fewer than 4 classes (the targeted DLR loss needs 4 logits) or ``target_classes``
            above ``classes - 1``.

    Example:
        >>> x_adv = APGDT(eps=0.3, value_range=(0.0, 1.0), seed=0)(model, x, y)

    References:
        Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
        diverse parameter-free attacks", ICML (APGD-T, the targeted DLR loss, and the standard
        AutoAttack version with 9 target classes).
    """

    name = "APGD-T"

    def __init__(self, eps: float, *, target_classes: int = 9, steps: int = 100,
                 norm: str = "linf", restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, value_range: tuple[float, float] | None = None,
                 seed: int | None = None, batch_size: int | None = None, eot_samples: int = 1):
        super().__init__(eps, steps=steps, norm=norm, restarts=restarts, loss="dlr", rho=rho,
                         momentum=momentum, value_range=value_range, seed=seed,
                         batch_size=batch_size, eot_samples=eot_samples)
        self.target_classes = check_number("target_classes", target_classes, low=1,
                                           integer=True)

    @property
    def name_with_loss(self) -> str:
        return "APGD-T"

    def get_config(self) -> dict:
        config = super().get_config()
        for key in ("loss", "targeted"):
            config.pop(key)
        return {**config, "target_classes": self.target_classes}

    def _check_data(self, clf, x, y):
        classes = clf.num_classes
        if classes < 4:
            raise ValueError(
                "APGD-T's targeted DLR loss needs a model with at least 4 classes. Received: a "
                f"model with {classes} classes; use APGD (loss='ce') or FAB instead.")
        if self.target_classes > classes - 1:
            raise ValueError(
                f"`target_classes` must be at most {classes - 1} (the model's classes other "
                f"than the true one). Received: target_classes={self.target_classes}")
        return super()._check_data(clf, x, y)

    def _perturb(self, logits_fn, x, y):
        targets = target_ranking(logits_fn(x), y, self.target_classes)
        best_x, best_loss, best_adv = init_best(x)
        for k in tf.range(self.target_classes):
            # only the examples not yet broken are attacked towards the next target
            if tf.reduce_all(best_adv):
                break
            best_x, best_loss, best_adv = self._attack_target(
                logits_fn, x, y, targets[:, k], (best_x, best_loss, best_adv))
        return best_x

    def _attack_target(self, logits_fn, x, y, target, best):
        """Run APGD towards ``target`` on the examples ``best`` has not broken yet."""
        best_x, best_loss, best_adv = best
        index = tf.where(~best_adv)[:, 0]
        x_sub, y_sub = tf.gather(x, index), tf.gather(y, index)
        t_sub = tf.gather(target, index)
        evaluate = lambda z: _targeted_dlr_and_gradient(  # noqa: E731
            logits_fn, z, y_sub, t_sub, self.eot_samples)
        tracked = init_best(x_sub)
        for _ in tf.range(self.restarts):
            tracked = self._single_run(evaluate, x_sub, y_sub, tracked)
        rows = index[:, tf.newaxis]
        return (tf.tensor_scatter_nd_update(best_x, rows, tracked[0]),
                tf.tensor_scatter_nd_update(best_loss, rows, tracked[1]),
                tf.tensor_scatter_nd_update(best_adv, rows, tracked[2]))


def _targeted_dlr_and_gradient(logits_fn, x, y, target, eot_samples):
    total_value = total_grad = total_logits = None
    for _ in range(eot_samples):  # a Python loop: eot_samples is a constant of the attack
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = logits_fn(x)
            value = targeted_dlr(logits, y, target)
        grad = tape.gradient(value, x)
        if grad is None:
            raise TypeError("The model is not differentiable with respect to its input (the "
                            "gradient is None). Use layers that define a straight-through "
                            "(BPDA) gradient, or a score-based attack such as Square.")
        if total_value is None:
            total_value, total_grad, total_logits = value, grad, logits
        else:
            total_value, total_grad = total_value + value, total_grad + grad
            total_logits = total_logits + logits
    scale = 1.0 / eot_samples
    return total_value * scale, total_grad * scale, total_logits * scale
