"""Shared pieces of every evasion attack.

Everything an attack loop needs more than once lives here, once: argument validation, recovery
of logits from a model, the per-example losses, projection onto the L-inf / L2 ball, clipping to
the value range, random starts, and the ``Attack`` base class whose ``__call__`` validates the
data, batches it and runs the subclass's loop in one cached ``tf.function``.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_secure.classifier import as_classifier, labels_from_logits
from keras_secure.validation import (  # noqa: F401  (re-exported)
    check_bool,
    check_choice,
    check_number,
    check_value_range,
)

NORMS = ("linf", "l2")
_CONVERTED: dict = {}  # attack class -> its AutoGraph-converted _perturb
LOSSES = ("ce", "margin", "dlr")
_TINY = 1e-12


# --------------------------------------------------------------------------------------------
# Argument validation: the shared helpers live in keras_secure.validation (re-exported here)
# --------------------------------------------------------------------------------------------
def check_loss(loss, targeted: bool, choices=LOSSES) -> str:
    """Validate an attack loss; DLR is untargeted only (targeted DLR needs the true labels as
    well as the targets, and attacks only receive the targets)."""
    check_choice("loss", loss, choices)
    if loss == "dlr" and targeted:
        alternatives = " or ".join(repr(c) for c in choices if c != "dlr")
        raise ValueError("`loss='dlr'` is untargeted only (targeted DLR needs the true labels "
                         f"as well as the targets); use loss={alternatives}. "
                         "Received: loss='dlr', targeted=True")
    return loss


# --------------------------------------------------------------------------------------------
# Logits: read through the classifier contract (keras_secure.classifier), never by hand
# --------------------------------------------------------------------------------------------
def logits_function(model) -> Callable[[tf.Tensor], tf.Tensor]:
    """Return a function ``x -> logits`` for ``model``: the classifier contract's adaptive path.

    Attacks work on logits: cross-entropy and margins computed from saturated probabilities have
    vanishing gradients (gradient masking). The function is
    :meth:`keras_secure.classifier.Classifier.logits`: logits are recovered behind a softmax or
    a single sigmoid unit, a single-logit binary classifier gives two-class logits ``[0, z]``,
    and keras_secure's randomized and non-differentiable layers anywhere inside the model are
    attacked through their adaptive path (EOT, BPDA). See :class:`keras_secure.Classifier`.

    Args:
        model: a Keras model / layer, a callable returning class scores, or a
            :class:`keras_secure.Classifier` (to declare ``from_logits``).

    Returns:
        A callable mapping a float32 batch to float32 logits of shape ``(batch, classes)``.

    Raises:
        TypeError: if ``model`` is not callable, or ends in a softmax that cannot be undone.

    Example:
        >>> probs = keras.Sequential([logits_model, keras.layers.Softmax()])
        >>> logits = logits_function(probs)(x)   # == logits_model(x)
    """
    return as_classifier(model).logits


# --------------------------------------------------------------------------------------------
# Tensor helpers used inside attack loops (pure TensorFlow, traceable)
# --------------------------------------------------------------------------------------------
def batch_mask(mask: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Reshape a per-example ``(n,)`` mask/value to broadcast against ``like``."""
    return tf.reshape(mask, [-1] + [1] * (like.shape.rank - 1))


def per_example_norm(v: tf.Tensor, norm: str) -> tf.Tensor:
    """L-inf or L2 norm of each example of ``v``, shape ``(n,)``."""
    flat = tf.reshape(v, [tf.shape(v)[0], -1])
    if norm == "linf":
        return tf.reduce_max(tf.abs(flat), axis=1)
    return tf.sqrt(tf.reduce_sum(tf.square(flat), axis=1))


