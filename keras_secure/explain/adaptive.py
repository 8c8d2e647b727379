"""Adaptive attacks on an :class:`~keras_secure.explain.AttributionDetector`: attacks that know
the detector and must fool the classifier while staying under the detector's threshold
(Carlini & Wagner 2017, "Adversarial Examples Are Not Easily Detected").

Both minimise, per example, the joint objective

    relu(margin(x) + kappa) + detector_weight * relu(score(x) - threshold)

where ``margin = z_y - max_{j != y} z_j`` (positive while the model is still right) and
``score`` is the detector's decision function: zero exactly when the input is misclassified
(by at least ``kappa``) and not flagged.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_secure.attacks.base import (
    Attack,
    batch_mask,
    check_number,
    margin,
    project_and_clip,
    random_start,
)
from keras_secure.attacks.square import square_fraction
from keras_secure.classifier import as_classifier
from keras_secure.explain.detector import AttributionDetector
from keras_secure.validation import check_value_range


def _check_detector(detector):
    if not isinstance(detector, AttributionDetector):
        raise TypeError("`detector` must be a fitted keras_secure.explain.AttributionDetector. "
                        f"Received: detector of type {type(detector).__name__}")
    if detector.threshold is None:
        raise ValueError("`detector` is not fitted: call detector.fit(...) first.")
    return detector


class AdaptivePGD(Attack):
    """L-inf PGD on the joint objective, differentiating through the detector's in-graph
    attribution (Carlini & Wagner 2017's white-box adaptive attack).

    Needs a detector with a differentiable score (:attr:`AttributionDetector.differentiable`):
    ``input_x_gradient`` attributions, or shap attributions of the layer before a Dense
    output layer (their exact value ``W[:, c] * (h - mean h)`` is in-graph), with a logistic
    regression. Each step moves along the sign of the joint objective's gradient from a
    random start; the returned point is, per example, the first that fools both, else the one
    with the lowest objective.

    Args:
        detector: the fitted detector (and through it, the protected model).
        eps: L-inf budget in input units, > 0.
        steps: gradient steps, >= 1. Defaults to 50.
        step_size: step length, > 0, or None for ``2.5 * eps / steps``. Defaults to None.
        detector_weight: weight of the detector term, > 0. Defaults to 1.0.
        kappa: margin by which the example must be misclassified, >= 0. Defaults to 0.0.
        value_range: ``(low, high)`` to clip to, or None. Defaults to None.
        seed: seed of the random start. Defaults to None.
        batch_size: examples attacked at once. Defaults to None (all).

    Raises:
        TypeError: for a detector that is not an :class:`AttributionDetector`.
        ValueError: for an unfitted or non-differentiable detector, arguments out of range, or
            a model other than the detector's.

    Example:
        >>> attack = AdaptivePGD(detector, eps=0.1, steps=50, value_range=(0, 1), seed=0)
        >>> report = detector.evaluate_attack(x_test, y_test, attack)

    References:
        Carlini & Wagner (2017), "Adversarial Examples Are Not Easily Detected: Bypassing Ten
        Detection Methods", AISec; Madry et al. (2018), PGD.
    """

    name = "Adaptive-PGD"
    adaptive = True

    def __init__(self, detector, eps: float, *, steps: int = 50, step_size: float | None = None,
                 detector_weight: float = 1.0, kappa: float = 0.0, value_range=None,
                 seed: int | None = None, batch_size: int | None = None):
        super().__init__(eps=eps, norm="linf", value_range=value_range, seed=seed,
                         batch_size=batch_size)
        self.detector = _check_detector(detector)
        if not detector.differentiable:
            raise ValueError(
                "AdaptivePGD needs a detector with a differentiable score: an explainer with "
                "method='input_x_gradient', or a shap method on the layer before a Dense output "
                "layer, and a logistic-regression estimator. Use AdaptiveSquare (queries only) "
                f"for this detector (method={detector.explainer.method!r}, layer="
                f"{detector.explainer.layer!r}).")
        self.steps = check_number("steps", steps, low=1, integer=True)
        self.step_size = check_number("step_size", step_size, low=0.0, low_inclusive=False,
                                      allow_none=True)
        if self.step_size is None:
            self.step_size = 2.5 * self.eps / self.steps
        self.detector_weight = check_number("detector_weight", detector_weight, low=0.0,
                                            low_inclusive=False)
        self.kappa = check_number("kappa", kappa, low=0.0)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["norm"], config["targeted"]
        return {**config, "detector": self.detector, "steps": self.steps,
                "step_size": self.step_size, "detector_weight": self.detector_weight,
                "kappa": self.kappa}

    def __call__(self, model, x, y=None):
        self.detector._check_model(model)
        return super().__call__(model, x, y)

    def _joint(self, logits_fn, x, y):
        logits = logits_fn(x)
        m = margin(logits, y)
        score = self.detector.decision_function_tensor(x, logits)
        over = score - self.detector.threshold
        loss = tf.nn.relu(m + self.kappa) + self.detector_weight * tf.nn.relu(over)
        return loss, (m < -self.kappa) & (over <= 0.0)

    def _perturb(self, logits_fn, x, y):
        x_adv = project_and_clip(random_start(x, self.eps, "linf", self._seed_generator), x,
                                 self.eps, "linf", self.value_range)
        best_x, best_loss = x, tf.fill([tf.shape(x)[0]], float("inf"))
        best_ok = tf.zeros([tf.shape(x)[0]], tf.bool)
        for _ in tf.range(self.steps + 1):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss, ok = self._joint(logits_fn, x_adv, y)
            grad = tape.gradient(loss, x_adv)
            better = ~best_ok & (ok | (loss < best_loss))
            best_x = tf.where(batch_mask(better, x), x_adv, best_x)
            best_loss = tf.where(better, loss, best_loss)
            best_ok = best_ok | ok
            x_adv = project_and_clip(x_adv - self.step_size * tf.sign(grad), x, self.eps,
                                     "linf", self.value_range)
        return best_x


class AdaptiveSquare:
    """Gradient-free adaptive attack: the Square attack's random search (Andriushchenko et al.
    2020) on the joint objective, querying the model's logits and the detector's score only.

    Works against any detector, LIME's included. Each iteration proposes, for every example
    not yet successful, a square window set to ``+-eps`` per channel (the window shrinks with
    :func:`keras_secure.attacks.square.square_fraction`), and keeps it when the joint
    objective decreases. One query (a model evaluation and a detector score) per active example
    and iteration. When the detector's in-graph score is exactly its score
    (:attr:`AttributionDetector.in_graph_exact`, checked when it was fitted), queries use it
    (faster, same values); otherwise the detector as deployed.

    Args:
        detector: the fitted detector.
        eps: L-inf budget in input units, > 0.
        queries: query budget per example (including the initial point), >= 2. Defaults to
            300.
        p_init: initial fraction of pixels changed, in (0, 1]. Defaults to 0.1.
        detector_weight: weight of the detector term, > 0. Defaults to 1.0.
        kappa: margin by which the example must be misclassified, >= 0. Defaults to 0.0.
        value_range: ``(low, high)`` to clip to, or None. Defaults to None.
        seed: seed of the random search. Defaults to 0.

    Returns (``__call__``):
        Adversarial images ``(n, h, w, c)`` float32 with ``||x_adv - x||_inf <= eps``.

    Raises:
        TypeError / ValueError: for a bad detector or arguments, inputs that are not images,
            or a model other than the detector's.

    Example:
        >>> attack = AdaptiveSquare(detector, eps=0.1, queries=300, value_range=(0, 1))
        >>> report = detector.evaluate_attack(x_test, y_test, attack)

    References:
        Andriushchenko, Croce, Flammarion & Hein (2020), "Square Attack", ECCV; Carlini &
        Wagner (2017), "Adversarial Examples Are Not Easily Detected".
    """

    name = "Adaptive-Square"
    adaptive = True
    uses_gradients = False

    def __init__(self, detector, eps: float, *, queries: int = 300, p_init: float = 0.1,
                 detector_weight: float = 1.0, kappa: float = 0.0, value_range=None,
                 seed: int = 0):
        self.detector = _check_detector(detector)
        self.eps = check_number("eps", eps, low=0.0, low_inclusive=False)
        self.queries = check_number("queries", queries, low=2, integer=True)
        self.p_init = check_number("p_init", p_init, low=0.0, high=1.0, low_inclusive=False)
        self.detector_weight = check_number("detector_weight", detector_weight, low=0.0,
                                            low_inclusive=False)
        self.kappa = check_number("kappa", kappa, low=0.0)
        self.value_range = check_value_range(value_range)
        self.seed = check_number("seed", seed, low=0, integer=True)
        self._graph = None

    @property
    def label(self) -> str:
        return f"{self.name}-Linf (eps={self.eps:g})"

    def _queries(self, x, y):
        """``(margin, score)`` of a batch: one query of the model and of the detector."""
        if self.detector.in_graph_exact:
            if self._graph is None:
                def query(x, y):
                    logits = self.detector.classifier.logits(x)
                    return margin(logits, y), self.detector.decision_function_tensor(x, logits)

                self._graph = tf.function(query, reduce_retracing=True)
            m, score = self._graph(tf.constant(x), tf.constant(y, tf.int32))
            return m.numpy().astype(np.float64), score.numpy().astype(np.float64)
        logits = self.detector.classifier.logits(tf.constant(x))
        m = margin(logits, tf.constant(y, tf.int32)).numpy().astype(np.float64)
        return m, self.detector._raw(self.detector.signatures(x))

    def _joint(self, x, y):
        m, score = self._queries(x, y)
        over = score - self.detector.threshold
        loss = np.maximum(m + self.kappa, 0.0) + self.detector_weight * np.maximum(over, 0.0)
        return loss

    def _clip(self, z):
        return z if self.value_range is None else np.clip(z, *self.value_range)

    def __call__(self, model, x, y=None):
        self.detector._check_model(model)
        clf = as_classifier(model)
        x, y = clf.check(x, y)
        x = x.astype(np.float32)
        if x.ndim != 4:
            raise ValueError("`x` must be images of shape (n, height, width, channels) for "
                             f"AdaptiveSquare. Received: x.shape={x.shape}")
        if self.value_range is not None and (x.min() < self.value_range[0] - 1e-6
                                             or x.max() > self.value_range[1] + 1e-6):
            raise ValueError(f"`x` must lie in value_range={self.value_range}. Received: "
                             f"values in [{x.min():g}, {x.max():g}]")
        y = clf.predict_labels(x) if y is None else y
        rng = np.random.default_rng(self.seed)
        n, h, w, c = x.shape
        eps = np.float32(self.eps)
        stripes = rng.choice(np.array([-eps, eps]), size=(n, 1, w, c))
        x_best = self._clip(x + stripes).astype(np.float32)
        loss_best = self._joint(x_best, y)
        rows = np.arange(h)[None, :, None, None]
        cols = np.arange(w)[None, None, :, None]
        for i in range(1, self.queries):
            active = np.flatnonzero(loss_best > 0.0)
            if active.size == 0:
                break
            p = float(square_fraction(self.p_init, i, self.queries))
            side = int(np.clip(round(np.sqrt(p * h * w)), 1, max(min(h, w) - 1, 1)))
            top = rng.integers(0, h - side + 1, size=active.size)[:, None, None, None]
            left = rng.integers(0, w - side + 1, size=active.size)[:, None, None, None]
            window = ((rows >= top) & (rows < top + side) & (cols >= left)
                      & (cols < left + side))
            signs = rng.choice(np.array([-eps, eps]), size=(active.size, 1, 1, c))
            candidate = np.where(window, self._clip(x[active] + signs), x_best[active])
            loss = self._joint(candidate.astype(np.float32), y[active])
            accept = loss < loss_best[active]
            x_best[active[accept]] = candidate[accept]
            loss_best[active[accept]] = loss[accept]
        delta = np.clip(x_best - x, -eps, eps)
        return self._clip(x + delta).astype(np.float32)
