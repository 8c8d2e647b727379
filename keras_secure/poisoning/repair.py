"""Repair of backdoored models: fine-pruning (Liu, Dolan-Gavitt & Garg 2018) and
remove-and-retrain."""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_secure.classifier import as_classifier, check_inputs
from keras_secure.poisoning._common import (check_fraction, check_mask, feature_model, get_layer,
                                            require_model)
from keras_secure.validation import check_number

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def last_conv_layer(model) -> str:
    """Name of the model's last convolutional layer (``ValueError`` if it has none)."""
    require_model(model)
    convs = [layer.name for layer in model.layers if isinstance(layer, _CONV)]
    if not convs:
        raise ValueError("Fine-pruning needs a convolutional layer; the model has none among its"
                         f" layers {[layer.name for layer in getattr(model, 'layers', [])]}.")
    return convs[-1]


def _conv(model, layer):
    layer = last_conv_layer(model) if layer is None else layer
    found = get_layer(model, layer)
    if not isinstance(found, _CONV):
        raise ValueError(f"`layer` must name a convolutional layer (its output channels are "
                         f"pruned). Received: layer={layer!r} ({type(found).__name__})")
    return found


def channel_activity(model, x_clean, layer: str | None = None,
                     batch_size: int = 256) -> np.ndarray:
    """Mean activation of each output channel of a convolutional layer on clean data.

    Args:
        model: a Sequential or Functional Keras model.
        x_clean: clean inputs ``(n, ...)``.
        layer: the convolutional layer; None is the last one. Defaults to None.
        batch_size: examples per forward pass. Defaults to 256.

    Returns:
        float64 ``(channels,)``: each channel's output averaged over examples and positions.

    Example:
        >>> np.argsort(channel_activity(model, x_clean))[:10]   # the 10 most dormant channels
    """
    conv = _conv(model, layer)
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    x = check_inputs(x_clean, "x_clean")
    sub = feature_model(model, conv.name)
    channel_axis = -1 if conv.data_format == "channels_last" else 1
    total, count = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        out = sub(tf.constant(x[i:i + batch_size], tf.float32), training=False).numpy()
        out = np.moveaxis(out, channel_axis, -1).reshape(-1, out.shape[channel_axis])
        total = total + out.sum(axis=0, dtype=np.float64)
        count += out.shape[0]
    return total / count


class _ChannelMask(keras.constraints.Constraint):
    """Keeps pruned output channels at zero through fine-tuning (applied after every update)."""

    def __init__(self, keep):
        self.keep = np.asarray(keep, np.float32)

    def __call__(self, w):
        return w * tf.cast(self.keep, w.dtype)


