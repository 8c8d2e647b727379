"""Per-example gradient norms without per-example gradients of the whole model ("ghost
clipping"), and per-example gradients of single layers where those are cheaper.

For a layer computing ``z = a W (+ b)`` the gradient of example i's loss with respect to ``W``
is ``a_i^T g_i`` with ``g_i = dloss_i / dz_i``; its squared norm is ``||a_i||^2 ||g_i||^2``
when ``a_i`` is a vector (Goodfellow 2015) and ``sum_{t,s} (a_t . a_s)(g_t . g_s)`` when the
layer is applied at T positions (a sequence, or the output positions of a convolution; Li et
al. 2022). Per layer, the cheaper of two regimes is used (Bu et al. 2023's mixed rule):

- **ghost norm** (cost ~ T^2 (k + c) per example): the norm from the two T x T Gram matrices;
  the layer's share of the clipped sum then comes from its own last backward step, with the
  output gradients weighted by the clip factors ("book-keeping", Bu et al. 2023);
- **explicit** (cost ~ T k c per example, memory k c): the per-example kernel gradients
  ``a_i^T g_i`` themselves; their norms are read off and the clipped sum is their
  factor-weighted sum, so the layer's backward step is not needed at all.

A convolution's ``a`` is never materialized as patches: its kernel taps' shifted inputs are
unit-stride slices of the padded input reshaped by the stride (:func:`_shifted_inputs`), so
``a_i^T g_i`` is one small matrix product per tap and the Gram of the patches is the sum of
the taps' Grams. So one batched forward pass and one backward pass to the layers' outputs
give every example's gradient norm, without a second backward pass through the network.

Supported exactly: ``Dense`` (any input rank), ``Conv1D``/``Conv2D``/``Conv3D`` (channels
last or first, any groups, strides, dilation, padding "valid"/"same"/"causal") and
``Embedding`` (repeated ids handled exactly). Other layers that own trainable variables, take
one tensor input and have no sub-layers (e.g. ``LayerNormalization``) fall back, per layer, to
per-example gradients of that layer alone (``tf.vectorized_map`` over the layer's recorded
inputs and output gradients). Anything else - variables owned by a model or by a layer with
sub-layers, multi-input layers, LoRA or quantized layers treated generically - is reported by
:func:`ghost_plan` so the caller can use whole-model per-example gradients instead.

References:
    Goodfellow (2015), "Efficient Per-Example Gradient Computations", arXiv:1510.01799.
    Li, Tramer, Liang & Hashimoto (2022), "Large Language Models Can Be Strong Differentially
    Private Learners", ICLR. Bu, Wang, Zha & Karypis (2023), "Differentially Private
    Optimization on Large Model at Small Cost", ICML.
"""

from __future__ import annotations

import contextlib
import itertools

import keras
import tensorflow as tf

DENSE, CONV, EMBEDDING, GENERIC = "dense", "conv", "embedding", "generic"
_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


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
    if type(layer) in _CONVOLUTIONS and layer.padding in ("valid", "same", "causal"):
        return CONV
    if type(layer) is keras.layers.Embedding:
        return EMBEDDING
    return GENERIC


def ghost_plan(model):
    """Decide how each trainable layer's per-example gradient norm is obtained.

    Args:
        model: a built Keras model.

    Returns:
        ``(plan, problems)``: ``plan`` maps each layer owning trainable variables to
        ``"dense"``, ``"conv"`` (Conv1D/2D/3D), ``"embedding"`` (ghost norms or explicit
        per-example gradients of that layer, see :func:`squared_norms`) or ``"generic"`` (per-layer
        per-example gradients); ``problems`` lists why ghost clipping cannot cover the model
        (empty when it can).

    Example:
        >>> plan, problems = ghost_plan(model)
        >>> {layer.name: kind for layer, kind in plan.items()}
        {'conv2d': 'conv', 'dense': 'dense'}
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
            if kind in (DENSE, CONV):
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


def _owns(variables, variable):
    return any(v is variable for v in variables)


def _size(t, axis):
    """Static size of ``t`` along ``axis`` when known, else a scalar tensor."""
    static = t.shape[axis]
    return static if static is not None else tf.shape(t)[axis]


def _at_least_zero(v):
    return max(0, v) if isinstance(v, int) else tf.maximum(0, v)


def _channels_last(layer, t):
    """A convolution's input or output gradient with the channels last."""
    if getattr(layer, "data_format", "channels_last") == "channels_last":
        return t
    rank = t.shape.rank
    return tf.transpose(t, [0, *range(2, rank), 1])


