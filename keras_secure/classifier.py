"""The classifier contract: the one place that knows how to read a Keras classifier.

Every consumer that reads a model's outputs or a user's labels - the attacks, the robustness
report, the monitor, randomized smoothing, the training stages, the privacy audit, the command
line and the RL observation attacks - goes through :class:`Classifier`
(docs/architecture.md, "The classifier contract"). It knows:

- **the output kind**: logits with ``k >= 2`` columns, softmax probabilities, a single sigmoid
  unit, or a single logit. Logits behind a softmax or a sigmoid are recovered from the model's
  own layers (attacks need logits: saturated probabilities have vanishing gradients). A kind
  that cannot be known from the model's structure is checked on its outputs: outputs that could
  be probabilities are refused until the caller declares ``from_logits``; nothing is guessed;
- **the labels**: ``(n,)``, ``(n, 1)``, one-hot ``(n, k)``, integer-valued floats or booleans;
  anything else is a ``ValueError``/``TypeError`` naming ``y``;
- **the predicted labels**, computed one way for everyone: the arg-max of the outputs, and for
  single-output binary models Keras's own thresholding (probability ``> 0.5``, logit ``> 0``);
- **the adaptive path**: keras_secure's randomized layers (:class:`RandomizedSmoothing`,
  attacked through its differentiable soft estimate, Expectation over Transformation) and
  non-differentiable layers (the quantising denoisers ``BitDepthReduction`` and
  ``JpegCompression``, attacked with straight-through BPDA gradients even when built with
  ``gradient="exact"``; ``MedianSmoothing`` keeps its exact gradient, which is not zero), found
  anywhere inside a model, nested models included. :meth:`Classifier.logits` is that adaptive path; :meth:`Classifier.outputs`
  and :meth:`Classifier.predict_labels` are the model as deployed.

Example:
    >>> clf = Classifier(model)                  # kind read from the model's last layer
    >>> clf.kind, clf.num_classes
    ('binary_probability', 2)
    >>> y = clf.check_labels(y_raw)              # (n,) int32, validated
    >>> clf.predict_labels(x)                    # equal to Keras's thresholding
    >>> clf.logits(tf.constant(x))               # (n, 2) logits [0, z] an attack differentiates
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_secure.validation import check_number

#: the output kinds a classifier can have
KINDS = ("logits", "probabilities", "binary_logit", "binary_probability")

_PROBABILITY_ATOL = 1e-3  # rows of probabilities sum to 1 within this (float16 / MC rounding)
_LOG_FLOOR = 1e-12
_STATE = threading.local()


# --------------------------------------------------------------------------------------------
# The adaptive path switch read by keras_secure's randomized / non-differentiable layers
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def adaptive_path():
    """Context in which keras_secure layers take their adaptive (attackable) path.

    Inside it, :class:`keras_secure.layers.RandomizedSmoothing` returns its differentiable
    soft estimate instead of hard Monte Carlo votes, and the input denoisers pass straight-
    through (BPDA) gradients whatever their ``gradient`` setting. Layers read the switch when
    they are called, i.e. when a graph is traced, so a ``tf.function`` traced inside the
    context keeps the adaptive path. :meth:`Classifier.logits` enters it for you.

    Example:
        >>> with adaptive_path():
        ...     z = model(x)      # differentiable through smoothing and denoisers
    """
    depth = getattr(_STATE, "depth", 0)
    _STATE.depth = depth + 1
    try:
        yield
    finally:
        _STATE.depth = depth


def in_adaptive_path() -> bool:
    """True inside :func:`adaptive_path` (read by layers in ``call``)."""
    return getattr(_STATE, "depth", 0) > 0


# --------------------------------------------------------------------------------------------
# Data checks shared by every consumer
# --------------------------------------------------------------------------------------------
def check_inputs(x, name: str = "x") -> np.ndarray:
    """Validate a batch of inputs: numbers, shape ``(n, ...)`` with ``n >= 1``, all finite.

    Args:
        x: array-like or tensor of inputs.
        name: the argument's name in error messages. Defaults to ``"x"``.

    Returns:
        ``x`` as a NumPy array (dtype kept).

    Raises:
        TypeError: for non-numeric data.
        ValueError: for rank < 2, an empty batch, or NaN / inf values.

    Example:
        >>> check_inputs(np.zeros((4, 8, 8, 1)))
    """
    try:
        arr = x.numpy() if tf.is_tensor(x) else np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be an array of numbers. Received: {name} of type "
                        f"{type(x).__name__} ({err})") from None
    if arr.dtype == object or np.iscomplexobj(arr) or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"`{name}` must hold real numbers. Received: {name}.dtype={arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"`{name}` must be a batch of shape (n, ...) with rank >= 2. "
                         f"Received: {name}.shape={arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"`{name}` is empty. Received: {name}.shape={arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.shape[0] - finite.reshape(arr.shape[0], -1).all(axis=1).sum())
            raise ValueError(
                f"`{name}` must be finite, but {bad} of its {arr.shape[0]} examples hold NaN or "
                f"inf. Received: {name} with {int((~finite).sum())} non-finite values")
    return arr


def as_arrays(x, y=None, *, name: str = "x"):
    """``(x, y)`` as NumPy arrays; ``x`` may be a finite ``tf.data.Dataset`` of ``(x, y)``.

    Args:
        x: inputs, or a ``tf.data.Dataset`` whose elements are ``(x, y)`` batches or examples.
        y: labels when ``x`` is an array; must be None when ``x`` is a dataset.
        name: the argument's name in error messages. Defaults to ``"x"``.

    Returns:
        ``(x, y)`` as NumPy arrays (``y`` None if none was given).

    Raises:
        ValueError: for an infinite dataset, a dataset together with ``y``, or dataset elements
            that are not ``(x, y)`` pairs.

    Example:
        >>> x, y = as_arrays(tf.data.Dataset.from_tensor_slices((x, y)).batch(32))
    """
    if not isinstance(x, tf.data.Dataset):
        return x, y
    if y is not None:
        raise ValueError(f"`y` must be None when `{name}` is a tf.data.Dataset (its elements "
                         "carry the labels). Received: y of type " + type(y).__name__)
    if x.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"`{name}` is an infinite tf.data.Dataset (e.g. .repeat() without a "
                         f"count); evaluation needs a finite one, e.g. {name}.take(n).")
    spec = x.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"`{name}` must be a tf.data.Dataset of (x, y) pairs. Received: a "
                         f"dataset with element_spec={spec}")
    batched = spec[0].shape.rank is not None and spec[1].shape.rank is not None and (
        spec[0].shape.rank >= 2 and spec[0].shape[0] is None)
    xs, ys = [], []
    for bx, by in x.as_numpy_iterator():
        xs.append(bx if batched else bx[None])
        ys.append(by if batched else np.asarray(by)[None])
    if not xs:
        raise ValueError(f"`{name}` is an empty tf.data.Dataset.")
    return np.concatenate(xs), np.concatenate(ys)


def check_labels(y, num_classes: int, n: int | None = None, name: str = "y",
                 x_name: str = "x") -> np.ndarray:
    """Validate class labels and return them as int32 of shape ``(n,)``.

    Accepted: integer labels ``(n,)`` or ``(n, 1)`` (as ``keras.datasets`` returns them),
    integer-valued floats, booleans (binary), and one-hot rows ``(n, num_classes)``.

    Args:
        y: the labels.
        num_classes: number of classes of the model (2 for a single-output binary model).
        n: the number of inputs the labels belong to, or None.
        name: the argument's name in error messages. Defaults to ``"y"``.
        x_name: the name of the inputs in the length message. Defaults to ``"x"``.

    Returns:
        int32 labels of shape ``(n,)`` in ``[0, num_classes)``.

    Raises:
        TypeError: for labels that are not numbers.
        ValueError: for a wrong shape or length, rows that are not one-hot, NaN, non-integer,
            negative or out-of-range labels.

    Example:
        >>> check_labels(np.array([[1], [0]]), num_classes=2)
        array([1, 0], dtype=int32)
    """
    try:
        arr = y.numpy() if tf.is_tensor(y) else np.asarray(y)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be an array of class labels. Received: {name} of type "
                        f"{type(y).__name__}") from None
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"`{name}` must hold integer class labels (or one-hot rows). "
                        f"Received: {name}.dtype={arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 2 and arr.shape[1] == num_classes:
        if not (np.isin(arr, (0, 1)).all() and (arr.sum(axis=1) == 1).all()):
            other = arr[~np.isin(arr, (0, 1))]
            found = (f"entries other than 0 and 1, e.g. {other.flat[0]:g} (soft or "
                     "label-smoothed targets?)" if other.size else
                     f"rows with {int(arr.sum(axis=1).min())} to {int(arr.sum(axis=1).max())} "
                     "ones (multi-label targets?)")
            raise ValueError(
                f"`{name}` of shape (n, {num_classes}) must hold one-hot rows (one 1, the rest "
                f"0): class labels, not soft or multi-label targets. Received: {name} with "
                f"{found}")
        arr = arr.argmax(axis=1)
    elif arr.ndim != 1:
        raise ValueError(
            f"`{name}` must be class labels of shape (n,) or (n, 1), or one-hot rows of shape "
            f"(n, {num_classes}) (the model has {num_classes} classes). "
            f"Received: {name}.shape={arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"`{x_name}` and `{name}` must have the same number of examples. "
                         f"Received: {x_name} has {n}, {name} has {arr.shape[0]}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"`{name}` must hold class labels, not NaN or inf. Received: "
                             f"{name} with {int((~np.isfinite(arr)).sum())} non-finite values")
        if not np.equal(np.mod(arr, 1), 0).all():
            bad = arr[np.not_equal(np.mod(arr, 1), 0)][0]
            raise ValueError(f"`{name}` must hold integer class labels. Received: {name} with "
                             f"the non-integer value {bad:g}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"`{name}` must hold labels in [0, {num_classes - 1}] (the model has {num_classes} "
            f"classes). Received: {name} with values in [{arr.min():g}, {arr.max():g}]")
    return arr.astype(np.int32)


def labels_from_logits(logits) -> tf.Tensor:
    """Predicted classes (int32) from logits of :meth:`Classifier.logits` (or any class scores
    with ``k >= 2`` columns, such as Q-values): the arg-max, first index on ties. Traceable.

    Example:
        >>> labels_from_logits(tf.constant([[0.0, 2.0], [1.0, -1.0]]))   # [1, 0]
    """
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


# --------------------------------------------------------------------------------------------
# Reading a model's structure
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Head:
    """What the structure says about the output: ``kind`` (None = not knowable from the
    structure), ``pre`` (inputs -> pre-activation logits, or None), and a description."""

    kind: str | None
    pre: Callable | None
    description: str
    adaptive_pre: bool = False  # ``pre`` is a randomized layer's adaptive (attack) path


def _symbolic(model):
    """``(inputs, outputs)`` of a Sequential / Functional model, or None."""
    if not isinstance(model, keras.Model):
        return None
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return None
    if not inputs or not outputs:
        return None
    return inputs, outputs


def _activation_name(op) -> str | None:
    """``"softmax"``/``"sigmoid"``/``"linear"``/... for the last operation of a model."""
    if isinstance(op, keras.layers.Softmax):
        return "softmax"
    if not isinstance(op, keras.layers.Layer):  # a keras.ops call in a Functional model
        return type(op).__name__.lower()
    activation = getattr(op, "activation", None)
    if activation is None:
        return None
    name = getattr(activation, "__name__", None)
    return _ACTIVATION_ALIASES.get(name, name)


_ACTIVATION_ALIASES = {"softmax_v2": "softmax", "log_softmax_v2": "log_softmax"}  # tf.nn's


def _node_input(op, node_index):
    node = op._inbound_nodes[node_index]
    tensors = node.input_tensors
    return tensors[0] if len(tensors) == 1 else None


_LINEAR_LAYERS = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv1D,
                  keras.layers.Conv2D, keras.layers.Conv3D)


def _analyze(model) -> _Head:
    sym = _symbolic(model)
    if sym is None:
        if getattr(model, "output_kind", None) == "probabilities":  # RandomizedSmoothing
            return _Head("probabilities", _log_space(model),
                         f"class probabilities of {type(model).__name__} {model.name!r}",
                         adaptive_pre=True)
        if type(model) is keras.layers.Dense and model.built:  # a bare Dense head
            name = _activation_name(model)
            if name in ("softmax", "sigmoid"):
                return _Head("probabilities" if name == "softmax" else "binary_probability",
                             _dense_logits(lambda x, training=False: x, model),
                             f"recovered before the {name} of layer {model.name!r}")
            if name in ("linear", "log_softmax"):
                return _Head("logits", None, f"logits of layer {model.name!r}")
        return _Head(None, None, "")
    inputs, outputs = sym
    if len(outputs) != 1:
        raise TypeError(f"`model` must have a single output (class scores); it has "
                        f"{len(outputs)}. Received: model={model.name!r}")
    op, node_index, _ = outputs[0]._keras_history
    name = _activation_name(op)
    t = _node_input(op, node_index)
    op_name = getattr(op, "name", type(op).__name__)

    if isinstance(op, keras.Model) and _symbolic(op) is not None and t is not None:
        inner = _analyze(op)
        if inner.kind is None or inner.pre is None:
            return _Head(inner.kind, None, inner.description)
        outer = keras.Model(inputs, t, name=f"{model.name}_to_{op.name}")
        adaptive_inner = inner.adaptive_pre

        def nested(x, training=False, _outer=outer, _inner=inner.pre):
            return _inner(_outer(x, training=training), training=training)

        return _Head(inner.kind, nested, inner.description, adaptive_inner)
    if getattr(op, "output_kind", None) == "probabilities":
        where = f"class probabilities of {type(op).__name__} {op_name!r}"
        if t is None:
            return _Head("probabilities", None, where)
        before = keras.Model(inputs, t, name=f"{model.name}_to_{op_name}")

        def through(x, training=False, _before=before, _layer=op):
            return _layer.attack_logits(_before(x, training=training))

        return _Head("probabilities", through if callable(
            getattr(op, "attack_logits", None)) else None, where, adaptive_pre=True)
    if name not in ("softmax", "sigmoid"):
        if name in ("linear", "log_softmax") and (
                isinstance(op, _LINEAR_LAYERS) or isinstance(op, keras.layers.Activation)):
            return _Head("logits", None, f"logits of layer {op_name!r}")
        return _Head(None, None, "")
    if name == "softmax" and isinstance(op, keras.layers.Softmax) and op.axis not in (-1, None):
        return _Head(None, None, "")
    probability_kind = "probabilities" if name == "softmax" else "binary_probability"
    where = f"recovered before the {name} of layer {op_name!r}"
    if isinstance(op, keras.layers.Activation) or not isinstance(op, keras.layers.Layer) or (
            isinstance(op, keras.layers.Softmax)):
        if t is None:
            return _Head(None, None, "")
        pre_model = keras.Model(inputs, t, name=f"{model.name}_logits")
        return _Head(probability_kind, pre_model, where)
    if type(op) is keras.layers.Dense:
        features = keras.Model(inputs, t, name=f"{model.name}_features")
        return _Head(probability_kind, _dense_logits(features, op), where)
    raise TypeError(
        f"`model` ends in layer {op_name!r} ({type(op).__name__}) with a {name} activation "
        "that keras_secure cannot undo. Attacks need logits: build the model with a linear "
        f"last layer followed by a separate keras.layers.Activation({name!r}) (or Softmax), or "
        "wrap it as ks.Classifier(model, from_logits=False) to attack log-probabilities "
        "(weaker: saturated probabilities mask gradients).")


def _dense_logits(features, layer):
    """``x -> features(x) @ kernel + bias``: the logits of a Dense layer with a softmax or
    sigmoid activation, in float32 whatever the dtype policy."""

    def dense_logits(x, training=False):
        h = tf.cast(features(x, training=training), tf.float32)
        z = tf.matmul(h, tf.cast(tf.convert_to_tensor(layer.kernel), tf.float32))
        return z + tf.cast(tf.convert_to_tensor(layer.bias), tf.float32) if layer.use_bias else z

    return dense_logits


def _log_space(layer):
    """A probability layer's own log-space logits (``attack_logits``), or None."""
    attack_logits = getattr(layer, "attack_logits", None)
    if not callable(attack_logits):
        return None
    return lambda x, training=False: attack_logits(x)


