"""Shared pieces of every evasion attack.

Everything an attack loop needs more than once lives here, once: argument validation, recovery
of logits from a model, the per-example losses, projection onto the L-inf / L2 ball, clipping to
the value range, random starts, and the ``Attack`` base class whose ``__call__`` validates the
data, batches it and runs the subclass's loop in one cached ``tf.function``.
"""

from __future__ import annotations

import math
import numbers
import weakref
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

NORMS = ("linf", "l2")
_CONVERTED: dict = {}  # attack class -> its AutoGraph-converted _perturb
LOSSES = ("ce", "margin", "dlr")
_TINY = 1e-12


# --------------------------------------------------------------------------------------------
# Argument validation (messages follow DESIGN.md section 5)
# --------------------------------------------------------------------------------------------
def check_number(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
    allow_none: bool = False,
):
    """Validate a scalar argument and return it as ``int``/``float``.

    Raises ``TypeError`` for a non-number and ``ValueError`` for a number out of range, naming
    the argument, the allowed range and the received value.
    """
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type:
        raise TypeError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    value = int(value) if integer else float(value)
    if not integer and not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite. Received: {name}={value!r}")
    bounds = []
    if low is not None:
        bounds.append(f"{'>=' if low_inclusive else '>'} {low:g}")
    if high is not None:
        bounds.append(f"{'<=' if high_inclusive else '<'} {high:g}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        raise ValueError(
            f"`{name}` must be {kind} {' and '.join(bounds)}. Received: {name}={value!r}"
        )
    return value


def check_choice(name: str, value, choices) -> str:
    """Validate that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """Validate a boolean flag."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return value


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


def check_value_range(value_range) -> tuple[float, float] | None:
    """Validate ``value_range=(low, high)`` with ``low < high``; ``None`` passes through."""
    if value_range is None:
        return None
    try:
        low, high = value_range
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise TypeError(
            "`value_range` must be a pair of numbers (low, high) or None. "
            f"Received: value_range={value_range!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(
            "`value_range` must be finite with low < high. "
            f"Received: value_range={value_range!r}"
        )
    return (low, high)


# --------------------------------------------------------------------------------------------
# Logits
# --------------------------------------------------------------------------------------------
def _is_softmax(fn) -> bool:
    return getattr(fn, "__name__", None) == "softmax" or fn is keras.activations.softmax


def logits_function(model) -> Callable[[tf.Tensor], tf.Tensor]:
    """Return a function ``x -> logits`` for ``model``, recovering logits behind a softmax.

    Attacks work on logits: cross-entropy and margins computed from saturated probabilities have
    vanishing gradients (gradient masking). For a Sequential or Functional model whose last layer
    is a ``Softmax`` layer, an ``Activation("softmax")`` layer or a ``Dense`` layer with
    ``activation="softmax"``, the returned function computes the pre-softmax logits with the
    model's own (shared, live) weights. Any other layer with a softmax activation is refused.
    Subclassed models and plain callables are used as they are and must return logits.
    An object with an ``attack_logits(x)`` method (e.g.
    :class:`keras_secure.layers.RandomizedSmoothing`) is attacked through that method.
    A single-logit binary classifier ``(batch, 1)`` is turned into two-class logits ``[0, z]``.

    Args:
        model: a ``keras.Model`` / layer or a callable mapping a batch of inputs to logits.

    Returns:
        A callable mapping a float32 batch to float32 logits of shape ``(batch, classes)``.

    Raises:
        TypeError: if ``model`` is not callable, or ends in a softmax that cannot be undone.

    Example:
        >>> probs = keras.Sequential([logits_model, keras.layers.Softmax()])
        >>> logits = logits_function(probs)(x)   # == logits_model(x)
    """
    if not callable(model):
        raise TypeError(
            "`model` must be a Keras model or a callable returning logits. "
            f"Received: model={model!r}"
        )
    attack_logits = getattr(model, "attack_logits", None)
    base = attack_logits if callable(attack_logits) else _strip_softmax(model)

    def logits_fn(x):
        z = base(x, training=False) if isinstance(base, keras.Layer) else base(x)
        if isinstance(z, (list, tuple)):
            raise TypeError(
                "`model` must have a single output of logits; it returned "
                f"{len(z)} outputs."
            )
        z = tf.cast(z, tf.float32)
        if z.shape.rank != 2:
            raise ValueError(
                "`model` must return logits of shape (batch, num_classes). "
                f"Received an output of shape {z.shape}."
            )
        if z.shape[-1] == 1:
            z = tf.concat([tf.zeros_like(z), z], axis=-1)
        return z

    return logits_fn