def _shifted_inputs(layer, x, out_sizes):
    """The inputs a convolution's kernel taps see: for each kernel offset (row-major over the
    kernel's spatial axes), the ``(n, *out_sizes, c_in)`` tensor of input values multiplied by
    that tap at every output position, so that ``z = sum_o shifted[o] @ kernel[o]``.

    Built without patch extraction: the input is padded as the layer pads it (``"valid"``,
    ``"same"``, ``"causal"``), each spatial axis of length ``L`` is reshaped to
    ``(L / stride, stride)``, and each offset is then a unit-stride slice (strided slices and
    ``tf.image.extract_patches`` are several times slower on CPU, see docs/performance.md).

    Args:
        layer: a Conv1D/2D/3D layer (channels last: ``x`` already transposed).
        x: its input ``(n, *spatial, c_in)``.
        out_sizes: the output's spatial sizes (ints or scalar tensors).

    Returns:
        A list of ``prod(kernel_size)`` tensors ``(n, *out_sizes, c_in)``.
    """
    rank = len(layer.kernel_size)
    pads, lengths = [[0, 0]], []
    for axis in range(rank):
        size = _size(x, 1 + axis)
        k, s, d = layer.kernel_size[axis], layer.strides[axis], layer.dilation_rate[axis]
        out = out_sizes[axis]
        if layer.padding == "same":
            before = _at_least_zero((out - 1) * s + (k - 1) * d + 1 - size) // 2
        elif layer.padding == "causal":
            before = (k - 1) * d
        else:
            before = 0
        length = ((k - 1) * d // s + out) * s  # every tap's last position fits
        pads.append([before, _at_least_zero(length - before - size)])
        lengths.append(length)
    pads.append([0, 0])
    padded = tf.pad(x, pads)
    padded = padded[(slice(None), *(slice(0, length) for length in lengths))]
    split = [-1]
    for axis, length in enumerate(lengths):
        split += [length // layer.strides[axis], layer.strides[axis]]
    split.append(_size(x, -1))
    padded = tf.reshape(padded, split)
    shifted = []
    for offset in itertools.product(*(range(k) for k in layer.kernel_size)):
        index = [slice(None)]
        for axis, tap in enumerate(offset):
            o, s = tap * layer.dilation_rate[axis], layer.strides[axis]
            index += [slice(o // s, o // s + out_sizes[axis]), o % s]
        index.append(slice(None))
        shifted.append(padded[tuple(index)])
    return shifted


def _explicit(kind, layer, t, k, c):
    """Bu et al.'s (2023) mixed rule: form the per-example kernel gradients (memory and cost
    ~ the kernel's size per example, ``k c`` or ``taps c_in c_out / groups``) when ``2 T^2``,
    the size of the ghost norm's two T x T Gram matrices, is at least that; the ghost norm
    otherwise. Always explicit for an unknown T (the ghost norm's memory grows as T^2).

    Measured on the digits CNN and the 32x32x3 ConvNet (docs/performance.md): a rule that also
    charged the ghost regime for its weighted backward step chose explicit gradients for the
    digits CNN's strided convolution (T = 16) and made its DP step 1.72x non-DP instead of
    1.40x: one batched backward-filter kernel beats many small per-example products there."""
    if t == 1:
        return False
    if t is None:
        return True
    kernel_size = k * c // (layer.groups if kind == CONV else 1)
    return 2 * t * t >= kernel_size


def _dense_terms(layer, call, g, n, variables):
    """Squared norms of one Dense call and, for the explicit regime, per-example gradients."""
    a = _rows(tf.cast(call.inputs, tf.float32), n)
    t, k, c = a.shape[1], a.shape[2], g.shape[2]
    kernel_sq, per_example = None, {}
    if _owns(variables, layer.kernel):
        if t == 1:
            kernel_sq = tf.reduce_sum(tf.square(a[:, 0]), 1) * \
                tf.reduce_sum(tf.square(g[:, 0]), 1)
        elif _explicit(DENSE, layer, t, k, c):
            per_example[id(layer.kernel)] = tf.linalg.matmul(a, g, transpose_a=True)
        else:
            kernel_sq = tf.reduce_sum(tf.linalg.matmul(a, a, transpose_b=True) *
                                      tf.linalg.matmul(g, g, transpose_b=True), axis=[1, 2])
    return kernel_sq, per_example


def _conv_terms(layer, call, g, n, variables):
    """Squared norms of one Conv1D/2D/3D call and, for the explicit regime, per-example
    gradients of its kernel, from the shifted inputs (no patch extraction)."""
    if not _owns(variables, layer.kernel):
        return None, {}
    x = _channels_last(layer, tf.cast(call.inputs, tf.float32))
    rank = len(layer.kernel_size)
    out_sizes = [_size(g, 1 + axis) for axis in range(rank)]
    shifted = _shifted_inputs(layer, x, out_sizes)
    groups, c_in, c_out = layer.groups, x.shape[-1], layer.filters
    g = _rows(g, n)
    shifted = [_rows(s, n) for s in shifted]
    t = g.shape[1]
    taps = len(shifted)
    if groups > 1:
        g_grouped = tf.reshape(g, [n, -1, groups, c_out // groups])
        shifted = [tf.reshape(s, [n, -1, groups, c_in // groups]) for s in shifted]
    if _explicit(CONV, layer, t, taps * c_in, c_out):
        if groups == 1:
            per_tap = [tf.linalg.matmul(s, g, transpose_a=True) for s in shifted]
        else:  # kernel column (group, o) is output channel group * c_out/groups + o
            per_tap = [tf.reshape(tf.einsum("ntgi,ntgo->nigo", s, g_grouped),
                                  [n, c_in // groups, c_out]) for s in shifted]
        return None, {id(layer.kernel): tf.reshape(tf.stack(per_tap, axis=1),
                                                   [n, *layer.kernel.shape])}
    if groups == 1:
        a_gram = tf.add_n([tf.linalg.matmul(s, s, transpose_b=True) for s in shifted])
        return tf.reduce_sum(a_gram * tf.linalg.matmul(g, g, transpose_b=True), axis=[1, 2]), {}
    a_gram = tf.add_n([tf.einsum("ntgi,nsgi->ngts", s, s) for s in shifted])
    g_gram = tf.einsum("ntgo,nsgo->ngts", g_grouped, g_grouped)
    return tf.reduce_sum(a_gram * g_gram, axis=[1, 2, 3]), {}


def _bias_axis_ambiguous(layer, kind, g):
    """True for a channels-first convolution with a bias whose output's last axis has as many
    entries as it has filters. Keras 3 (3.15.1 here) adds the bias with ``keras.ops.add``,
    which on TensorFlow becomes a channels-LAST ``tf.nn.bias_add`` in that case (the bias is
    added along the last spatial axis: a Keras bug). Such a layer is differentiated as a
    whole, per example, so its gradients are those of what it computes, bug or fix."""
    return (kind == CONV and layer.data_format == "channels_first" and layer.use_bias
            and g.shape[-1] == layer.filters)


def squared_norms(plan, records, grads, n):
    """Per-example squared gradient norms over all planned layers' variables.

    Each Dense or convolution layer is handled in the cheaper of two regimes (Bu et al.
    2023's mixed rule, :func:`_explicit`): ghost norms (the layer's clipped sum then comes from
    its own weighted backward step) or explicit per-example gradients (returned, so the
    clipped sum is their factor-weighted sum and the layer's backward step is skipped).
    Layers planned ``"generic"``, layers called more than once (shared weights, whose later
    calls' inputs depend on their own variables) and channels-first convolutions whose bias
    Keras adds along an ambiguous axis (:func:`_bias_axis_ambiguous`) get per-example
    gradients of their own variables, computed layer-locally, also returned.

    Args:
        plan: from :func:`ghost_plan`.
        records: from :func:`recording`, after the forward pass.
        grads: ``{id(call.target): gradient of the summed loss}`` for every recorded call.
        n: batch size (scalar tensor).

    Returns:
        ``(sq_norms, per_example)``: a float32 tensor of shape ``(n,)`` and
        ``{layer: [per-example gradient (n, *variable.shape) per own variable]}`` (float32,
        in :func:`own_trainable` order) for the layers handled per example.

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
        if kind == GENERIC or len(calls) > 1 or _bias_axis_ambiguous(layer, kind, gs[0]):
            per_example[layer] = _per_example_gradients(layer, kind, calls, gs)
            total += tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [n, -1]), axis=1)
                               for g in per_example[layer]])
            continue
        (call,), (g,) = calls, gs
        variables = own_trainable(layer)
        g = tf.cast(g, tf.float32)
        if kind == EMBEDDING:
            g = _rows(g, n)
            ids = tf.reshape(call.inputs, [n, -1])
            same = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), tf.float32)
            total += tf.reduce_sum(same * tf.einsum("ntd,nsd->nts", g, g), axis=[1, 2])
            continue
        if kind == CONV:
            g = _channels_last(layer, g)
            kernel_sq, explicit = _conv_terms(layer, call, g, n, variables)
        else:
            g = _rows(g, n)
            kernel_sq, explicit = _dense_terms(layer, call, g, n, variables)
        if kernel_sq is not None:
            total += kernel_sq
        bias = getattr(layer, "bias", None)
        if bias is not None and _owns(variables, bias):
            g_sum = tf.reduce_sum(_rows(g, n), axis=1)
            total += tf.reduce_sum(tf.square(g_sum), axis=1)
            if explicit:
                explicit[id(bias)] = g_sum
        if explicit:
            total += tf.add_n([tf.reduce_sum(tf.reshape(tf.square(e), [n, -1]), axis=1)
                               for i, e in explicit.items() if i != id(bias)])
            missing = [v.path for v in variables if id(v) not in explicit]
            if missing:  # e.g. a frozen kernel with a trainable bias is never explicit
                raise RuntimeError(f"ghost: no per-example gradient for {missing}")
            per_example[layer] = [explicit[id(v)] for v in variables]
    return total, per_example


def _per_example_gradients(layer, kind, calls, gs):
    """Per-example gradients of one layer's own variables, by per-example VJPs of that layer
    alone on its recorded inputs (all its calls summed per example). The recorded target is
    the pre-activation for Dense/Conv2D, so their activation is bypassed here."""
    variables = own_trainable(layer)
    pre_activation = kind in (DENSE, CONV)

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