def project(delta: tf.Tensor, eps, norm: str) -> tf.Tensor:
    """Project each perturbation onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return tf.clip_by_value(delta, -eps, eps)
    n = per_example_norm(delta, "l2")
    factor = tf.minimum(1.0, eps / tf.maximum(n, _TINY))
    return delta * batch_mask(factor, delta)


def clip_to_range(x: tf.Tensor, value_range) -> tf.Tensor:
    """Clip to ``value_range`` (no-op for ``None``)."""
    if value_range is None:
        return x
    return tf.clip_by_value(x, value_range[0], value_range[1])


def project_and_clip(x_adv, x, eps, norm, value_range):
    """The feasible point: inside the ``eps`` ball around ``x`` and inside ``value_range``."""
    return clip_to_range(x + project(x_adv - x, eps, norm), value_range)


def steepest_direction(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """Steepest-ascent direction of unit ``norm``: sign for L-inf, normalised gradient for L2."""
    if norm == "linf":
        return tf.sign(grad)
    return grad / batch_mask(tf.maximum(per_example_norm(grad, "l2"), _TINY), grad)


def random_start(x, eps, norm, seed_generator):
    """A uniformly random point of the ``norm`` ball of radius ``eps`` around ``x``.

    L-inf: uniform in the cube. L2: uniform in the ball (Gaussian direction, radius
    ``eps * u ** (1 / d)``).
    """
    if norm == "linf":
        noise = keras.random.uniform(tf.shape(x), -1.0, 1.0, seed=seed_generator)
        return x + eps * noise
    direction = keras.random.normal(tf.shape(x), seed=seed_generator)
    direction = direction / batch_mask(per_example_norm(direction, "l2") + _TINY, x)
    d = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
    u = keras.random.uniform(tf.shape(x)[:1], seed=seed_generator)
    return x + eps * direction * batch_mask(tf.pow(u, 1.0 / d), x)


def margin(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """``z_y - max_{j != y} z_j`` per example: positive while ``y`` is the predicted class."""
    num_classes = tf.shape(logits)[-1]
    onehot = tf.one_hot(y, num_classes, dtype=logits.dtype)
    z_y = tf.reduce_sum(logits * onehot, axis=-1)
    z_other = tf.reduce_max(logits - 1e9 * onehot, axis=-1)
    return z_y - z_other


def dlr(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Difference of Logits Ratio loss (Croce & Hein 2020), to be maximised (untargeted)."""
    top = tf.math.top_k(logits, k=3).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + _TINY)


def objective(logits: tf.Tensor, y: tf.Tensor, loss: str, targeted: bool) -> tf.Tensor:
    """Per-example objective every gradient attack *maximises*.

    Untargeted: cross-entropy w.r.t. the true label, ``-margin``, or DLR. Targeted: the
    negative cross-entropy w.r.t. the target (or the target's margin).
    """
    if loss == "ce":
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        return -ce if targeted else ce
    if loss == "margin":
        m = margin(logits, y)
        return m if targeted else -m
    return dlr(logits, y)


def is_adversarial(logits: tf.Tensor, y: tf.Tensor, targeted: bool) -> tf.Tensor:
    """Per-example success: prediction != label (untargeted) or == target (targeted)."""
    pred = tf.cast(labels_from_logits(logits), y.dtype)
    return tf.equal(pred, y) if targeted else tf.not_equal(pred, y)


def objective_and_gradient(logits_fn, x, y, loss, targeted, eot_samples: int = 1):
    """Objective per example, its gradient w.r.t. ``x`` and the logits.

    With ``eot_samples > 1`` the model is evaluated that many times and the objective, gradient
    and logits are averaged: Expectation over Transformation (Athalye et al. 2018), the
    gradient estimate an attacker needs against randomized models and layers.

    For ``loss="ce"`` the gradient is that of the log-sum-exp margin, the cross-entropy's
    gradient divided by ``1 - p_y`` per example: the same direction, without the float32
    underflow that makes the cross-entropy's gradient exactly zero on confident examples.
    Every attack steps along the sign or the normalised gradient, so only the direction counts.
    """
    if eot_samples == 1:
        return _objective_and_gradient_once(logits_fn, x, y, loss, targeted)
    values, grad, logits = _objective_and_gradient_once(logits_fn, x, y, loss, targeted)
    for _ in tf.range(eot_samples - 1):
        v, g, z = _objective_and_gradient_once(logits_fn, x, y, loss, targeted)
        values, grad, logits = values + v, grad + g, logits + z
    scale = 1.0 / eot_samples
    return values * scale, grad * scale, logits * scale