def adaptive_layers(model) -> list:
    """keras_secure layers inside ``model`` (nested models included) whose adaptive path the
    attacks take, as ``(layer, note)`` pairs; ``note`` says which path."""
    if not isinstance(model, keras.layers.Layer):
        return []
    found = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        note = getattr(layer, "adaptive_note", None)
        if callable(note):
            text = note()
            if text:
                found.append((layer, text))
    return found


def _looks_like_probabilities(out) -> tf.Tensor:
    """Scalar bool tensor: every row of ``(n, k)`` outputs could be probabilities (finite, in
    [0, 1], and for k >= 2 summing to 1). One rule for the eager check and the in-graph guard."""
    out = tf.convert_to_tensor(out, tf.float32)
    looks = tf.reduce_all(tf.math.is_finite(out)) & tf.reduce_all((out >= 0.0) & (out <= 1.0))
    if out.shape[-1] != 1:
        sums = tf.reduce_sum(out, axis=-1)
        looks = looks & tf.reduce_all(tf.abs(sums - 1.0) <= _PROBABILITY_ATOL)
    return looks


# --------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------
class Classifier:
    """A Keras classifier read through keras_secure's one contract.

    Wrap a model in it to declare what its structure cannot tell (``from_logits``), then pass
    it anywhere a model is accepted: attacks, :func:`keras_secure.evaluation.evaluate_robustness`,
    :class:`keras_secure.callbacks.RobustnessMonitor`, randomized smoothing. Consumers wrap
    plain models themselves (with ``from_logits=None``).

    Output kinds (:attr:`kind`):

    - ``"logits"``: ``(n, k)`` scores with ``k >= 2`` (a linear last layer);
    - ``"probabilities"``: ``(n, k)`` softmax outputs; the logits are recovered from the
      model's own layers (a final ``Softmax``, ``Activation("softmax")``, ``keras.ops.softmax``
      or ``Dense(k, activation="softmax")``, also at the end of a nested model) or, for
      keras_secure's :class:`~keras_secure.layers.RandomizedSmoothing`, taken as the log of its
      differentiable soft estimate;
    - ``"binary_probability"``: ``(n, 1)`` sigmoid output (``Dense(1, activation="sigmoid")``
      or ``Activation("sigmoid")``); the logit ``z`` behind it is recovered and the attacks see
      two-class logits ``[0, z]``;
    - ``"binary_logit"``: ``(n, 1)`` logit ``z``, read as two-class logits ``[0, z]``.

    Where the structure does not say (a subclassed model, a ``Lambda`` or custom last layer, a
    plain function), the outputs decide, checked on every batch the consumers see: outputs that
    could be probabilities (rows in ``[0, 1]`` summing to 1, or one column in ``[0, 1]``) are
    refused with an error asking for ``from_logits``; any other output is logits.

    Args:
        model: a Keras model or layer, or a callable mapping a batch of inputs to class scores
            of shape ``(batch, k)``.
        from_logits: True if the outputs are logits, False if probabilities (softmax, or a
            sigmoid for one column), None to read it from the model. A declaration that
            contradicts the model's structure is an error. Defaults to None.
        adaptive: attack keras_secure's randomized and non-differentiable layers through their
            adaptive path (EOT, BPDA). False attacks the gradients the model has as deployed,
            which its defences may mask: only for showing how much a naive evaluation
            overestimates robustness; reports say so. Defaults to True.

    Raises:
        TypeError: if ``model`` is not callable, has several outputs, ends in a softmax or
            sigmoid that cannot be undone, or ``from_logits`` is not a bool or None.
        ValueError: if ``from_logits`` contradicts the structure, or a sigmoid output has
            several columns (multi-label models are not single-label classifiers).

    Example:
        >>> clf = ks.Classifier(model)
        >>> clf.kind
        'probabilities'
        >>> report = ks.evaluation.evaluate_robustness(
        ...     ks.Classifier(subclassed_model, from_logits=False), x, y, [pgd])
    """

    def __init__(self, model, from_logits: bool | None = None, adaptive: bool = True):
        if isinstance(model, Classifier):
            raise TypeError("`model` is already a Classifier; use it as it is.")
        if not callable(model):
            raise TypeError("`model` must be a Keras model or a callable returning class "
                            f"scores. Received: model={model!r}")
        if from_logits is not None and not isinstance(from_logits, bool):
            raise TypeError("`from_logits` must be True, False or None. "
                            f"Received: from_logits={from_logits!r}")
        if not isinstance(adaptive, bool):
            raise TypeError(f"`adaptive` must be a bool. Received: adaptive={adaptive!r}")
        self.model = model
        self.from_logits = from_logits
        self.adaptive = adaptive
        self._predict_fn = None
        self._log_probability_fn = None
        self._read_structure()

    def _read_structure(self):
        model, from_logits = self.model, self.from_logits
        head = _analyze(model)
        self._columns = self._static_columns()
        self._attack_logits = None
        if head.kind is None and isinstance(model, keras.layers.Layer) is False:
            attack_logits = getattr(model, "attack_logits", None)
            if callable(attack_logits):
                self._attack_logits = attack_logits
        self._pre = head.pre
        self._pre_adaptive = head.adaptive_pre
        self._structural = head.kind is not None
        self._output_note = head.description
        if (head.kind == "binary_probability" and self._columns not in (None, 1)
                and from_logits is True):
            # k sigmoid units are not a distribution over classes (a multi-label head), but
            # they can be declared as k scores (e.g. Q-values squashed into [0, 1]): the
            # outputs themselves are then the logits, and the argmax is the predicted class.
            self._pre = None
            self._output_note = (f"{head.description}; declared as scores (from_logits=True): "
                                 "the sigmoid outputs are used as the logits")
            self.kind = "logits"
            return
        self.kind = self._declare(head, from_logits)

    # -- kinds ----------------------------------------------------------------------------------
    def _static_columns(self):
        try:
            shape = self.model.output_shape
        except (AttributeError, ValueError, TypeError, RuntimeError):
            return None
        try:
            if shape is not None and len(shape) >= 1 and shape[-1] is not None:
                if len(shape) != 2:
                    raise ValueError(
                        "`model` must output class scores of shape (batch, num_classes). "
                        f"Received: a model with output_shape={tuple(shape)}")
                return int(shape[-1])
        except TypeError:  # output_shape of several outputs
            return None
        return None

    def _declare(self, head: _Head, from_logits):
        k = self._columns
        if head.kind is not None:
            structural_logits = head.kind in ("logits", "binary_logit")
            if from_logits is not None and from_logits != structural_logits:
                raise ValueError(
                    f"`from_logits={from_logits}` contradicts the model: its output is "
                    f"{'logits' if structural_logits else 'probabilities'} "
                    f"({head.description}). Received: from_logits={from_logits}")
            if head.kind == "binary_probability" and k not in (None, 1):
                raise ValueError(
                    f"`model` ends in a sigmoid with {k} outputs: a multi-label model. The "
                    "classifier contract covers single-label classifiers (softmax or logits "
                    "over k >= 2 classes, or one sigmoid/logit unit for binary). If the "
                    f"{k} outputs are scores whose largest is the decision (e.g. Q-values in "
                    "[0, 1]), declare them: ks.Classifier(model, from_logits=True).")
            if head.kind == "logits" and k == 1:
                return "binary_logit"
            return head.kind
        if from_logits is None or k is None:
            return None  # decided from the outputs, or once their width is known (_resolve)
        return self._kind_for(from_logits, k)

    @staticmethod
    def _kind_for(from_logits: bool, columns):
        if columns == 1:
            return "binary_logit" if from_logits else "binary_probability"
        return "logits" if from_logits else "probabilities"

    def _resolve(self, out: np.ndarray):
        """Decide an unknown kind from concrete outputs (eager), or check a guessed one."""
        if out.ndim != 2:
            raise ValueError("`model` must output class scores of shape (batch, num_classes). "
                             f"Received: an output of shape {out.shape}")
        if self._columns is None:
            self._columns = int(out.shape[1])
        if self.from_logits is not None:  # declared: only the width was missing
            if self.kind is None:
                self.kind = self._kind_for(self.from_logits, out.shape[1])
            return
        if self.kind is None or not self._structural:
            if bool(_looks_like_probabilities(out)):
                raise ValueError(self._ambiguous_message(out.shape[1]))
            if self.kind is None:
                self.kind = self._kind_for(True, out.shape[1])

    def _kind_of(self, outputs):
        """The kind, settled from the outputs' static width if it is still open (in a graph
        traced before any eager check): the declaration, else logits behind the in-graph
        guard of :meth:`_checked`."""
        if self.kind is not None:
            return self.kind
        declared = True if self.from_logits is None else self.from_logits
        return self._kind_for(declared, outputs.shape[-1])

    def _ambiguous_message(self, columns) -> str:
        what = ("one column in [0, 1]" if columns == 1 else
                "rows in [0, 1] that sum to 1")
        return (f"`model`'s output kind cannot be read from its structure, and its outputs "
                f"look like probabilities ({what}). keras_secure never guesses: wrap the model "
                "as ks.Classifier(model, from_logits=False) if it outputs probabilities "
                "(softmax, or a sigmoid for one column), or from_logits=True if they are "
                "logits. Received: model of type " + type(self.model).__name__)

    @property
    def num_classes(self) -> int:
        """Number of classes (2 for a single-output binary model). Needs the output width:
        known from the structure, or after the first batch was checked."""
        if self._columns is None:
            raise RuntimeError("The number of classes is known after the first batch: call "
                               "Classifier.check(x) first.")
        return max(2, self._columns)

    @property
    def binary(self) -> bool:
        """True for a single-output binary model (one sigmoid unit or one logit)."""
        return self._columns == 1

    # -- checks ---------------------------------------------------------------------------------
    def check_inputs(self, x, name: str = "x") -> np.ndarray:
        """:func:`check_inputs` plus the model's input shape, where the model declares one."""
        arr = check_inputs(x, name)
        expected = None
        try:
            expected = getattr(self.model, "input_shape", None)
        except (AttributeError, ValueError):
            expected = None
        if isinstance(expected, tuple) and expected and all(
                d is None or isinstance(d, int) for d in expected):
            want = tuple(expected[1:])
            got = tuple(arr.shape[1:])
            if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
                shown = "(n, " + ", ".join("None" if d is None else str(d) for d in want) + ")"
                raise ValueError(f"`{name}` must have the model's input shape {shown}. "
                                 f"Received: {name}.shape={arr.shape}")
        return arr

    def check(self, x, y=None, *, name: str = "x", y_name: str = "y"):
        """Validate a batch and its labels against the model, and settle the output kind.

        Runs the model once on up to 256 examples of ``x`` (eagerly) when the kind or the
        number of classes is not known from the structure.

        Args:
            x: inputs ``(n, ...)``.
            y: labels (see :func:`check_labels`) or None.
            name: name of ``x`` in messages. Defaults to ``"x"``.
            y_name: name of ``y`` in messages. Defaults to ``"y"``.

        Returns:
            ``(x, y)``: ``x`` as a NumPy array, ``y`` as int32 ``(n,)`` (or None).

        Raises:
            TypeError / ValueError: see :func:`check_inputs`, :func:`check_labels` and the
                class docstring.

        Example:
            >>> x, y = clf.check(x, y)
        """
        arr = self.check_inputs(x, name)
        if self.kind is None or self._columns is None or (
                not self._structural and self.from_logits is None):
            sample = tf.cast(tf.convert_to_tensor(arr[:256]), tf.float32)
            out = self._call(sample).numpy()
            self.refresh()
            if not self._structural:
                self._resolve(out)
            elif self._columns is None:
                self._columns = int(out.shape[1])
        labels = None if y is None else check_labels(y, self.num_classes, arr.shape[0], y_name,
                                                     name)
        return arr, labels

    def refresh(self):
        """Read the structure again if it could not be read before: a Sequential model without
        an ``Input`` has no layer graph until its first call (or ``fit``) builds it."""
        if not self._structural and _symbolic(self.model) is not None:
            self._read_structure()
        return self

    def labels_tensor(self, y) -> tf.Tensor:
        """In-graph reading of a batch of training labels as int32 class indices ``(n,)``:
        one-hot rows ``(n, k)`` by their 1, ``(n, 1)`` and ``(n,)`` (integer or 0/1 floats, as
        Keras's binary cross-entropy takes them) as they are. Traceable; for training steps,
        whose labels Keras has already batched (:meth:`check` validates user data)."""
        y = tf.convert_to_tensor(y)
        if y.shape.rank is not None and y.shape.rank >= 2 and y.shape[-1] not in (None, 1):
            return labels_from_logits(tf.cast(y, tf.float32))
        return tf.cast(tf.reshape(y, [-1]), tf.int32)

    # -- the model as deployed ------------------------------------------------------------------
    def _call(self, x):
        model = self.model
        out = model(x, training=False) if isinstance(model, keras.layers.Layer) else model(x)
        if isinstance(out, (list, tuple, dict)):
            raise TypeError("`model` must have a single output (class scores); it returned "
                            f"{len(out)} outputs.")
        out = tf.cast(out, tf.float32)
        if out.shape.rank != 2:
            raise ValueError("`model` must output class scores of shape (batch, num_classes). "
                             f"Received: an output of shape {tuple(out.shape)}")
        return out

    def outputs(self, x) -> tf.Tensor:
        """The model's own inference outputs (float32), as deployed: no adaptive path."""
        return self._checked(self._call(x))

    def labels_from_outputs(self, outputs) -> tf.Tensor:
        """Predicted labels (int32) from :meth:`outputs`: arg-max, or Keras's thresholding for
        one sigmoid (``p > 0.5``) or one logit (``z > 0``) output."""
        outputs = tf.convert_to_tensor(outputs)
        if outputs.shape[-1] == 1:
            threshold = 0.5 if self._kind_of(outputs) == "binary_probability" else 0.0
            return tf.cast(outputs[:, 0] > threshold, tf.int32)
        return labels_from_logits(outputs)

    def predict_labels(self, x, batch_size: int = 256, verbose=0) -> np.ndarray:
        """Predicted labels of the model as deployed, batched, as int32 ``(n,)``.

        Args:
            x: inputs ``(n, ...)`` (validated: finite, model's input shape).
            batch_size: examples per forward pass, >= 1. Defaults to 256.
            verbose: 0 silent, 1 a ``keras.utils.Progbar``. Defaults to 0.

        Returns:
            int32 labels; for binary single-output models equal to Keras's thresholding.

        Example:
            >>> accuracy = np.mean(clf.predict_labels(x) == clf.check_labels(y))
        """
        batch_size = check_number("batch_size", batch_size, low=1, integer=True)
        arr, _ = self.check(x)
        if self._predict_fn is None:
            # a partial, not a lambda or a method: TensorFlow counts retracing per code object,
            # which all classifiers' lambdas would share (false "excessive retracing" warnings)
            self._predict_fn = tf.function(functools.partial(Classifier._predict_batch, self),
                                           reduce_retracing=True)
        n = arr.shape[0]
        bar = keras.utils.Progbar(n, verbose=verbose) if verbose else None
        parts = []
        for i in range(0, n, batch_size):
            parts.append(self._predict_fn(tf.cast(arr[i:i + batch_size], tf.float32)).numpy())
            if bar is not None:
                bar.update(min(n, i + batch_size))
        return np.concatenate(parts).astype(np.int32)

    def _predict_batch(self, x):
        return self.labels_from_outputs(self.outputs(x))

    def _log_probability_batch(self, x):
        return self.log_probabilities(self.outputs(x))

    def predict_log_probabilities(self, x, batch_size: int = 256) -> np.ndarray:
        """Log class probabilities ``(n, max(k, 2))`` of the model as deployed, batched: valid
        logits for any output kind (logits, softmax, one sigmoid unit, one logit), for audits
        that score the model's confidence (e.g. membership inference).

        Args:
            x: inputs ``(n, ...)`` (validated: finite, model's input shape).
            batch_size: examples per forward pass, >= 1. Defaults to 256.

        Returns:
            float32 NumPy array.

        Example:
            >>> clf.predict_log_probabilities(x_test)[:2]
        """
        batch_size = check_number("batch_size", batch_size, low=1, integer=True)
        arr, _ = self.check(x)
        if self._log_probability_fn is None:
            self._log_probability_fn = tf.function(
                functools.partial(Classifier._log_probability_batch, self), reduce_retracing=True)
        return np.concatenate([
            self._log_probability_fn(tf.cast(arr[i:i + batch_size], tf.float32)).numpy()
            for i in range(0, arr.shape[0], batch_size)])

    def check_labels(self, y, n: int | None = None, name: str = "y") -> np.ndarray:
        """:func:`check_labels` with this model's number of classes."""
        return check_labels(y, self.num_classes, n, name)

    # -- the adaptive path ----------------------------------------------------------------------
    def _checked(self, out):
        """In-graph guard for a kind that only the outputs can settle: outputs that look like
        probabilities fail the call instead of being read as logits."""
        if self._structural or self.from_logits is not None:
            return out
        tf.debugging.Assert(tf.logical_not(_looks_like_probabilities(out)),
                            [self._ambiguous_message(out.shape[-1])])
        return out

    def logits(self, x) -> tf.Tensor:
        """Logits ``(n, max(k, 2))`` on the adaptive path: what attacks differentiate.

        Inside :func:`adaptive_path`: randomized smoothing gives its soft estimate (EOT) and
        denoisers BPDA gradients. Probabilities are turned into logits from the layers before
        the softmax / sigmoid; single-output binary models give ``[0, z]``. Traceable.
        """
        with adaptive_path() if self.adaptive else contextlib.nullcontext():
            if self._attack_logits is not None:
                z = tf.cast(self._attack_logits(x), tf.float32)
                return self._two_columns(z)
            if self._pre is not None and (self.adaptive or not self._pre_adaptive):
                return self._two_columns(tf.cast(self._pre(x, training=False), tf.float32))
            out = self.outputs(x)
        kind = self._kind_of(out)
        if kind == "probabilities":
            return tf.math.log(tf.clip_by_value(out, _LOG_FLOOR, 1.0))
        if kind == "binary_probability":
            p = tf.clip_by_value(out, _LOG_FLOOR, 1.0 - 1e-7)
            return self._two_columns(tf.math.log(p) - tf.math.log1p(-p))
        return self._two_columns(out)

    __call__ = logits

    @staticmethod
    def _two_columns(z):
        if z.shape.rank != 2:
            raise ValueError("`model` must output class scores of shape (batch, num_classes). "
                             f"Received: an output of shape {tuple(z.shape)}")
        if z.shape[-1] == 1:
            return tf.concat([tf.zeros_like(z), z], axis=-1)
        return z

    def log_probabilities(self, outputs, temperature: float = 1.0) -> tf.Tensor:
        """Log class probabilities ``(n, max(k, 2))`` from the model's own outputs (e.g. the
        ``y_pred`` of a training step), at ``temperature`` (logits divided by it)."""
        outputs = tf.cast(outputs, tf.float32)
        kind = self._kind_of(outputs)
        if kind in ("probabilities", "binary_probability"):
            if kind == "binary_probability":
                p = tf.clip_by_value(outputs, _LOG_FLOOR, 1.0 - 1e-7)
                logp = tf.concat([tf.math.log1p(-p), tf.math.log(p)], axis=-1)
            else:
                logp = tf.math.log(tf.clip_by_value(outputs, _LOG_FLOOR, 1.0))
            return logp if temperature == 1.0 else tf.nn.log_softmax(logp / temperature, -1)
        return tf.nn.log_softmax(self._two_columns(outputs) / temperature, axis=-1)

    @property
    def logits_from_log_probabilities(self) -> bool:
        """True when the attacks' logits are the log of the model's probabilities (a declared
        probability model whose layers do not give the logits): where a probability rounds to
        0 or 1 in float32 those carry no gradient (see :meth:`saturated`)."""
        return self.kind in ("probabilities", "binary_probability") and (
            self._attack_logits is None and (self._pre is None or (
                self._pre_adaptive and not self.adaptive)))

    def saturated(self, x, batch_size: int = 256) -> np.ndarray:
        """Per example, True where the model's top probability rounds to 1 in float32 (so its
        log-probabilities have no gradient); only meaningful when
        :attr:`logits_from_log_probabilities`.

        Example:
            >>> clf.saturated(x).mean()
        """
        logp = self.predict_log_probabilities(x, batch_size)
        return logp.max(axis=1) >= -1e-6

    # -- description ----------------------------------------------------------------------------
    @property
    def randomized(self) -> bool:
        """True if the model contains a randomized keras_secure layer (its attacks need EOT)."""
        return any(getattr(layer, "randomized", False) for layer, _ in self.adaptive_layers)

    @property
    def adaptive_layers(self) -> list:
        """``(layer, note)`` for each keras_secure layer whose adaptive path attacks take."""
        return adaptive_layers(self.model)

    def describe(self) -> dict:
        """How the model is read and attacked, for reports: ``{"output": ..., "kind": ...,
        "num_classes": ..., "adaptive_path": [...]}``."""
        kind = self.kind
        texts = {
            "logits": "logits",
            "probabilities": "class probabilities",
            "binary_logit": "one logit z (binary; attacked as logits [0, z])",
            "binary_probability": "one sigmoid probability (binary; logit z recovered, "
                                  "attacked as [0, z])",
            None: "not known yet",
        }
        output = texts[kind]
        if self._output_note and (kind not in ("logits", "binary_logit")
                                  or "declared as scores" in self._output_note):
            output += f", {self._output_note}"
        elif self.from_logits is not None:
            output += f" (declared from_logits={self.from_logits})"
        elif not self._structural and kind is not None:
            output += " (read from the outputs: they are not probabilities)"
        layers = self.adaptive_layers
        if self.adaptive:
            path = [f"{type(layer).__name__} {layer.name!r}: {note}" for layer, note in layers]
        else:
            path = [f"{type(layer).__name__} {layer.name!r}: NOT adaptive (adaptive=False): "
                    "gradients as deployed, which may be masked; figures may overestimate "
                    "robustness" for layer, _ in layers]
        return {
            "output": output,
            "kind": kind,
            "num_classes": None if self._columns is None else self.num_classes,
            "adaptive": self.adaptive,
            "adaptive_path": path,
        }

    def __repr__(self) -> str:
        return (f"Classifier({getattr(self.model, 'name', self.model)!r}, kind={self.kind!r}, "
                f"adaptive={self.adaptive})")


