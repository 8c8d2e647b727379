"""Checks and helpers shared by the poisoning modules: fractions, target classes, masks,
label formats and hidden-layer activations."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_secure.classifier import check_inputs, check_labels
from keras_secure.validation import check_number

MODES = ("all_to_one", "all_to_all")


def check_fraction(value, name: str = "fraction") -> float:
    """A poison fraction in [0, 1] (``ValueError`` naming ``name`` otherwise)."""
    return check_number(name, value, low=0.0, high=1.0)


def check_class(value, num_classes: int, name: str = "target") -> int:
    """A class index in ``[0, num_classes - 1]``."""
    return check_number(name, value, low=0, high=num_classes - 1, integer=True)


def check_pair(source, target, num_classes: int = 2**31 - 1):
    """``(source, target)`` of a targeted flip: both None (random flips) or two different
    classes in ``[0, num_classes - 1]``."""
    if (source is None) != (target is None):
        raise ValueError("Targeted flips need both `source` and `target` (random flips need "
                         f"neither). Received: source={source!r}, target={target!r}")
    if source is None:
        return None, None
    source = check_class(source, num_classes, "source")
    target = check_class(target, num_classes, "target")
    if source == target:
        raise ValueError("`source` and `target` must be different classes. Received: "
                         f"source={source}, target={target}")
    return source, target


def check_seed(seed) -> int | None:
    """None or a non-negative integer seed."""
    return check_number("seed", seed, low=0, integer=True, allow_none=True)


def infer_num_classes(y, num_classes, required_for: str | None = None) -> int:
    """``num_classes`` validated, or read from the labels when None: the width of one-hot rows,
    else the largest label + 1 (at least 2). With ``required_for`` (what needs the true count,
    e.g. ``"mode='all_to_all'"``), class-index labels without ``num_classes`` are an error:
    the largest label present need not be the last class, and the poisoned labels would wrap
    at the wrong class without a word."""
    if num_classes is not None:
        return check_number("num_classes", num_classes, low=2, integer=True)
    arr = y.numpy() if tf.is_tensor(y) else np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] > 1:
        return int(arr.shape[1])
    if required_for is not None:
        raise ValueError(
            f"`num_classes` is required with {required_for} when `y` holds class indices: the "
            "largest label present need not be the model's last class (a test set without the "
            "last class would wrap labels at the wrong class). Pass num_classes=..., e.g. "
            "ks.Classifier(model).num_classes. Received: num_classes=None")
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        return 2  # check_labels reports what is wrong with the labels
    finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
    return max(2, int(np.max(finite)) + 1) if finite.size else 2


def check_data(x, y, num_classes=None, x_name: str = "x", y_name: str = "y",
               required_for: str | None = None):
    """``(x, labels, num_classes)``: finite inputs ``(n, ...)`` and int32 labels ``(n,)``."""
    arr = check_inputs(x, x_name)
    k = infer_num_classes(y, num_classes, required_for)
    labels = check_labels(y, k, arr.shape[0], y_name, x_name)
    return arr, labels, k


def check_mask(mask, n: int, name: str = "mask", x_name: str = "x") -> np.ndarray:
    """A boolean mask of length ``n`` (one entry per example)."""
    arr = mask.numpy() if tf.is_tensor(mask) else np.asarray(mask)
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise TypeError(f"`{name}` must be a boolean array (True = poisoned). Received: "
                            f"{name}.dtype={arr.dtype}")
        arr = arr.astype(bool)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D boolean array of shape (n,). Received: "
                         f"{name}.shape={arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"`{x_name}` and `{name}` must have the same length. Received: "
                         f"{x_name} has {n} examples, {name} has {arr.shape[0]}")
    return arr


def count_for(fraction: float, n: int) -> int:
    """``round(fraction * n)`` (half to even), the number of examples a fraction poisons."""
    return int(np.round(fraction * n))


def choose(candidates, fraction: float, n: int, seed, what: str) -> np.ndarray:
    """``round(fraction * n)`` indices drawn uniformly without replacement from ``candidates``
    (sorted); a ``ValueError`` naming ``fraction`` when there are not enough candidates."""
    count = count_for(fraction, n)
    if count > candidates.shape[0]:
        raise ValueError(f"`fraction` asks for {count} poisoned examples but only "
                         f"{candidates.shape[0]} are {what}. Received: fraction={fraction}")
    return np.sort(np.random.default_rng(seed).choice(candidates, count, replace=False))


def next_labels(labels, num_classes: int, mode: str, target: int):
    """The backdoor's labels: ``target`` (all-to-one) or ``(y + 1) mod k`` (all-to-all, Gu et
    al. 2017). Works on NumPy arrays and tensors."""
    if mode == "all_to_one":
        return labels * 0 + target
    return (labels + 1) % num_classes


def eligible(labels, mode: str, target: int):
    """Examples a backdoor can poison: all-to-one skips those already labelled ``target``
    (their label would not change); all-to-all takes every example."""
    if mode == "all_to_one":
        return labels != target
    return labels == labels


def relabel_like(y, new_labels):
    """``new_labels`` (int32 ``(n,)`` tensor) in the format of the batch's labels ``y``:
    one-hot rows, ``(n, 1)`` or ``(n,)``, with ``y``'s dtype. Traceable."""
    y = tf.convert_to_tensor(y)
    if y.shape.rank is not None and y.shape.rank >= 2 and y.shape[-1] not in (None, 1):
        return tf.one_hot(new_labels, y.shape[-1], dtype=y.dtype)
    return tf.reshape(tf.cast(new_labels, y.dtype), tf.shape(y))