def ends_in_softmax(model) -> bool:
    """True if ``model`` is a Sequential/Functional model whose output is a softmax that
    :func:`logits_function` undoes (so its outputs are probabilities, not logits)."""
    return _strip_softmax(model) is not model


def _strip_softmax(model):
    if not isinstance(model, keras.Model):
        return model
    try:  # Sequential and Functional models have symbolic inputs/outputs; subclasses do not
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return model
    if not inputs or not outputs or len(outputs) != 1:
        return model
    last = outputs[0]._keras_history[0]
    activation = getattr(last, "activation", None)
    is_softmax_layer = isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and _is_softmax(activation)
    )
    if is_softmax_layer:
        return keras.Model(model.inputs, last.input, name=f"{model.name}_logits")
    if activation is not None and _is_softmax(activation):
        if type(last) is keras.layers.Dense:
            features = keras.Model(model.inputs, last.input, name=f"{model.name}_features")

            def dense_logits(x, training=False):
                h = features(x, training=training)
                z = tf.matmul(h, tf.convert_to_tensor(last.kernel))
                return z + last.bias if last.use_bias else z

            return dense_logits
        raise TypeError(
            f"`model` ends in layer {last.name!r} ({type(last).__name__}) with a softmax "
            "activation that keras_secure cannot undo. Attacks need logits: build the model "
            "with a linear last layer and apply softmax separately (e.g. a final "
            "keras.layers.Softmax()), or pass a function returning logits."
        )
    return model


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
    pred = tf.argmax(logits, axis=-1, output_type=y.dtype)
    return tf.equal(pred, y) if targeted else tf.not_equal(pred, y)


def objective_and_gradient(logits_fn, x, y, loss, targeted, eot_samples: int = 1):
    """Objective per example, its gradient w.r.t. ``x`` and the logits.

    With ``eot_samples > 1`` the model is evaluated that many times and the objective, gradient
    and logits are averaged: Expectation over Transformation (Athalye et al. 2018), the
    gradient estimate an attacker needs against randomized models and layers.
    """
    if eot_samples == 1:
        return _objective_and_gradient_once(logits_fn, x, y, loss, targeted)
    values, grad, logits = _objective_and_gradient_once(logits_fn, x, y, loss, targeted)
    for _ in tf.range(eot_samples - 1):
        v, g, z = _objective_and_gradient_once(logits_fn, x, y, loss, targeted)
        values, grad, logits = values + v, grad + g, logits + z
    scale = 1.0 / eot_samples
    return values * scale, grad * scale, logits * scale