_CACHE_ATTRIBUTE = "_keras_secure_classifiers"


def as_classifier(model, from_logits: bool | None = None) -> Classifier:
    """The :class:`Classifier` of ``model`` (a Classifier passes through; one is cached per
    model so that repeated calls share traced functions).

    Args:
        model: a Keras model / layer, a callable returning class scores, or a Classifier.
        from_logits: see :class:`Classifier`; must agree with a Classifier passed in.

    Returns:
        A :class:`Classifier`.

    Raises:
        TypeError / ValueError: see :class:`Classifier`.

    Example:
        >>> as_classifier(model).predict_labels(x)
    """
    if isinstance(model, Classifier):
        if from_logits is not None and model.from_logits not in (None, from_logits):
            raise ValueError(f"`from_logits={from_logits}` contradicts the Classifier's "
                             f"declaration from_logits={model.from_logits}.")
        return model
    # The cache lives on the model itself (a reference cycle the garbage collector frees with
    # the model), not in a global weak dictionary whose values would keep every model alive.
    per_model = getattr(model, _CACHE_ATTRIBUTE, None)
    if not isinstance(per_model, dict):
        per_model = {}
        try:  # object.__setattr__: Keras must not track the cache as a layer attribute
            object.__setattr__(model, _CACHE_ATTRIBUTE, per_model)
        except (AttributeError, TypeError):  # e.g. a bound method: no cache
            return Classifier(model, from_logits)
    clf = per_model.get(from_logits)
    if clf is None:
        clf = per_model[from_logits] = Classifier(model, from_logits)
    return clf.refresh()