def _clone(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _set_pruned(conv, kernel, bias, keep):
    conv.kernel.assign(kernel * keep)
    if conv.use_bias:
        conv.bias.assign(bias * keep)


@dataclasses.dataclass
class FinePruningResult:
    """What :func:`fine_pruning` did.

    Attributes:
        model: the pruned and fine-tuned copy (the input model is untouched).
        layer: the pruned layer's name.
        pruned_channels: indices of the pruned output channels, most dormant first.
        fraction: the fraction of channels pruned.
        before_fine_tuning: ``evaluate(pruned model)`` before fine-tuning (or None).
        after: ``evaluate(model)`` after fine-tuning (or None).
    """

    model: keras.Model
    layer: str
    pruned_channels: np.ndarray
    fraction: float
    before_fine_tuning: dict | None = None
    after: dict | None = None


def prune(model, x_clean, fraction: float, *, layer: str | None = None,
          batch_size: int = 256):
    """A copy of ``model`` whose most dormant output channels (on clean data) of a
    convolutional layer are pruned: their kernel and bias are zero and kept at zero by a
    constraint during any later training.

    Args:
        model: a Sequential or Functional Keras model.
        x_clean: clean inputs that rank the channels.
        fraction: fraction of the layer's channels to prune, in [0, 1].
        layer: the convolutional layer; None is the last one. Defaults to None.
        batch_size: examples per forward pass. Defaults to 256.

    Returns:
        ``(pruned_copy, pruned_channel_indices)``.

    Example:
        >>> pruned, channels = prune(model, x_clean, 0.5)
    """
    fraction = check_fraction(fraction)
    conv = _conv(model, layer)
    activity = channel_activity(model, x_clean, conv.name, batch_size)
    order = np.argsort(activity, kind="stable")
    channels = order[:int(round(fraction * activity.shape[0]))]
    keep = np.ones(activity.shape[0], np.float32)
    keep[channels] = 0.0
    clone = _clone(model)
    target = clone.get_layer(conv.name)
    _set_pruned(target, target.kernel.numpy(), target.bias.numpy() if target.use_bias else None,
                keep)
    target.kernel.constraint = _ChannelMask(keep)
    if target.use_bias:
        target.bias.constraint = _ChannelMask(keep)
    return clone, channels


def pruning_curve(model, x_clean, fractions, evaluate: Callable, *, layer: str | None = None,
                  batch_size: int = 256) -> list[dict]:
    """Figures of the pruned model (no fine-tuning) against the fraction of channels pruned.

    Args:
        model: the (backdoored) model; untouched.
        x_clean: clean inputs that rank the channels.
        fractions: fractions in [0, 1] to evaluate.
        evaluate: ``evaluate(model) -> dict`` of figures (e.g. clean accuracy and attack
            success rate).
        layer: the convolutional layer; None is the last one. Defaults to None.
        batch_size: examples per forward pass. Defaults to 256.

    Returns:
        ``[{"fraction": f, **evaluate(pruned)} for f in fractions]``.

    Example:
        >>> pruning_curve(model, x_val, [0, 0.5, 0.9],
        ...               lambda m: {"clean": clean_accuracy(m, x_test, y_test)})
    """
    fractions = [check_fraction(f, "fractions") for f in fractions]
    if not callable(evaluate):
        raise TypeError(f"`evaluate` must be a callable model -> dict. Received: {evaluate!r}")
    conv = _conv(model, layer)
    order = np.argsort(channel_activity(model, x_clean, conv.name, batch_size), kind="stable")
    clone = _clone(model)
    target = clone.get_layer(conv.name)
    kernel = target.kernel.numpy()
    bias = target.bias.numpy() if target.use_bias else None
    rows = []
    for f in fractions:
        keep = np.ones(order.shape[0], np.float32)
        keep[order[:int(round(f * order.shape[0]))]] = 0.0
        _set_pruned(target, kernel, bias, keep)
        rows.append({"fraction": f, **evaluate(clone)})
    return rows


def fine_pruning(model, x_clean, y_clean, *, fraction: float, layer: str | None = None,
                 epochs: int = 5, learning_rate: float = 1e-3, batch_size: int = 64,
                 loss=None, evaluate: Callable | None = None, seed: int | None = None,
                 verbose: int = 0) -> FinePruningResult:
    """Fine-pruning: prune the channels of the last convolutional layer that are dormant on
    clean data (where the backdoor tends to hide), then fine-tune on clean data.

    The input model is not modified: a copy is pruned (:func:`prune`; pruned channels stay
    zero during fine-tuning) and fine-tuned with Adam for ``epochs`` on ``(x_clean,
    y_clean)``.

    Args:
        model: the (possibly backdoored) model.
        x_clean: clean data available to the defender (ranks channels and fine-tunes).
        y_clean: its labels (in the format ``loss`` expects).
        fraction: fraction of the layer's channels to prune, in [0, 1]. The paper prunes until
            clean validation accuracy drops by 4%; :func:`pruning_curve` shows that trade-off.
        layer: the convolutional layer; None is the last one. Defaults to None.
        epochs: fine-tuning epochs, >= 0. Defaults to 5.
        learning_rate: Adam learning rate, > 0. Defaults to 1e-3.
        batch_size: fine-tuning batch size, >= 1. Defaults to 64.
        loss: the fine-tuning loss; None uses the loss ``model`` was compiled with (an error if
            it was not compiled). Defaults to None.
        evaluate: ``evaluate(model) -> dict`` run before and after fine-tuning, or None.
            Defaults to None.
        seed: seeds fine-tuning (``keras.utils.set_random_seed``). Defaults to None.
        verbose: passed to ``fit``. Defaults to 0.

    Returns:
        A :class:`FinePruningResult`.

    Raises:
        ValueError: ``fraction`` outside [0, 1], ``layer`` not a convolutional layer of the
            model, no loss, bad data.

    Example:
        >>> result = fine_pruning(model, x_val, y_val, fraction=0.6, epochs=5,
        ...     evaluate=lambda m: {"asr": attack_success_rate(m, x_test, y_test, trigger)})
        >>> result.after

    References:
        Liu, Dolan-Gavitt & Garg (2018), "Fine-Pruning: Defending Against Backdooring Attacks
        on Deep Neural Networks", RAID.

    Limitations:
        Pruning-aware attacks (the paper's own adaptive attacker) plant the backdoor in
        channels that clean data also uses; fine-tuning then carries most of the repair.
    """
    fraction = check_fraction(fraction)
    epochs = check_number("epochs", epochs, low=0, integer=True)
    learning_rate = check_number("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError("`loss` is needed to fine-tune: pass loss=..., or compile the model "
                         "with its training loss. Received: loss=None on an uncompiled model")
    x = check_inputs(x_clean, "x_clean")
    as_classifier(model).check_labels(y_clean, x.shape[0], "y_clean")
    pruned, channels = prune(model, x, fraction, layer=layer)
    before = evaluate(pruned) if evaluate is not None else None
    if epochs:
        if seed is not None:
            keras.utils.set_random_seed(check_number("seed", seed, low=0, integer=True))
        pruned.compile(keras.optimizers.Adam(learning_rate), loss)
        pruned.fit(x, y_clean, epochs=epochs, batch_size=batch_size, verbose=verbose)
    after = evaluate(pruned) if evaluate is not None else None
    return FinePruningResult(pruned, _conv(model, layer).name, channels, fraction, before, after)


def remove_and_retrain(build_model: Callable, x, y, flagged, *, epochs: int = 10,
                       batch_size: int = 64, seed: int | None = None, verbose: int = 0,
                       **fit_kwargs) -> keras.Model:
    """Drop the flagged training examples and train a fresh model on the rest.

    Args:
        build_model: ``() -> compiled keras.Model`` (a fresh, untrained model).
        x: the (poisoned) training inputs ``(n, ...)``.
        y: their labels.
        flagged: boolean ``(n,)``: the examples a detector flagged.
        epochs: training epochs, >= 1. Defaults to 10.
        batch_size: batch size, >= 1. Defaults to 64.
        seed: seeds training (``keras.utils.set_random_seed``) before ``build_model`` is
            called. Defaults to None.
        verbose: passed to ``fit``. Defaults to 0.
        **fit_kwargs: passed to ``fit``.

    Returns:
        The trained model.

    Raises:
        ValueError: ``flagged`` of another length than ``x`` (names ``flagged``), everything
            flagged, bad data.

    Example:
        >>> result = spectral_signatures(model, x_p, y_p)
        >>> repaired = remove_and_retrain(build, x_p, y_p, result.flagged, epochs=10)

    References:
        Tran, Li & Madry (2018) and Chen et al. (2018) evaluate their detectors this way.
    """
    if not callable(build_model):
        raise TypeError(f"`build_model` must be a callable returning a compiled model. "
                        f"Received: {build_model!r}")
    epochs = check_number("epochs", epochs, low=1, integer=True)
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    x = check_inputs(x, "x")
    flagged = check_mask(flagged, x.shape[0], "flagged", "x")
    y = np.asarray(y)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"`x` and `y` must have the same number of examples. Received: x has "
                         f"{x.shape[0]}, y has {y.shape[0]}")
    if flagged.all():
        raise ValueError("`flagged` marks every example: nothing is left to train on.")
    if seed is not None:
        keras.utils.set_random_seed(check_number("seed", seed, low=0, integer=True))
    model = build_model()
    if not getattr(model, "compiled", False):
        raise ValueError("`build_model` must return a compiled model.")
    keep = ~flagged
    model.fit(x[keep], y[keep], epochs=epochs, batch_size=batch_size, verbose=verbose,
              **fit_kwargs)
    return model