def _objective_and_gradient_once(logits_fn, x, y, loss, targeted):
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = logits_fn(x)
        values = objective(logits, y, loss, targeted)
    grad = tape.gradient(values, x)
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
        self._compiled = weakref.WeakKeyDictionary()
        self._compiled_by_id = {}

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

    def _compiled_for(self, model, logits_fn):
        try:
            fn = self._compiled.get(model)
        except TypeError:  # not weak-referenceable
            fn = self._compiled_by_id.get(id(model))
        if fn is None:
            fn = tf.function(lambda x, y: self.perturb(logits_fn, x, y), reduce_retracing=True)
            try:
                self._compiled[model] = fn
            except TypeError:
                self._compiled_by_id[id(model)] = fn
        return fn

    def __call__(self, model, x, y=None):
        """Attack ``x`` (labels ``y``) and return the adversarial inputs.

        Args:
            model: a Keras model or callable returning logits (softmax outputs are undone where
                possible, see :func:`logits_function`).
            x: inputs, a NumPy array or tensor of shape ``(n, ...)``; float, or integer when
                ``value_range`` is set. Values must lie in ``value_range``.
            y: integer labels ``(n,)`` or one-hot ``(n, classes)``; targets when
                ``targeted=True``. ``None`` (untargeted only) uses the model's predictions.

        Returns:
            Adversarial inputs, float32, same shape as ``x``: a NumPy array for NumPy input,
            else a tensor.

        Raises:
            TypeError: for integer inputs without ``value_range``, or a non-differentiable model
                under a gradient attack.
            ValueError: for mismatched batch sizes, labels out of range, inputs outside
                ``value_range`` or of the wrong rank.
        """
        return_numpy = not tf.is_tensor(x)
        logits_fn = logits_function(model)
        x = self._check_x(x)
        probe = logits_fn(x[:1])
        num_classes = int(probe.shape[-1])
        y = self._check_y(y, x, num_classes, logits_fn)
        fn = self._compiled_for(model, logits_fn)
        n = int(x.shape[0])
        step = self.batch_size or n
        parts = [fn(x[i:i + step], y[i:i + step]) for i in range(0, n, step)]
        out = parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)
        return out.numpy() if return_numpy else out

    # -- validation of call arguments -------------------------------------------------------
    def _check_x(self, x) -> tf.Tensor:
        x = tf.convert_to_tensor(x)
        if not (x.dtype.is_floating or x.dtype.is_integer):
            raise TypeError(f"`x` must hold numbers. Received: x.dtype={x.dtype.name}")
        if x.dtype.is_integer and self.value_range is None:
            raise TypeError(
                "`x` has an integer dtype but the attack has no `value_range`: integer images "
                "need value_range=(low, high) (e.g. (0, 255)) so the attack knows their scale. "
                f"Received: x.dtype={x.dtype.name}, value_range=None"
            )
        if x.shape.rank is None or x.shape.rank < 2:
            raise ValueError(
                f"`x` must be a batch of shape (n, ...) with rank >= 2. Received: x.shape={x.shape}"
            )
        if x.shape[0] == 0:
            raise ValueError("`x` is empty. Received: x.shape=" + str(tuple(x.shape)))
        x = tf.cast(x, tf.float32)
        if self.value_range is not None:
            low, high = self.value_range
            lo, hi = float(tf.reduce_min(x)), float(tf.reduce_max(x))
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
        return x

    def _check_y(self, y, x, num_classes, logits_fn) -> tf.Tensor:
        n = int(x.shape[0])
        if y is None:
            if self.targeted:
                raise ValueError("`y` (the target classes) is required when targeted=True. "
                                 "Received: y=None")
            return tf.concat(
                [tf.argmax(logits_fn(x[i:i + 1024]), axis=-1, output_type=tf.int32)
                 for i in range(0, n, 1024)], axis=0)
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
            y = np.argmax(y, axis=1)
        if y.ndim != 1:
            raise ValueError(
                "`y` must be integer labels of shape (n,) or one-hot labels of shape "
                f"(n, {num_classes}). Received: y.shape={y.shape}"
            )
        if y.shape[0] != n:
            raise ValueError(
                f"`x` and `y` must have the same number of examples. Received: "
                f"x.shape[0]={n}, y.shape[0]={y.shape[0]}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(np.equal(np.mod(y, 1), 0)):
                y = y.astype(np.int64)
            else:
                raise TypeError(f"`y` must hold integer class labels. Received: y.dtype={y.dtype}")
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(
                f"`y` must hold labels in [0, {num_classes - 1}] (the model has {num_classes} "
                f"classes). Received: y with values in [{y.min()}, {y.max()}]"
            )
        return tf.constant(y, dtype=tf.int32)