# --------------------------------------------------------------------------------------------
# Hidden layers
# --------------------------------------------------------------------------------------------
def require_model(model) -> None:
    """``TypeError`` unless ``model`` is a ``keras.Model``: the detectors and repairs read its
    layers (a :class:`keras_secure.Classifier` wraps one: pass ``classifier.model``)."""
    if isinstance(model, keras.Model):
        return
    hint = (" (a keras_secure.Classifier: pass its .model, whose output kind keras_secure "
            "must be able to read from its structure)" if hasattr(model, "model") and
            isinstance(getattr(model, "model"), keras.Model) else "")
    raise TypeError(f"`model` must be a keras.Model: this function reads its layers. Received: "
                    f"model of type {type(model).__name__}{hint}")


def _layer_names(model) -> list[str]:
    require_model(model)
    return [layer.name for layer in model.layers]


def get_layer(model, layer: str, name: str = "layer"):
    """The layer called ``layer`` of ``model`` (``ValueError`` listing the names if none)."""
    require_model(model)
    if not isinstance(layer, str):
        raise TypeError(f"`{name}` must be a layer name (str). Received: {name}={layer!r}")
    names = _layer_names(model)
    if layer not in names:
        raise ValueError(f"`{name}` must name a layer of the model; its layers are {names}. "
                         f"Received: {name}={layer!r}")
    return model.get_layer(layer)


def penultimate_layer(model) -> str:
    """Name of the layer whose output feeds the model's last layer (the default feature
    layer of the detectors)."""
    require_model(model)
    layers = list(model.layers)
    index = len(layers) - 1
    while index >= 0 and isinstance(layers[index], (keras.layers.Activation,
                                                    keras.layers.Softmax)):
        index -= 1
    if index < 1:
        raise ValueError("The model has no hidden layer before its output layer; pass `layer` "
                         f"explicitly. Received: a model with layers {_layer_names(model)}")
    return layers[index - 1].name


def feature_model(model, layer: str | None, name: str = "layer") -> keras.Model:
    """``x -> output of layer`` as a Keras model (``layer=None``: the penultimate layer)."""
    layer = penultimate_layer(model) if layer is None else layer
    found = get_layer(model, layer, name)
    cache = model.__dict__.setdefault("_keras_secure_feature_models", {})
    if layer not in cache:
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs:
            raise ValueError(
                "Hidden activations need a model with a layer graph (Sequential with an Input, "
                "or Functional); this model has none yet. Received: model of type "
                f"{type(model).__name__}")
        inputs = inputs[0] if len(inputs) == 1 else inputs
        cache[layer] = keras.Model(inputs, found.output, name=f"{model.name}_to_{layer}")
    return cache[layer]


def hidden_activations(model, x, layer: str | None = None, batch_size: int = 256) -> np.ndarray:
    """Activations of a named hidden layer, flattened per example.

    Args:
        model: a Sequential or Functional Keras model.
        x: inputs ``(n, ...)``.
        layer: name of the layer whose output is read; None reads the penultimate layer (the
            input of the last layer, skipping a final ``Activation``/``Softmax``). Defaults to
            None.
        batch_size: examples per forward pass, >= 1. Defaults to 256.

    Returns:
        float32 array ``(n, d)``: the layer's output for each example, flattened.

    Raises:
        ValueError: if ``layer`` names no layer of the model (the message lists them), for
            non-finite or wrongly shaped ``x``.

    Example:
        >>> h = hidden_activations(model, x_train, layer="dense")
    """
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    sub = feature_model(model, layer)
    arr = check_inputs(x, "x")
    fn = model.__dict__.setdefault("_keras_secure_feature_fns", {})
    key = sub.name
    if key not in fn:
        fn[key] = tf.function(lambda t, _sub=sub: _sub(t, training=False),
                              reduce_retracing=True)
    parts = [fn[key](tf.cast(arr[i:i + batch_size], tf.float32)).numpy()
             for i in range(0, arr.shape[0], batch_size)]
    out = np.concatenate(parts).astype(np.float32)
    return out.reshape(out.shape[0], -1)
