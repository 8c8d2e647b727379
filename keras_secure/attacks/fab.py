"""FAB: the Fast Adaptive Boundary attack (minimal L-inf / L2 perturbations), and FAB-T."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_secure.attacks.base import (
    Attack,
    batch_mask,
    check_number,
    clip_to_range,
    per_example_norm,
    project_and_clip,
)
from keras_secure.classifier import labels_from_logits

_TINY = 1e-12
#: regula-falsi steps of the final search between ``x`` and the best adversarial point
FINAL_SEARCH_STEPS = 3
#: relative distance by which each point of the final search is pushed past the interpolated
#: boundary, away from ``x``
FINAL_SEARCH_OVERSHOOT = 1e-4


def project_onto_hyperplane(p, w, c, norm: str, value_range=None):
    """Smallest step from ``p`` onto the hyperplane ``c + <w, d> = 0``, inside the box.

    For each row, solves ``min ||d||`` (``norm``: ``"linf"`` or ``"l2"``) subject to
    ``c + <w, d> = 0`` and ``low <= p + d <= high``. ``c`` is the value at ``p`` of the affine
    function whose zero set is the hyperplane, so ``d`` is the displacement, not the point.
    When the box does not meet the hyperplane, ``d`` goes to the corner of the box that gets
    closest to it (every coordinate as far as the box allows in the direction that moves
    ``c + <w, d>`` towards 0).

    How: with ``s = sign(c)``, each coordinate moves by ``-s sign(w_i) min(lam r_i, room_i)``,
    where ``room_i`` is its distance to the side of the box it moves towards and the rate
    ``r_i`` is 1 (L-inf) or ``|w_i|`` (L2: the KKT conditions of the projection give a step
    proportional to ``w`` clipped to the box). The decrease ``sum |w_i| min(lam r_i, room_i)``
    is piecewise linear and non-decreasing in ``lam``; its breakpoints ``room_i / r_i`` are
    sorted, the segment where it reaches ``|c|`` is found from cumulative sums, and ``lam`` is
    solved on that segment: ``O(D log D)`` per row, no iteration. Without a box
    (``value_range=None``) the closed forms ``-c sign(w) / ||w||_1`` (L-inf) and
    ``-c w / ||w||_2^2`` (L2) are used.

    Args:
        p: points, float32 ``(n, D)``.
        w: normals, float32 ``(n, D)``.
        c: ``(n,)``, the affine function's value at ``p``.
        norm: ``"linf"`` or ``"l2"``.
        value_range: ``(low, high)`` of the box, or None for no box.

    Returns:
        ``d``, float32 ``(n, D)``: zero for a row whose ``w`` is zero.

    Example:
        >>> d = project_onto_hyperplane(tf.constant([[0.5, 0.5]]), tf.constant([[1.0, 1.0]]),
        ...                             tf.constant([0.4]), "linf", (0.0, 1.0))   # [[-0.2, -0.2]]

    References:
        Croce & Hein (2020), "Minimally distorted adversarial examples with a fast adaptive
        boundary attack", ICML, section 3.1 (projection onto a hyperplane and a box).
    """
    sgn = tf.where(c >= 0.0, 1.0, -1.0)
    need = tf.abs(c)  # how much <w, d> must move towards 0
    w_eff = w * sgn[:, tf.newaxis]  # now <w_eff, d> must decrease by `need`
    a = tf.abs(w)
    direction = -tf.sign(w_eff)
    if value_range is None:
        if norm == "linf":
            scale = need / tf.maximum(tf.reduce_sum(a, axis=1), _TINY)
            return direction * scale[:, tf.newaxis]
        scale = need / tf.maximum(tf.reduce_sum(tf.square(a), axis=1), _TINY)
        return direction * a * scale[:, tf.newaxis]

    low, high = value_range
    room = tf.maximum(tf.where(w_eff > 0.0, p - low, high - p), 0.0)
    room = tf.where(a > 0.0, room, 0.0)
    rate = tf.ones_like(a) if norm == "linf" else a
    moves = rate > 0.0
    breakpoint = tf.where(moves, room / tf.where(moves, rate, 1.0), float("inf"))
    order = tf.argsort(breakpoint, axis=1, stable=True)
    bp = tf.gather(breakpoint, order, batch_dims=1)
    slope = tf.gather(a * rate, order, batch_dims=1)  # d(decrease)/d(lam) while unsaturated
    full = tf.gather(a * room, order, batch_dims=1)  # decrease once saturated
    saturated_inc = tf.cumsum(full, axis=1)
    linear_after = tf.cumsum(slope, axis=1, exclusive=True, reverse=True)
    # decrease at each breakpoint: saturated up to it, linear beyond it (no inf * 0)
    at_bp = saturated_inc + tf.where(linear_after > 0.0, bp * linear_after, 0.0)
    reached = at_bp >= need[:, tf.newaxis]
    feasible = reached[:, -1]
    k = tf.argmax(tf.cast(reached, tf.int32), axis=1, output_type=tf.int32)  # first segment
    saturated_before = tf.gather(tf.cumsum(full, axis=1, exclusive=True), k, batch_dims=1)
    linear_from = tf.gather(tf.cumsum(slope, axis=1, reverse=True), k, batch_dims=1)
    lam = tf.maximum((need - saturated_before) / tf.maximum(linear_from, _TINY), 0.0)
    step = tf.minimum(lam[:, tf.newaxis] * rate, room)
    step = tf.where(feasible[:, tf.newaxis], step, room)
    return direction * step


class FAB(Attack):
    """FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020), L-inf or L2, and FAB-T.

    A minimal-norm attack: it looks for the adversarial point closest to ``x``. Each iteration
    linearises the classifier at the current point ``x_k``, picks the linearised decision
    boundary closest to it (untargeted: the class ``s != y`` minimising
    ``|z_s - z_y| / ||grad(z_s - z_y)||_q``, ``q`` the dual norm; FAB-T: the current target),
    and projects both ``x_k`` and the original ``x`` onto that hyperplane intersected with the
    ``value_range`` box (:func:`project_onto_hyperplane`, steps ``d_k`` and ``d_0``). The next
    point is the biased step ``(1 - a)(x_k + eta d_k) + a (x + eta d_0)`` with
    ``a = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max)``, clipped to the box: the bias towards
    ``x`` keeps the iterates close to it. Whenever an iterate is misclassified it is kept if it
    is the closest so far and the iterate moves back towards ``x``, to ``x + beta (x_k - x)``.
    Restarts after the first begin at a random point at distance ``min(best, eps) / 2`` from
    ``x`` (``best`` the smallest norm found so far for that example; without ``eps`` and
    before any success, the distance of ``x`` to its first linearised boundary). After each
    run a final search (:data:`FINAL_SEARCH_STEPS` regula-falsi steps on the segment between
    ``x`` and the run's best point, along the margin between ``y`` and the adversarial class)
    brings that point to the boundary; the best point over all runs is kept, so more restarts
    or targets never give a farther point.

    **FAB-T** (``target_classes=k``), the version in AutoAttack's standard suite: for each
    example, targeted FAB towards each of the ``k`` classes with the highest clean logits
    other than ``y``, in that order (runner-up first), ``restarts`` runs each. As in the
    reference implementation, an iterate counts as adversarial when it is misclassified (the
    target sets the direction; reaching another class on the way also counts). This is not a
    targeted attack in keras_secure's sense (``targeted`` stays False): ``y`` holds the true
    labels, and the targets are chosen internally.

    **Budget.** With ``eps=None`` the attack is unbounded: every run is made on every example
    and the smallest adversarial point found is returned. With ``eps`` set it answers the
    threat model "norm at most ``eps``": an example stops being attacked once a point within
    ``eps`` is found (later targets and restarts only attack the others, as in AutoAttack), and
    the returned point is that point, else the best point projected into the ball if that is
    still misclassified, else ``x``. Every returned point lies in the ``eps`` ball (projected
    once more at the end, against rounding) and in ``value_range``, and is checked to be
    misclassified or is ``x``. Examples the model already misclassifies are returned unchanged.

    ``minimal_norm`` is True with or without ``eps``: like C&W and DeepFool, FAB stops just
    past the decision boundary, where the deployed prediction of a model with randomized layers
    is a coin flip, so it is refused on such models (see
    :func:`keras_secure.evaluation.check_attacks`); use APGD with ``eot_samples`` there.

    Cost per iteration: untargeted, one forward pass and the Jacobian of all logits
    (``tf.GradientTape.batch_jacobian``, which vectorises the ``classes`` backward passes in
    one graph; memory ``batch x classes x input size``), plus one forward pass to test the new
    point; FAB-T, one forward+backward pass of ``z_t - z_y`` plus that forward pass. Total
    about ``restarts * max(target_classes, 1) * steps`` iterations.

    Args:
        eps: optional budget in input units (``norm``), > 0; None for the unbounded
            minimal-norm attack. Defaults to None.
        norm: ``"linf"`` or ``"l2"``. Defaults to ``"linf"``.
        steps: iterations per run, >= 1. Defaults to 100.
        restarts: runs per target (the first from ``x``, the others from random points),
            >= 1. Defaults to 1.
        target_classes: None for untargeted FAB (the paper's version), or ``k`` in
            ``[1, classes - 1]`` for FAB-T over the top-``k`` classes (AutoAttack's standard
            suite uses 9). Checked against the model when called. Defaults to None.
        alpha_max: largest weight of the step from ``x``, in [0, 1]. Defaults to 0.1.
        eta: overshoot of the projection steps, >= 1. Defaults to 1.05.
        beta: backward step after a success (the iterate moves to ``x + beta (x_k - x)``),
            in (0, 1]. Defaults to 0.9.
        value_range: ``(low, high)``, the box every iterate stays in (the projections use it),
            or None. Defaults to None.
        seed: seed of the random restarts. Defaults to None.
        batch_size: examples attacked at once by ``__call__``. Defaults to None (all).

    Returns:
        Calling the attack returns adversarial inputs, float32, shape of ``x``: per example the
        closest misclassified point found (within ``eps`` if given), else ``x``.

    Raises:
        ValueError / TypeError: for an invalid argument, naming it; a ``target_classes`` larger
            than the model's number of classes minus one when called; a model with randomized
            layers.

    Example:
        >>> fab = FAB(norm="l2", value_range=(0.0, 1.0))                     # unbounded
        >>> x_adv = fab(model, x, y)
        >>> fab_t = FAB(eps=8 / 255, target_classes=9, value_range=(0.0, 1.0))  # budgeted FAB-T
        >>> fab_t.label
        'FAB-T-Linf (eps=0.0313725)'

    References:
        Croce & Hein (2020), "Minimally distorted adversarial examples with a fast adaptive
        boundary attack", ICML. Croce & Hein (2020), "Reliable evaluation of adversarial
        robustness with an ensemble of diverse parameter-free attacks", ICML (FAB-T in
        AutoAttack).
    """

    name = "FAB"
    minimal_norm = True

    def __init__(self, eps: float | None = None, *, norm: str = "linf", steps: int = 100,
                 restarts: int = 1, target_classes: int | None = None, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9,
                 value_range: tuple[float, float] | None = None, seed: int | None = None,
                 batch_size: int | None = None):
        super().__init__(eps=eps, norm=norm, value_range=value_range, targeted=False,
                         seed=seed, batch_size=batch_size, eps_required=False)
        self.steps = check_number("steps", steps, low=1, integer=True)
        self.restarts = check_number("restarts", restarts, low=1, integer=True)
        self.target_classes = check_number("target_classes", target_classes, low=1,
                                           integer=True, allow_none=True)
        self.alpha_max = check_number("alpha_max", alpha_max, low=0.0, high=1.0)
        self.eta = check_number("eta", eta, low=1.0)
        self.beta = check_number("beta", beta, low=0.0, high=1.0, low_inclusive=False)

    # -- configuration --------------------------------------------------------------------
    @property
    def label(self) -> str:
        norm = "Linf" if self.norm == "linf" else "L2"
        kind = "FAB" if self.target_classes is None else "FAB-T"
        budget = "unbounded" if self.eps is None else f"eps={self.eps:g}"
        return f"{kind}-{norm} ({budget})"

    def get_config(self) -> dict:
        config = super().get_config()
        del config["targeted"]
        return {**config, "steps": self.steps, "restarts": self.restarts,
                "target_classes": self.target_classes, "alpha_max": self.alpha_max,
                "eta": self.eta, "beta": self.beta}

    def _check_target_classes(self, num_classes):
        if self.target_classes is not None and num_classes is not None \
                and self.target_classes > num_classes - 1:
            raise ValueError(
                f"`target_classes` must be <= the number of classes - 1 ({num_classes - 1}: "
                f"the model has {num_classes} classes, and the true class is never a target). "
                f"Received: target_classes={self.target_classes}")

    def _check_data(self, clf, x, y):
        x, y = super()._check_data(clf, x, y)
        self._check_target_classes(clf.num_classes)
        return x, y

    # -- the attack -------------------------------------------------------------------------
    def _perturb(self, logits_fn, x, y):
        logits0 = logits_fn(x)
        num_classes = logits0.shape[-1]
        self._check_target_classes(num_classes)
        n = tf.shape(x)[0]
        correct = tf.equal(labels_from_logits(logits0), y)
        if self.target_classes is None:
            targets = tf.zeros([n, 1], tf.int32)  # unused
            num_targets = 1
        else:
            # the clean ranking without the true class: column 0 is the runner-up
            masked = tf.where(tf.one_hot(y, tf.shape(logits0)[-1]) > 0.0,
                              -float("inf"), logits0)
            targets = tf.math.top_k(masked, k=self.target_classes).indices
            num_targets = self.target_classes
        best_x = x
        best_norm = tf.fill([n], float("inf"))
        scale = tf.fill([n], float("inf"))  # restart radius before any success (no eps)

        for run in tf.range(num_targets * self.restarts):
            target_index = run // self.restarts
            restart = run % self.restarts
            todo = correct
            if self.eps is not None:
                todo = todo & (best_norm > self.eps)
            idx = tf.where(todo)[:, 0]
            if tf.size(idx) > 0:
                rows = idx[:, tf.newaxis]
                x0 = tf.gather(x, idx)
                sub_norm = tf.gather(best_norm, idx)
                sub_scale = tf.gather(scale, idx)
                radius = sub_norm if self.eps is None else tf.minimum(sub_norm, self.eps)
                radius = tf.where(tf.math.is_finite(radius), radius, sub_scale)
                radius = tf.where(tf.math.is_finite(radius), radius, 0.0)
                start = tf.where(restart > 0, self._random_start(x0, radius), x0)
                target = tf.gather(tf.gather(targets, target_index, axis=1), idx)
                y0 = tf.gather(y, idx)
                new_x, new_norm, first = self._run(logits_fn, x0, y0, target, start,
                                                   tf.gather(best_x, idx), sub_norm)
                new_x, new_norm = self._final_search(
                    logits_fn, x0, y0, tf.gather(logits0, idx), new_x, new_norm)
                best_x = tf.tensor_scatter_nd_update(best_x, rows, new_x)
                best_norm = tf.tensor_scatter_nd_update(best_norm, rows, new_norm)
                scale = tf.tensor_scatter_nd_update(
                    scale, rows, tf.where(tf.math.is_finite(sub_scale), sub_scale, first))

        found = correct & tf.math.is_finite(best_norm)
        if self.eps is not None:
            # points found farther than eps are pulled into the ball and kept only if still
            # misclassified (points within it are left as found: x + (x_adv - x) may not round
            # back to x_adv)
            pulled = project_and_clip(best_x, x, self.eps, self.norm, self.value_range)
            best_x = tf.where(batch_mask(best_norm <= self.eps, x), best_x, pulled)
        fooled = found & tf.not_equal(labels_from_logits(logits_fn(best_x)), y)
        return tf.where(batch_mask(fooled, x), best_x, x)

    def _random_start(self, x0, radius):
        """A point at distance ``radius / 2`` from ``x0`` (uniform direction), in the box."""
        if self.norm == "linf":
            t = keras.random.uniform(tf.shape(x0), -1.0, 1.0, seed=self._seed_generator)
        else:
            t = keras.random.normal(tf.shape(x0), seed=self._seed_generator)
        t = t / batch_mask(tf.maximum(per_example_norm(t, self.norm), _TINY), t)
        return clip_to_range(x0 + batch_mask(0.5 * radius, x0) * t, self.value_range)

    def _boundary(self, logits_fn, x_k, y, target):
        """The linearised boundary to project onto: ``f = z_s - z_y`` at ``x_k`` and its
        gradient, ``s`` the nearest class (untargeted) or the target (FAB-T)."""
        with tf.GradientTape() as tape:
            tape.watch(x_k)
            logits = logits_fn(x_k)
            if self.target_classes is not None:
                f = (tf.gather(logits, target, batch_dims=1)
                     - tf.gather(logits, y, batch_dims=1))
        if self.target_classes is not None:
            g = tape.gradient(f, x_k)
        else:
            jac = tape.batch_jacobian(logits, x_k)  # (m, classes, ...)
            if jac is not None:
                m = tf.shape(x_k)[0]
                diff_f = logits - tf.gather(logits, y, batch_dims=1)[:, tf.newaxis]
                diff_g = tf.reshape(jac - tf.gather(jac, y, batch_dims=1)[:, tf.newaxis],
                                    [m, tf.shape(logits)[-1], -1])
                if self.norm == "linf":
                    dual = tf.reduce_sum(tf.abs(diff_g), axis=-1)
                else:
                    dual = tf.sqrt(tf.reduce_sum(tf.square(diff_g), axis=-1))
                distance = tf.abs(diff_f) / (dual + _TINY)
                distance = tf.where(tf.one_hot(y, tf.shape(logits)[-1]) > 0.0,
                                    float("inf"), distance)
                nearest = tf.argmin(distance, axis=1, output_type=tf.int32)
                f = tf.gather(diff_f, nearest, batch_dims=1)
                g = tf.reshape(tf.gather(diff_g, nearest, batch_dims=1), tf.shape(x_k))
            else:
                g = None
        if g is None:
            raise TypeError(
                "The model is not differentiable with respect to its input (the gradient is "
                "None). Use layers that define a straight-through (BPDA) gradient, or a "
                "score-based attack such as keras_secure.attacks.Square.")
        return f, g

    def _run(self, logits_fn, x0, y, target, x_k, best_x, best_norm):
        """One run of ``steps`` iterations from ``x_k``; returns the updated best points and
        norms, and the distance of ``x0`` to the first linearised boundary."""
        m = tf.shape(x0)[0]
        flat0 = tf.reshape(x0, [m, -1])
        first = tf.fill([m], float("inf"))
        for i in tf.range(self.steps):
            f, g = self._boundary(logits_fn, x_k, y, target)
            w = tf.reshape(g, [m, -1])
            flat_k = tf.reshape(x_k, [m, -1])
            # the linearisation h(z) = f + <w, z - x_k>, evaluated at x_k and at x0
            c_k = f
            c_0 = f + tf.reduce_sum(w * (flat0 - flat_k), axis=1)
            d_k = project_onto_hyperplane(flat_k, w, c_k, self.norm, self.value_range)
            d_0 = project_onto_hyperplane(flat0, w, c_0, self.norm, self.value_range)
            a_k = tf.maximum(per_example_norm(d_k, self.norm), 1e-8)
            a_0 = tf.maximum(per_example_norm(d_0, self.norm), 1e-8)
            first = tf.where(i == 0, a_0, first)
            alpha = tf.clip_by_value(a_k / (a_k + a_0), 0.0, self.alpha_max)
            alpha = alpha[:, tf.newaxis]
            step = ((1.0 - alpha) * (flat_k + self.eta * d_k)
                    + alpha * (flat0 + self.eta * d_0))
            x_k = clip_to_range(tf.reshape(step, tf.shape(x0)), self.value_range)

            adversarial = tf.not_equal(labels_from_logits(logits_fn(x_k)), y)
            distance = per_example_norm(x_k - x0, self.norm)
            better = adversarial & (distance < best_norm)
            best_x = tf.where(batch_mask(better, x0), x_k, best_x)
            best_norm = tf.where(better, distance, best_norm)
            x_k = tf.where(batch_mask(adversarial, x0), x0 + self.beta * (x_k - x0), x_k)
        return best_x, best_norm, first

    def _final_search(self, logits_fn, x, y, logits0, best_x, best_norm):
        """Regula falsi on the segment ``x + tau (best_x - x)``, ``tau`` in [0, 1], between
        ``x`` (classified ``y``) and the best point of a run (misclassified): the margin
        between ``y`` and the adversarial class is interpolated linearly between the ends of
        the bracket, and the point where it vanishes, pushed ``FINAL_SEARCH_OVERSHOOT`` further
        from ``x`` (plain regula falsi would land on the side of ``y`` and stay stuck there),
        replaces the end of its side. Returns the misclassified end and its norm where that is
        smaller than ``best_norm``, else ``(best_x, best_norm)``."""
        found = tf.math.is_finite(best_norm)
        delta = best_x - x
        n = tf.shape(x)[0]
        tau_lo, tau_hi = tf.zeros([n]), tf.ones([n])
        hi, z_lo, z_hi = best_x, logits0, logits_fn(best_x)
        for _ in tf.range(FINAL_SEARCH_STEPS):
            cls = labels_from_logits(z_hi)
            m_lo = tf.gather(z_lo, y, batch_dims=1) - tf.gather(z_lo, cls, batch_dims=1)
            m_hi = tf.gather(z_hi, y, batch_dims=1) - tf.gather(z_hi, cls, batch_dims=1)
            gap = m_lo - m_hi
            t = tf.where(gap > _TINY, m_lo / tf.maximum(gap, _TINY), 1.0)
            t = tf.clip_by_value(t, 0.0, 1.0)
            tau = tau_lo + t * (tau_hi - tau_lo)
            tau = tf.minimum(tau * (1.0 + FINAL_SEARCH_OVERSHOOT), tau_hi)
            mid = clip_to_range(x + batch_mask(tau, x) * delta, self.value_range)
            z_mid = logits_fn(mid)
            to_hi = found & tf.not_equal(labels_from_logits(z_mid), y)
            to_lo = found & ~to_hi
            hi = tf.where(batch_mask(to_hi, x), mid, hi)
            tau_hi = tf.where(to_hi, tau, tau_hi)
            z_hi = tf.where(to_hi[:, tf.newaxis], z_mid, z_hi)
            tau_lo = tf.where(to_lo, tau, tau_lo)
            z_lo = tf.where(to_lo[:, tf.newaxis], z_mid, z_lo)
        norm = per_example_norm(hi - x, self.norm)
        better = found & (norm < best_norm)
        return (tf.where(batch_mask(better, x), hi, best_x),
                tf.where(better, norm, best_norm))
