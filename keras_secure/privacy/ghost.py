"""Per-example gradient norms without per-example gradients ("ghost clipping").

For a layer computing ``z = a W (+ b)`` the gradient of example i's loss with respect to ``W``
is ``a_i^T g_i`` with ``g_i = dloss_i / dz_i``; its squared norm is ``||a_i||^2 ||g_i||^2``
when ``a_i`` is a vector (Goodfellow 2015) and ``sum_{t,s} (a_t . a_s)(g_t . g_s)`` when the
layer is applied at T positions (a sequence, or the patches of a convolution; Li et al. 2022),
computed as such when ``2 T^2`` is below the gradient's size and by forming ``a_i^T g_i``
otherwise (Bu et al. 2023's mixed rule). So one batched forward pass and one backward pass to
the layers' outputs give every example's gradient norm; the sum of clipped gradients then comes
from each layer's own last step alone - the gradient of its recorded output with respect to its
own variables, with the output gradients weighted by the clip factors ("book-keeping", Bu et al.
2023) - without a second backward pass through the network.

Supported exactly: ``Dense`` (any input rank), ``Conv2D`` (channels_last, groups=1, any strides,
dilation and padding "valid"/"same") and ``Embedding`` (repeated ids handled exactly). Other
layers that own trainable variables, take one tensor input and have no sub-layers (e.g.
``LayerNormalization``) fall back, per layer, to per-example gradients of that layer alone
(``tf.vectorized_map`` over the layer's recorded inputs and output gradients). Anything else -
variables owned by a model or by a layer with sub-layers, multi-input layers, LoRA or quantized
layers treated generically - is reported by :func:`ghost_plan` so the caller can use whole-model
per-example gradients instead.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

DENSE, CONV2D, EMBEDDING, GENERIC = "dense", "conv2d", "embedding", "generic"


def own_trainable(layer):
    """The trainable variables a layer owns itself (not its sub-layers').

    Example:
        >>> [v.name for v in own_trainable(keras.layers.Dense(2))]  # after build
        ['kernel', 'bias']
    """
    return [v for v in layer._trainable_variables if v.trainable] if layer.trainable else []


def _kind(layer):
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return GENERIC
    if type(layer) is keras.layers.Dense:
        return DENSE
    if (type(layer) is keras.layers.Conv2D and layer.data_format == "channels_last"
            and layer.groups == 1 and layer.padding in ("valid", "same")):
        return CONV2D
    if type(layer) is keras.layers.Embedding:
        return EMBEDDING
    return GENERIC


def ghost_plan(model):
    """Decide how each trainable layer's per-example gradient norm is obtained.

    Args:
        model: a built Keras model.

    Returns:
        ``(plan, problems)``: ``plan`` maps each layer owning trainable variables to
        ``"dense"``, ``"conv2d"``, ``"embedding"`` (ghost norms) or ``"generic"`` (per-layer
        per-example gradients); ``problems`` lists why ghost clipping cannot cover the model
        (empty when it can).

    Example:
        >>> plan, problems = ghost_plan(model)
        >>> {layer.name: kind for layer, kind in plan.items()}
        {'conv2d': 'conv2d', 'dense': 'dense'}
    """
    plan, problems, covered = {}, [], set()
    if not model.trainable_variables:
        return plan, ["the model has no trainable variables yet (build it first, e.g. by "
                      "calling it on a batch or starting it with keras.Input)"]
    for layer in model._flatten_layers(include_self=False, recursive=True):
        own = own_trainable(layer)
        if not own:
            continue
        sub = [s for s in layer._flatten_layers(include_self=False, recursive=True)
               if s.trainable_variables]
        if sub:
            problems.append(f"layer {layer.name!r} owns variables and has sub-layers")
            continue
        plan[layer] = _kind(layer)
        covered.update(id(v) for v in own)
    stray = [v.path for v in model.trainable_variables if id(v) not in covered]
    if stray and not problems:
        problems.append(f"variables not owned by a layer: {stray}")
    return plan, problems


class _Call:
    """One recorded call of a layer: its input, its watched output (or pre-activation) and the
    keyword arguments of the call."""

    __slots__ = ("inputs", "target", "kwargs")

    def __init__(self, inputs, target, kwargs):
        self.inputs, self.target, self.kwargs = inputs, target, kwargs


@contextlib.contextmanager
def recording(plan, tape):
    """Record, during a batched forward pass inside ``tape``, each planned layer's inputs and
    the tensor whose gradient gives its per-example gradients (pre-activation for Dense and
    Conv2D, output otherwise). The layers' ``call`` / ``activation`` are replaced on the
    instances for the duration of the block only.

    Args:
        plan: from :func:`ghost_plan`.
        tape: the persistent ``tf.GradientTape`` recording the forward pass.

    Yields:
        ``{layer: [_Call, ...]}``, filled by the forward pass (one entry per call, so shared
        layers are handled).

    Raises:
        ValueError: at trace time, for a planned layer called with several positional inputs,
            or a generic layer called with tensor keyword arguments.

    Example:
        >>> with tf.GradientTape(persistent=True) as tape:
        ...     with recording(plan, tape) as records:
        ...         y_pred = model(x, training=True)
    """
    records = {layer: [] for layer in plan}
    with contextlib.ExitStack() as stack:
        for layer, kind in plan.items():
            original_call = layer.call

            def call(*args, _layer=layer, _kind=kind, _call=original_call, **kwargs):
                if len(args) != 1 or not isinstance(args[0], tf.Tensor):
                    raise ValueError(
                        f"Ghost clipping: layer {_layer.name!r} was called with "
                        f"{len(args)} positional inputs; only single-tensor layers are "
                        "supported. Use DPSGD(..., clipping='vectorized').")
                if _kind == GENERIC and any(isinstance(v, tf.Tensor) for v in kwargs.values()):
                    raise ValueError(
                        f"Ghost clipping: layer {_layer.name!r} was called with tensor keyword "
                        f"arguments {sorted(kwargs)}; its per-example gradients cannot be "
                        "recomputed per layer. Use DPSGD(..., clipping='vectorized').")
                record = _Call(args[0], None, kwargs)
                records[_layer].append(record)
                out = _call(*args, **kwargs)
                if _kind in (EMBEDDING, GENERIC):
                    tape.watch(out)
                    record.target = out
                return out

            stack.enter_context(_swapped(layer, "call", call))
            if kind in (DENSE, CONV2D):
                def activation(z, _layer=layer, _act=layer.activation):
                    tape.watch(z)
                    records[_layer][-1].target = z
                    return _act(z)

                stack.enter_context(_swapped(layer, "activation", activation))
        yield records


@contextlib.contextmanager
def _swapped(layer, name, value):
    """Set ``layer.<name>`` on the instance for the block only (bypassing Keras tracking)."""
    had, old = name in layer.__dict__, layer.__dict__.get(name)
    object.__setattr__(layer, name, value)
    try:
        yield
    finally:
        if had:
            object.__setattr__(layer, name, old)
        else:
            del layer.__dict__[name]


def _rows(t, n):
    """(n, T, d) view of a per-example tensor (n, ..., d), with static T and d when known."""
    middle, d = t.shape[1:-1], t.shape[-1]
    if middle.is_fully_defined() and d is not None:
        return tf.reshape(t, [n, middle.num_elements(), d])
    return tf.reshape(t, [n, -1, tf.shape(t)[-1]])


def _outer_norms(a, g):
    """Squared Frobenius norms of sum_t a_t g_t^T per example; a (n,T,k), g (n,T,c)."""
    t, k, c = a.shape[1], a.shape[2], g.shape[2]
    if t == 1:
        return tf.reduce_sum(tf.square(a[:, 0]), 1) * tf.reduce_sum(tf.square(g[:, 0]), 1)
    if t is not None and k is not None and c is not None and 2 * t * t >= k * c:
        return tf.reduce_sum(tf.square(tf.einsum("ntk,ntc->nkc", a, g)), axis=[1, 2])
    return tf.reduce_sum(tf.einsum("ntk,nsk->nts", a, a) * tf.einsum("ntc,nsc->nts", g, g),
                         axis=[1, 2])


def _patches(layer, x):
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    return tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1],
                                    rates=[1, dh, dw, 1], padding=layer.padding.upper())


def squared_norms(plan, records, grads, n):
    """Per-example squared gradient norms over all planned layers' variables.

    Layers planned ``"generic"`` and layers called more than once (shared weights, whose later
    calls' inputs depend on their own variables) get per-example gradients of their own
    variables, computed layer-locally; they are returned for the weighted sum.

    Args:
        plan: from :func:`ghost_plan`.
        records: from :func:`recording`, after the forward pass.
        grads: ``{id(call.target): gradient of the summed loss}`` for every recorded call.
        n: batch size (scalar tensor).

    Returns:
        ``(sq_norms, per_example)``: a float32 tensor of shape ``(n,)`` and
        ``{layer: [per-example gradient (n, *variable.shape) per own variable]}`` for the
        layers handled per example.

    Example:
        >>> targets = [c.target for calls in records.values() for c in calls]
        >>> grads = dict(zip(map(id, targets), tape.gradient(total_loss, targets)))
        >>> sq_norms, per_example = squared_norms(plan, records, grads, batch_size)
    """
    total, per_example = tf.zeros([n]), {}
    for layer, kind in plan.items():
        calls = [c for c in records[layer] if c.target is not None]
        if not calls:
            continue
        gs = [grads[id(c.target)] for c in calls]
        if kind == GENERIC or len(calls) > 1:
            per_example[layer] = _per_example_gradients(layer, kind, calls, gs)
            total += tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [n, -1]), axis=1)
                               for g in per_example[layer]])
            continue
        (call,), (g,) = calls, gs
        g = _rows(tf.cast(g, tf.float32), n)
        if kind == EMBEDDING:
            ids = tf.reshape(call.inputs, [n, -1])
            same = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), tf.float32)
            total += tf.reduce_sum(same * tf.einsum("ntd,nsd->nts", g, g), axis=[1, 2])
            continue
        a = tf.cast(call.inputs, tf.float32)
        a = _rows(_patches(layer, a) if kind == CONV2D else a, n)
        total += _outer_norms(a, g)
        if layer.bias is not None:
            total += tf.reduce_sum(tf.square(tf.reduce_sum(g, axis=1)), axis=1)
    return total, per_example


def _per_example_gradients(layer, kind, calls, gs):
    """Per-example gradients of one layer's own variables, by per-example VJPs of that layer
    alone on its recorded inputs (all its calls summed per example). The recorded target is
    the pre-activation for Dense/Conv2D, so their activation is bypassed here."""
    variables = own_trainable(layer)
    pre_activation = kind in (DENSE, CONV2D)

    def one_example(inputs):
        per_call = []
        for (xi, gi), c in zip(inputs, calls):
            with tf.GradientTape() as tape:
                with (_swapped(layer, "activation", keras.activations.linear)
                      if pre_activation else contextlib.nullcontext()):
                    out = layer.call(xi[tf.newaxis], **c.kwargs)
            per_call.append(tape.gradient(out, variables, output_gradients=gi[tf.newaxis],
                                          unconnected_gradients=tf.UnconnectedGradients.ZERO))
        return [tf.cast(tf.add_n([tf.convert_to_tensor(pc[j]) for pc in per_call]), tf.float32)
                for j in range(len(variables))]

    return tf.vectorized_map(one_example, [(c.inputs, g) for c, g in zip(calls, gs)])
