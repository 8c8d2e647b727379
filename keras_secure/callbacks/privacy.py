"""DP-SGD for Keras 3 as a ``fit`` callback (a gradient stage of the training-step hook)."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_secure.attacks.base import check_choice, check_number
from keras_secure.privacy import ghost
from keras_secure.privacy.accounting import (
    ACCOUNTANTS,
    SAMPLINGS,
    compute_epsilon,
    max_steps_within,
)
from keras_secure.training.hook import Stage, StageCallback


def _mixing_layers(model):
    """Layers that mix examples within a batch (their per-example gradients are undefined)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


CLIPPINGS = ("auto", "ghost", "vectorized")


class _DPStage(Stage):
    computes_gradients = True
    needs_labels = True
    log_names = ("clipped_fraction",)

    def __init__(self, l2_norm_clip, noise_multiplier, sampling, batch_size, clipping, seed):
        super().__init__()
        self.clip, self.sigma = l2_norm_clip, noise_multiplier
        self.sampling, self.batch_size = sampling, batch_size
        self.clipping = clipping
        self.plan = None  # ghost plan {layer: kind} when the ghost path is used
        self.seed_generator = keras.random.SeedGenerator(seed)

    def check_model(self, model):
        if not model.trainable_variables:
            raise ValueError(
                "DPSGD needs the model's variables before training starts (the update is "
                "clipped and noised over all of them), but the model has none yet. Build it "
                "first: start it with keras.Input, or call it on a batch (a subclassed "
                "model's build(input_shape) may create none).")
        mixing = _mixing_layers(model)
        if mixing:
            raise ValueError(
                "DP-SGD needs per-example gradients, but the model has layers that mix the "
                f"examples of a batch: {[layer.name for layer in mixing]} (BatchNormalization). "
                "Use LayerNormalization or GroupNormalization instead.")
        if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError("DPSGD does not support loss scaling (mixed_float16) yet: clip and "
                             "noise are computed in float32. Use the float32 policy.")
        if getattr(model, "jit_compile", False):
            warnings.warn(
                "DPSGD with jit_compile=True: on CPU, XLA made the DP step 9-37x slower than "
                "without it in benchmarks/privacy.py (see docs/performance.md); compile with "
                "jit_compile=False unless you measured otherwise on your hardware.",
                UserWarning, stacklevel=2)
        self.plan = None
        if self.clipping != "vectorized":
            plan, problems = ghost.ghost_plan(model)
            if problems and self.clipping == "ghost":
                raise ValueError(
                    "DPSGD(clipping='ghost') cannot compute per-example gradient norms of this "
                    f"model layer by layer: {'; '.join(problems)}. Use clipping='auto' (falls "
                    "back to whole-model per-example gradients) or 'vectorized'.")
            self.plan = None if problems else plan

    def _factors(self, sq_norms):
        norms = tf.sqrt(sq_norms)
        self.record("clipped_fraction", tf.cast(norms > self.clip, tf.float32))
        return 1.0 / tf.maximum(1.0, norms / self.clip)

    def _clipped_sum_vectorized(self, model, x, y, weights, per_example_loss, variables):
        """Whole-model per-example gradients (tf.vectorized_map), clipped and summed."""
        n = tf.shape(x)[0]

        def one_example(inputs):
            xi, yi, wi = inputs
            with tf.GradientTape() as tape:
                pred = model(xi[tf.newaxis], training=True)
                loss = per_example_loss(yi[tf.newaxis], pred)[0] * wi
            return (tape.gradient(loss, variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO),
                    pred[0], loss)

        grads, y_pred, losses = tf.vectorized_map(one_example, (x, y, weights))
        flat = [tf.reshape(g, [n, -1]) for g in grads]
        factors = self._factors(tf.add_n([tf.reduce_sum(tf.square(g), axis=1) for g in flat]))
        summed = [tf.reshape(tf.tensordot(factors, g, axes=1), tf.shape(v))
                  for g, v in zip(flat, variables)]
        return summed, y_pred, losses

    def _clipped_sum_ghost(self, model, x, y, weights, per_example_loss, variables):
        """One batched forward pass; per-example norms from the layers' inputs and output
        gradients (ghost norms); the clipped sum from each layer's own last step, with output
        gradients weighted by the clip factors (book-keeping)."""
        n = tf.shape(x)[0]
        with tf.GradientTape(persistent=True) as tape:
            with ghost.recording(self.plan, tape) as records:
                y_pred = model(x, training=True)
            losses = per_example_loss(y, y_pred) * weights
            total = tf.reduce_sum(losses)
        calls = [(layer, c) for layer, layer_calls in records.items() for c in layer_calls
                 if c.target is not None]
        output_grads = tape.gradient(total, [c.target for _, c in calls],
                                     unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads = {id(c.target): g for (_, c), g in zip(calls, output_grads)}
        sq_norms, per_example = ghost.squared_norms(self.plan, records, grads, n)
        factors = tf.stop_gradient(self._factors(sq_norms))
        summed = {}
        for layer, layer_grads in per_example.items():
            for v, g in zip(ghost.own_trainable(layer), layer_grads):
                summed[id(v)] = tf.tensordot(factors, g, axes=1)
        for layer, c in calls:
            if layer in per_example:
                continue
            g = grads[id(c.target)]
            weighted = g * tf.reshape(tf.cast(factors, g.dtype),
                                      [-1] + [1] * (g.shape.rank - 1))
            own = ghost.own_trainable(layer)
            parts = tape.gradient(c.target, own, output_gradients=weighted,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            summed.update((id(v), tf.convert_to_tensor(p)) for v, p in zip(own, parts))
        del tape
        return [summed[id(v)] for v in variables], y_pred, losses

    def apply_gradients(self, model, x, y, sample_weight, per_example_loss):
        variables = model.trainable_variables
        n = tf.shape(x)[0]
        weights = (tf.ones([n]) if sample_weight is None
                   else tf.cast(tf.reshape(sample_weight, [-1]), tf.float32))
        clipped_sum = (self._clipped_sum_vectorized if self.plan is None
                       else self._clipped_sum_ghost)
        summed, y_pred, losses = clipped_sum(model, x, y, weights, per_example_loss, variables)
        # Under tf.distribute each replica clips its own examples and Keras sums the replicas'
        # updates, so the noise is drawn on the first replica only (once per global batch) and
        # every replica divides by the global (expected) batch size.
        context = tf.distribute.get_replica_context()
        distributed = context is not None and context.num_replicas_in_sync > 1
        once = (tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.float32)
                if distributed else 1.0)
        if self.sampling == "poisson":
            denominator = float(self.batch_size)
        else:
            global_n = context.all_reduce("sum", n) if distributed else n
            denominator = tf.cast(tf.maximum(global_n, 1), tf.float32)
        # one draw for all variables (one random op per step, not one per variable)
        sizes = [int(np.prod(v.shape)) for v in variables]
        noise = tf.split(keras.random.normal([sum(sizes)], stddev=self.sigma * self.clip,
                                             seed=self.seed_generator), sizes)
        updates = [(g + once * tf.reshape(z, v.shape)) / denominator
                   for g, z, v in zip(summed, noise, variables)]
        model.optimizer.apply_gradients(zip(updates, variables))
        return y_pred, losses


class DPSGD(StageCallback):
    """Differentially private SGD for Keras 3 models (Abadi et al. 2016), as a ``fit`` callback.

    Replaces the gradient of each training step: per-example gradients of the compiled loss are
    computed without a Python loop over examples (by default with ghost norms where the layers
    allow, else ``tf.vectorized_map``; see ``clipping``), each clipped to
    L2 norm ``l2_norm_clip`` over all trainable variables jointly, summed, given Gaussian noise
    of std ``noise_multiplier * l2_norm_clip`` once per batch, and divided by the expected batch
    size (``sampling="poisson"``) or the batch size (``"shuffle"``); the model's own optimizer
    (any Keras optimizer) applies the result. ``epsilon`` (at ``delta``, with ``dp_accounting``'s
    RDP or PLD accountant) is written into ``logs`` every epoch, with the running mean
    ``clipped_fraction`` of clipped examples. With ``target_epsilon`` training stops (``model.
    stop_training``) after the last step that keeps epsilon within it, and says so.

    Sampling honesty (see ``keras_secure.privacy.accounting``): ``sampling="poisson"`` assumes
    Poisson-sampled batches - train on :func:`keras_secure.privacy.poisson_batches`;
    ``"shuffle"`` accounts ordinary shuffled fixed-size batches without claiming subsampling
    amplification (a valid, larger epsilon).

    Under ``tf.distribute`` (e.g. ``MirroredStrategy``) each replica clips its own examples and
    the noise is drawn once per global batch (on the first replica), so the update has the same
    distribution as on one device.

    Not supported (refused with a clear error): BatchNormalization (it mixes examples; never
    supportable) and mixed-precision loss scaling.

    Args:
        l2_norm_clip: clipping norm C > 0.
        noise_multiplier: sigma >= 0 (0: clipping only, epsilon = inf).
        num_examples: training-set size N (needed by the accountant).
        batch_size: the (expected) batch size, 1..N.
        delta: in (0, 1), typically < 1 / N.
        target_epsilon: stop before epsilon exceeds it; None trains all epochs. Defaults to
            None.
        accountant: ``"rdp"`` or ``"pld"``. Defaults to ``"rdp"``.
        sampling: ``"poisson"`` or ``"shuffle"``. Defaults to ``"poisson"``.
        clipping: how per-example gradient norms are obtained. ``"ghost"``: from one batched
            forward/backward pass without materializing per-example gradients (Dense, Conv2D
            and Embedding exactly; other single-input leaf layers by per-example gradients of
            that layer alone; see :mod:`keras_secure.privacy.ghost`), then the last backward
            step of each layer weighted by the clip factors; refused at ``fit`` for models it
            cannot cover.
            ``"vectorized"``: whole-model per-example gradients with ``tf.vectorized_map``.
            ``"auto"``: ghost when it covers the model, else vectorized. Both give the same
            clipped gradient (tested). Defaults to ``"auto"``.
        seed: seed of the noise. Defaults to None.

    Raises:
        ValueError / TypeError: for arguments out of range; at ``fit``, for BatchNormalization,
            loss scaling, or a second gradient stage.

    Example:
        >>> ds, steps = ks.privacy.poisson_batches(x, y, batch_size=64, seed=0)
        >>> model.fit(ds, steps_per_epoch=steps, epochs=20, callbacks=[ks.callbacks.DPSGD(
        ...     1.0, 1.1, num_examples=len(x), batch_size=64, delta=1e-5, target_epsilon=3.0)])

    References:
        Abadi et al. (2016), "Deep Learning with Differential Privacy", CCS; Mironov, Talwar &
        Zhang (2019), "Renyi Differential Privacy of the Sampled Gaussian Mechanism".
    """

    def __init__(self, l2_norm_clip: float, noise_multiplier: float, *, num_examples: int,
                 batch_size: int, delta: float, target_epsilon: float | None = None,
                 accountant: str = "rdp", sampling: str = "poisson", clipping: str = "auto",
                 seed: int | None = None):
        self.l2_norm_clip = check_number("l2_norm_clip", l2_norm_clip, low=0.0,
                                         low_inclusive=False)
        self.noise_multiplier = check_number("noise_multiplier", noise_multiplier, low=0.0)
        self.num_examples = check_number("num_examples", num_examples, low=1, integer=True)
        self.batch_size = check_number("batch_size", batch_size, low=1, high=self.num_examples,
                                       integer=True)
        self.delta = check_number("delta", delta, low=0.0, high=1.0, low_inclusive=False,
                                  high_inclusive=False)
        self.target_epsilon = check_number("target_epsilon", target_epsilon, low=0.0,
                                           low_inclusive=False, allow_none=True)
        self.accountant = check_choice("accountant", accountant, ACCOUNTANTS)
        self.sampling = check_choice("sampling", sampling, SAMPLINGS)
        self.clipping = check_choice("clipping", clipping, CLIPPINGS)
        if self.target_epsilon is not None and self.noise_multiplier == 0:
            raise ValueError("`target_epsilon` cannot be met without noise. "
                             "Received: noise_multiplier=0")
        self.steps_done = 0
        self.max_steps = None
        super().__init__(_DPStage(self.l2_norm_clip, self.noise_multiplier, self.sampling,
                                  self.batch_size, self.clipping, seed))

    def epsilon(self, steps: int | None = None) -> float:
        """Epsilon at ``delta`` after ``steps`` steps (default: the steps trained so far)."""
        steps = self.steps_done if steps is None else steps
        if self.noise_multiplier == 0:
            return math.inf if steps else 0.0
        return compute_epsilon(self.noise_multiplier, self.num_examples, self.batch_size,
                               steps=steps, delta=self.delta, sampling=self.sampling,
                               accountant=self.accountant)

    def on_train_begin(self, logs=None):
        if self.target_epsilon is not None:
            self.max_steps = max_steps_within(
                self.target_epsilon, self.noise_multiplier, self.num_examples, self.batch_size,
                delta=self.delta, sampling=self.sampling, accountant=self.accountant)
            if self.steps_done >= self.max_steps:
                self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done += 1
        if self.max_steps is not None and self.steps_done >= self.max_steps:
            if not self.model.stop_training:
                print(f"DPSGD: stopping after {self.steps_done} steps: one more step would "
                      f"exceed target_epsilon={self.target_epsilon} (epsilon now "
                      f"{self.epsilon():.3f} at delta={self.delta}).")
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epsilon"] = self.epsilon()