def log_sum_exp_margin(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """``logsumexp_{j != y} z_j - z_y`` per example: cross-entropy is ``softplus`` of it, and its
    gradient is the cross-entropy's divided by ``1 - p_y``, which never underflows."""
    onehot = tf.one_hot(y, tf.shape(logits)[-1], dtype=logits.dtype)
    others = tf.reduce_logsumexp(logits - 1e9 * onehot, axis=-1)
    return others - tf.reduce_sum(logits * onehot, axis=-1)


def _ascent_surrogate(logits, y, loss, targeted, values):
    """What the attack differentiates. For cross-entropy, its gradient ``softmax(z) - onehot(y)``
    rounds to exactly zero in float32 once ``p_y`` rounds to 1 (a logit margin above about 17):
    confident examples would never move, and robust accuracy would be overstated (a sigmoid
    model read as ``[0, z]`` is hit first). The log-sum-exp margin, whose cross-entropy is a
    monotone function of it, has the same gradient up to a positive factor per example, which
    sign and normalised steps ignore."""
    if loss != "ce":
        return values
    surrogate = log_sum_exp_margin(logits, y)
    return -surrogate if targeted else surrogate


def _objective_and_gradient_once(logits_fn, x, y, loss, targeted):
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = logits_fn(x)
        values = objective(logits, y, loss, targeted)
        ascent = _ascent_surrogate(logits, y, loss, targeted, values)
    grad = tape.gradient(ascent, x)
    if grad is None:
        raise TypeError(
            "The model is not differentiable with respect to its input (the gradient is None). "
            "Use layers that define a straight-through (BPDA) gradient, or a score-based "
            "attack such as keras_secure.attacks.Square."
        )
    return values, grad, logits


def keep_better(best, candidate, improved):
    """Per-example ``where(improved, candidate, best)`` for a tensor of any rank."""
    return tf.where(batch_mask(improved, best) if best.shape.rank > 1 else improved,
                    candidate, best)


def init_best(x):
    """Start of best-iterate tracking: ``(best_x, best_objective, best_is_adversarial)``."""
    n = tf.shape(x)[0]
    return x, tf.fill([n], -float("inf")), tf.zeros([n], tf.bool)


def update_best(best, x_cur, values, logits, y, targeted):
    """Keep, per example, the better of the tracked point and ``x_cur``.

    A point that fools the model beats one that does not; between two that both fool (or both
    do not), the higher objective wins. Returns the new ``(best_x, best_objective, best_adv)``.
    """
    best_x, best_values, best_adv = best
    adv = is_adversarial(logits, y, targeted)
    better = (adv & ~best_adv) | ((adv == best_adv) & (values > best_values))
    return (keep_better(best_x, x_cur, better), tf.where(better, values, best_values),
            best_adv | adv)


def _perturb_with(attack, clf_ref, x, y):
    # a weak reference: the cache of traced attacks must not keep classifiers (and so their
    # models) alive
    return attack.perturb(clf_ref().logits, x, y)


# --------------------------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------------------------
class Attack:
    """Base class of the evasion attacks: configured once, called on batches.

    Subclasses implement ``_perturb(logits_fn, x, y)`` with TensorFlow ops only; ``__call__``
    validates the data, recovers logits from ``model``, splits the data into batches and runs
    ``_perturb`` inside a ``tf.function`` cached per model. ``perturb`` is the graph-safe entry
    point for code that is itself traced (training steps, callbacks).

    Args:
        eps: perturbation budget in input units (norm given by ``norm``), ``> 0``; ``None``
            only for minimal-norm attacks.
        norm: ``"linf"`` or ``"l2"``.
        value_range: ``(low, high)`` every adversarial input is clipped to, or ``None`` for no
            clipping.
        targeted: if True, ``y`` holds target classes the attack pushes towards.
        seed: seed of the attack's ``keras.random.SeedGenerator``.
        batch_size: number of examples attacked at once by ``__call__``; ``None`` attacks all
            at once.
        eot_samples: gradient attacks only: number of model evaluations whose gradients are
            averaged per step (Expectation over Transformation), >= 1. Use > 1 against models
            with random layers.

    Example:
        >>> class Identity(Attack):
        ...     name = "Identity"
        ...     def _perturb(self, logits_fn, x, y):
        ...         return x
        >>> Identity(eps=0.1)(model, x, y)
    """

    name = "attack"
    #: whether the attack needs gradients of the model (False for score-based attacks)
    uses_gradients = True
    #: whether the attack takes ``eot_samples`` (gradient averaging over random draws)
    supports_eot = False
    #: whether the attack looks for the smallest perturbation that crosses the decision
    #: boundary (C&W, DeepFool) rather than the worst point of a budget
    minimal_norm = False

    def __init__(
        self,
        *,
        eps=None,
        norm: str = "linf",
        value_range=None,
        targeted: bool = False,
        seed: int | None = None,
        batch_size: int | None = None,
        eot_samples: int = 1,
        eps_required: bool = True,
    ):
        self.norm = check_choice("norm", norm, NORMS)
        self.value_range = check_value_range(value_range)
        self.eps = check_number("eps", eps, low=0.0, low_inclusive=False,
                                allow_none=not eps_required)
        if self.eps is not None and self.value_range is not None and self.norm == "linf":
            width = self.value_range[1] - self.value_range[0]
            if self.eps > width:
                raise ValueError(
                    f"`eps` must be <= the width of `value_range` ({width:g}) for an L-inf "
                    f"attack. Received: eps={self.eps!r}"
                )
        self.targeted = check_bool("targeted", targeted)
        self.seed = check_number("seed", seed, integer=True, allow_none=True)
        self.batch_size = check_number("batch_size", batch_size, low=1, integer=True,
                                       allow_none=True)
        self.eot_samples = check_number("eot_samples", eot_samples, low=1, integer=True)
        if self.eot_samples > 1 and not self.supports_eot:
            raise ValueError(f"`eot_samples` is not supported by {type(self).__name__}. "
                             f"Received: eot_samples={eot_samples!r}")
        self._seed_generator = keras.random.SeedGenerator(self.seed)
        self._compiled = weakref.WeakKeyDictionary()  # Classifier -> traced attack

    # -- configuration --------------------------------------------------------------------
    def get_config(self) -> dict:
        """The constructor arguments, so that ``type(a)(**a.get_config())`` rebuilds ``a``."""
        return {
            "eps": self.eps,
            "norm": self.norm,
            "value_range": self.value_range,
            "targeted": self.targeted,
            "seed": self.seed,
            "batch_size": self.batch_size,
            **({"eot_samples": self.eot_samples} if self.supports_eot else {}),
        }

    @classmethod
    def from_config(cls, config: dict) -> "Attack":
        """Rebuild an attack from :meth:`get_config`."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    @property
    def label(self) -> str:
        """A short human-readable name with the budget, e.g. ``"PGD-Linf (eps=0.1)"``."""
        norm = "Linf" if self.norm == "linf" else "L2"
        budget = f" (eps={self.eps:g})" if self.eps is not None else ""
        return f"{self.name}-{norm}{budget}"

    # -- running ----------------------------------------------------------------------------
    def perturb(self, logits_fn, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Graph-safe attack of one batch: ``x`` float32, ``y`` int32 labels (or targets).

        ``logits_fn`` must return logits (see :func:`logits_function`). No validation is done
        here; use ``__call__`` for user data. The loop is converted with AutoGraph explicitly,
        so this also works inside graphs that are not converted themselves (a Keras
        ``train_step``).
        """
        converted = _CONVERTED.get(type(self))
        if converted is None:
            converted = tf.autograph.to_graph(type(self)._perturb)
            _CONVERTED[type(self)] = converted
        return converted(self, logits_fn, x, y)

    def _perturb(self, logits_fn, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def _compiled_for(self, clf, x):
        # One traced function per classifier (the contract caches one per model) and input
        # shape, with the batch dimension unknown (None) in its signature: any batch size,
        # one example included, runs the same graph, and the attacks' loops see one shape.
        # A partial (not a lambda): TensorFlow counts retracing per code object, and every
        # attack's lambda would share one, so that each new attack's first trace was reported
        # as "excessive retracing".
        per_shape = self._compiled.get(clf)
        if per_shape is None:
            per_shape = self._compiled[clf] = {}
        key = tuple(x.shape[1:])
        fn = per_shape.get(key)
        if fn is None:
            signature = [tf.TensorSpec((None, *key), tf.float32), tf.TensorSpec((None,), tf.int32)]
            fn = tf.function(functools.partial(_perturb_with, self, weakref.ref(clf)),
                             input_signature=signature)
            per_shape[key] = fn
        return fn

    def __call__(self, model, x, y=None):
        """Attack ``x`` (labels ``y``) and return the adversarial inputs.

        Args:
            model: a Keras model, a callable returning class scores, or a
                :class:`keras_secure.Classifier`. Its outputs are read through the classifier
                contract: logits, softmax, one sigmoid unit or one logit, and keras_secure's
                randomized / non-differentiable layers attacked through their adaptive path.
            x: inputs, a NumPy array or tensor of shape ``(n, ...)``, finite; float, or integer
                when ``value_range`` is set. Values must lie in ``value_range``.
            y: labels ``(n,)``, ``(n, 1)`` or one-hot ``(n, classes)``; targets when
                ``targeted=True``. ``None`` (untargeted only) uses the model's predictions.

        Returns:
            Adversarial inputs, float32, same shape as ``x``: a NumPy array for NumPy input,
            else a tensor.

        Raises:
            TypeError: for integer inputs without ``value_range``, or a non-differentiable model
                under a gradient attack.
            ValueError: for NaN / inf inputs, mismatched batch sizes, labels out of range,
                inputs outside ``value_range`` or of the wrong shape.
        """
        return_numpy = not tf.is_tensor(x)
        clf = as_classifier(model)
        x, y = self._check_data(clf, x, y)
        fn = self._compiled_for(clf, x)
        n = int(x.shape[0])
        step = self.batch_size or n
        parts = [fn(x[i:i + step], y[i:i + step]) for i in range(0, n, step)]
        out = parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)
        return out.numpy() if return_numpy else out

    # -- validation of call arguments -------------------------------------------------------
    def check_data(self, model, x, y=None):
        """Validate ``model``, ``x`` and ``y`` exactly as :meth:`__call__` does, without
        attacking: for tools that want every mistake reported before any work starts.

        Returns:
            ``(x, y)`` as the attack would use them: float32 and int32 tensors.

        Raises:
            TypeError / ValueError: as :meth:`__call__`.

        Example:
            >>> pgd.check_data(model, x[:1], y[:1])
        """
        return self._check_data(as_classifier(model), x, y)

    def _check_x(self, x: tf.Tensor) -> tf.Tensor:
        """Hook for an attack's own input checks, given the validated float32 batch."""
        return x

    def _check_data(self, clf, x, y):
        """Validate ``x`` (contract: finite, model's input shape; plus the attack's value
        range) and ``y`` (contract labels), and return ``(x float32, y int32)`` tensors."""
        if y is None and self.targeted:
            raise ValueError("`y` (the target classes) is required when targeted=True. "
                             "Received: y=None")
        arr, labels = clf.check(x, y)
        if self.minimal_norm and clf.randomized:
            raise ValueError(
                f"{type(self).__name__} looks for the nearest point of the decision boundary, "
                "but the model contains randomized layers: there its deployed prediction is a "
                "coin flip, so the examples fail about half the time. Use a budgeted attack "
                "with Expectation over Transformation (PGD, APGD with eot_samples) or, for "
                "randomized smoothing, its certified radius (RandomizedSmoothing.certify).")
        if np.issubdtype(arr.dtype, np.integer) and self.value_range is None:
            raise TypeError(
                "`x` has an integer dtype but the attack has no `value_range`: integer images "
                "need value_range=(low, high) (e.g. (0, 255)) so the attack knows their scale. "
                f"Received: x.dtype={arr.dtype}, value_range=None"
            )
        x = self._check_x(tf.convert_to_tensor(arr.astype(np.float32, copy=False)))
        if self.value_range is not None:
            low, high = self.value_range
            lo, hi = float(arr.min()), float(arr.max())
            tol = 1e-6 * max(1.0, high - low)
            if lo < low - tol or hi > high + tol:
                raise ValueError(
                    f"`x` must lie in value_range={self.value_range}. Received: x with values "
                    f"in [{lo:g}, {hi:g}]"
                )
            if self.norm == "l2" and self.eps is not None:
                diameter = (high - low) * math.sqrt(float(np.prod(x.shape[1:])))
                if self.eps > diameter:
                    raise ValueError(
                        f"`eps` must be <= the L2 diameter of `value_range` for inputs of this "
                        f"size ({diameter:g}). Received: eps={self.eps!r}"
                    )
        if labels is None:
            labels = clf.predict_labels(arr)
        return x, tf.constant(labels, dtype=tf.int32)
