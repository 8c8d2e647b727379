"""DP-SGD for Keras 3 as a ``fit`` callback (a gradient stage of the training-step hook)."""

from __future__ import annotations

import math
import sys
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_secure.validation import check_choice, check_number
from keras_secure.privacy import ghost
from keras_secure.privacy.accounting import (
    ACCOUNTANTS,
    SAMPLINGS,
    compute_epsilon,
    max_steps_within,
)
from keras_secure.privacy.data import poisson_sampling_of
from keras_secure.privacy.noise import standard_normal
from keras_secure.training.hook import Stage, StageCallback


def _mixing_layers(model):
    """Layers that mix examples within a batch (their per-example gradients are undefined)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


CLIPPINGS = ("auto", "ghost", "vectorized")
_DP_CALLBACKS = "_keras_secure_dpsgd_callbacks"  # on the model: weak references to its DPSGDs


class _DPStage(Stage):
    computes_gradients = True
    needs_labels = True
    log_names = ("clipped_fraction",)

    def __init__(self, l2_norm_clip, noise_multiplier, sampling, batch_size, num_examples,
                 clipping, seed):
        super().__init__()
        self.clip, self.sigma = l2_norm_clip, noise_multiplier
        self.sampling, self.batch_size, self.num_examples = sampling, batch_size, num_examples
        # shuffled fixed batches: each pass over the N examples is `steps_per_pass` batches of
        # `batch_size`, the last one holding `last_size` examples
        self.steps_per_pass = math.ceil(num_examples / batch_size)
        self.last_size = num_examples - (self.steps_per_pass - 1) * batch_size
        self.clipping = clipping
        self.plan = None  # ghost plan {layer: kind} when the ghost path is used
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.fit_start = None  # optimizer.iterations when the current fit began (a variable)

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
        if self.fit_start is None:
            strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
            with strategy.scope():
                self.fit_start = tf.Variable(0, dtype=tf.int64, trainable=False,
                                             name="dpsgd_fit_start")
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

    def _check_batch_size(self, model, global_n):
        """In-graph: shuffled fixed batches must hold ``batch_size`` examples, except the last
        batch of each pass over the ``num_examples`` examples (``last_size``). Counted from the
        start of the current fit with the optimizer's step counter (one step per update)."""
        k = self.steps_per_pass
        position = tf.math.floormod(
            tf.cast(model.optimizer.iterations, tf.int64) - self.fit_start, k)
        expected = tf.where(tf.equal(position, k - 1), tf.constant(self.last_size, tf.int64),
                            tf.constant(self.batch_size, tf.int64))
        observed = tf.cast(global_n, tf.int64)
        return tf.debugging.Assert(tf.equal(observed, expected), [
            "DPSGD(sampling='shuffle'): `batch_size` must be the size of the batches fit trains "
            f"on (fixed batches of batch_size, the last of each pass over num_examples="
            f"{self.num_examples} examples holding {self.last_size}). Declared: batch_size="
            f"{self.batch_size}. Expected", expected, "at position", position,
            f"of the pass (0..{k - 1}). Received: a batch of size", observed,
            "(a pipeline that drops the last partial batch, batch(..., drop_remainder=True), "
            "uses (N // batch_size) * batch_size examples per pass: declare that as "
            "num_examples)"])

    def apply_gradients(self, model, x, y, sample_weight, per_example_loss):
        variables = model.trainable_variables
        n = tf.shape(x)[0]
        weights = (tf.ones([n]) if sample_weight is None
                   else tf.cast(tf.reshape(sample_weight, [-1]), tf.float32))
        clipped_sum = (self._clipped_sum_vectorized if self.plan is None
                       else self._clipped_sum_ghost)

        def nonempty():
            return clipped_sum(model, x, y, weights, per_example_loss, variables)

        def empty():
            # A Poisson batch may be empty: the step is noise only (per-example gradients of
            # zero examples cannot be taken - the Conv2D backprop fails on them).
            y_pred = model(x, training=True)
            losses = per_example_loss(y, y_pred) * weights
            return [tf.zeros(v.shape, tf.float32) for v in variables], y_pred, losses

        summed, y_pred, losses = tf.cond(n > 0, nonempty, empty)
        # Under tf.distribute each replica clips its own examples and Keras sums the replicas'
        # updates, so the noise is drawn on the first replica only (once per global batch; the
        # replica id is global across the workers of a MultiWorkerMirroredStrategy) and every
        # replica divides by the global (expected) batch size.
        context = tf.distribute.get_replica_context()
        distributed = context is not None and context.num_replicas_in_sync > 1
        once = (tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.float32)
                if distributed else 1.0)
        checks = []
        if self.sampling == "poisson":
            denominator = float(self.batch_size)
        else:
            global_n = context.all_reduce("sum", n) if distributed else n
            checks.append(self._check_batch_size(model, global_n))
            denominator = tf.cast(tf.maximum(global_n, 1), tf.float32)
        # one draw for all variables (one random op per step, not one per variable)
        sizes = [int(np.prod(v.shape)) for v in variables]
        noise = tf.split((self.sigma * self.clip) *
                         standard_normal([sum(sizes)], self.seed_generator), sizes)
        with tf.control_dependencies(checks):  # a wrong batch size fails before the update
            updates = [(g + once * tf.reshape(z, v.shape)) / denominator
                       for g, z, v in zip(summed, noise, variables)]
        model.optimizer.apply_gradients(zip(updates, variables))
        return y_pred, losses


def _fit_arguments(model) -> dict | None:
    """The ``x``, ``batch_size`` and ``steps_per_epoch`` arguments of the ``Model.fit`` call
    that is training ``model``, read from the calling frames (a callback is not given the data
    ``fit`` trains on); None when no such call is found (then nothing is assumed about the
    data)."""
    frame = sys._getframe(1)
    try:
        while frame is not None:
            code = frame.f_code
            if code.co_name == "fit" and "x" in code.co_varnames[:code.co_argcount]:
                local = frame.f_locals
                if local.get("self") is model:
                    return {name: local.get(name)
                            for name in ("x", "batch_size", "steps_per_epoch")}
            frame = frame.f_back
        return None
    finally:
        del frame


def _num_rows(x) -> int | None:
    """The number of examples of array-like ``fit`` inputs (None for datasets, generators)."""
    if x is None:
        return None
    leaves = keras.tree.flatten(x)
    shapes = [getattr(leaf, "shape", None) for leaf in leaves]
    if not leaves or any(shape is None or len(shape) == 0 for shape in shapes):
        return None
    return int(shapes[0][0])


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

    The accounting must match how ``fit`` really makes the batches; DPSGD checks it before the
    first step is applied (see ``sampling``):

    - ``sampling="poisson"`` (the default) accepts only a dataset returned by
      :func:`keras_secure.privacy.poisson_batches` (passed to ``fit`` as ``x``, untransformed),
      whose ``num_examples`` and expected ``batch_size`` must equal the declared ones. Anything
      else (arrays, another ``tf.data.Dataset``) is refused at the start of ``fit`` with a
      ``ValueError`` naming both ways out: train on ``poisson_batches``, or declare
      ``sampling="shuffle"``.
    - ``sampling="shuffle"`` accounts ordinary shuffled fixed-size batches without claiming
      subsampling amplification (a valid, larger epsilon). A ``poisson_batches`` dataset is
      refused. Array inputs must hold ``num_examples`` examples and ``fit``'s ``batch_size``
      must equal the declared one (``ValueError`` at the start of ``fit``); for any input, each
      step checks in the graph that its batch holds ``batch_size`` examples (the last batch of
      each pass over the data: ``num_examples - (ceil(N / batch_size) - 1) * batch_size``),
      else the step fails before its update with ``tf.errors.InvalidArgumentError``.

    A Poisson batch may be empty: that step applies noise only (divided by the expected batch
    size, like every Poisson step) and adds nothing to the ``loss``, metric and
    ``clipped_fraction`` logs (weight 0; an epoch whose batches were all empty logs 0).

    Under ``tf.distribute`` (``MirroredStrategy``, and ``MultiWorkerMirroredStrategy`` after
    :func:`keras_secure.distributed.prepare_model`) each replica clips its own examples, the
    optimizer sums the replicas' clipped sums, the noise is drawn once per global batch (on the
    first replica of the first worker) and the sum is divided by the global (expected) batch
    size; ``batch_size`` and ``num_examples`` are the global ones, and epsilon counts global
    steps. The update therefore has the same distribution as on one device (tested on two
    logical CPUs and on a two-worker loopback cluster, docs/training.md).

    Not supported (refused with a clear error): BatchNormalization (it mixes examples; never
    supportable) and mixed-precision loss scaling.

    Args:
        l2_norm_clip: clipping norm C > 0.
        noise_multiplier: sigma >= 0 (0: clipping only, epsilon = inf).
        num_examples: training-set size N (needed by the accountant).
        batch_size: the (expected) batch size, 1..N.
        delta: in (0, 1), typically < 1 / N.
        target_epsilon: stop before epsilon exceeds it; None trains all epochs. A budget that
            does not allow a single step is refused at the start of ``fit``. Defaults to None.
        accountant: ``"rdp"`` or ``"pld"``. Defaults to ``"rdp"``.
        sampling: how the batches are made: ``"poisson"`` (by
            :func:`keras_secure.privacy.poisson_batches`; Poisson-subsampled accounting) or
            ``"shuffle"`` (fixed-size batches, each example once per pass; no amplification).
            Checked against the data ``fit`` trains on. Defaults to ``"poisson"``.
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
            loss scaling, a second gradient stage, data that does not match ``sampling``,
            ``num_examples`` or ``batch_size``, ``target_epsilon`` smaller than one step (or
            already spent), or ``target_epsilon`` with ``steps_per_execution > 1``.
        tf.errors.InvalidArgumentError: at a step, for a fixed batch whose size is not the
            declared ``batch_size`` (``sampling="shuffle"``), before its update.

    Example:
        >>> ds, steps = ks.privacy.poisson_batches(x, y, batch_size=64, seed=0)
        >>> model.fit(ds, steps_per_epoch=steps, epochs=20, callbacks=[ks.callbacks.DPSGD(
        ...     1.0, 1.1, num_examples=len(x), batch_size=64, delta=1e-5, target_epsilon=3.0)])
        >>> # ordinary shuffled batches: declare them (a larger, honest epsilon)
        >>> model.fit(x, y, batch_size=64, epochs=20, callbacks=[ks.callbacks.DPSGD(
        ...     1.0, 1.1, num_examples=len(x), batch_size=64, delta=1e-5, sampling="shuffle")])

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
        self.steps_done = 0  # DP steps applied with this callback, over all fits
        self.passes_done = 0  # "shuffle": passes over the data those steps touched
        self.max_steps = None
        self._fit = None  # (optimizer.iterations, steps_done, passes_done) at the fit's start
        self._fit_max_steps = None  # steps the budget allows in the current fit
        super().__init__(_DPStage(self.l2_norm_clip, self.noise_multiplier, self.sampling,
                                  self.batch_size, self.num_examples, self.clipping, seed))

    @property
    def steps_per_pass(self) -> int:
        """``ceil(num_examples / batch_size)``: fixed-size batches per pass over the data."""
        return self.stage.steps_per_pass

    def epsilon(self, steps: int | None = None) -> float:
        """Epsilon at ``delta``.

        Args:
            steps: a number of steps of one run from the start (for ``"shuffle"``, of
                ``ceil(steps / steps_per_pass)`` passes). None: what was trained so far with
                this callback (for ``"shuffle"``: the passes over the data its fits touched; a
                fit starts a new pass). Defaults to None.

        Returns:
            Epsilon (``inf`` for a noise multiplier of 0 after at least one step).

        Example:
            >>> dp.epsilon(), dp.epsilon(steps=1000)
        """
        if steps is None:
            steps = (self.passes_done * self.steps_per_pass if self.sampling == "shuffle"
                     else self.steps_done)
        if self.noise_multiplier == 0:
            return math.inf if steps else 0.0
        return compute_epsilon(self.noise_multiplier, self.num_examples, self.batch_size,
                               steps=steps, delta=self.delta, sampling=self.sampling,
                               accountant=self.accountant)

    # -- before the first step: the data and the budget ----------------------------------------
    def _check_data(self, fit):
        x = None if fit is None else fit["x"]
        source = poisson_sampling_of(x)
        declared = (f"DPSGD(num_examples={self.num_examples}, batch_size={self.batch_size}, "
                    f"sampling={self.sampling!r})")
        if self.sampling == "poisson":
            if source is None:
                what = ("data that could not be identified (no Model.fit call found)"
                        if fit is None else f"{type(x).__name__} data")
                raise ValueError(
                    f"{declared} accounts Poisson-sampled batches, but fit is training on "
                    f"{what}, which is not known to be Poisson-sampled: claiming the Poisson "
                    "epsilon for it would overstate the privacy. Either make the batches with "
                    f"keras_secure.privacy.poisson_batches(x, y, batch_size={self.batch_size}) "
                    "and pass that dataset (untransformed) to fit with steps_per_epoch, or "
                    "declare sampling='shuffle' to account shuffled fixed-size batches (no "
                    "subsampling amplification: a larger epsilon). "
                    f"Received: sampling='poisson', x={type(x).__name__}")
            for name, observed in (("num_examples", source.num_examples),
                                   ("batch_size", source.batch_size)):
                if getattr(self, name) != observed:
                    raise ValueError(
                        f"`{name}` must be the one of the poisson_batches dataset fit trains "
                        f"on ({observed}). Received: {name}={getattr(self, name)}")
            return
        if source is not None:
            raise ValueError(
                f"{declared} accounts fixed-size batches, but fit is training on a "
                "poisson_batches dataset (variable batches, an example may join several "
                "batches of a pass). Declare sampling='poisson' for it. "
                "Received: sampling='shuffle'")
        rows = _num_rows(x)
        if rows is not None and rows != self.num_examples:
            raise ValueError(
                "`num_examples` must be the number of examples fit trains on "
                f"({rows}). Received: num_examples={self.num_examples}")
        if rows is not None:
            batch = fit["batch_size"]
            if batch is None and fit["steps_per_epoch"] is None:
                batch = 32  # Keras' default for arrays
            if isinstance(batch, int) and min(batch, rows) != self.batch_size:
                raise ValueError(
                    "`batch_size` must be the size of the batches fit trains on "
                    f"(fit(batch_size={fit['batch_size']}) makes batches of "
                    f"{min(batch, rows)}). Received: batch_size={self.batch_size}")

    def _budget(self):
        """Steps the budget allows in this fit (None: no budget); raises if not one."""
        if self.target_epsilon is None:
            return None
        if getattr(self.model, "steps_per_execution", 1) > 1:
            raise ValueError(
                "DPSGD with `target_epsilon` stops training between train-function calls; "
                "with several steps per call it could overrun the budget. Compile with "
                "steps_per_execution=1. Received: steps_per_execution="
                f"{self.model.steps_per_execution}")
        self.max_steps = max_steps_within(
            self.target_epsilon, self.noise_multiplier, self.num_examples, self.batch_size,
            delta=self.delta, sampling=self.sampling, accountant=self.accountant)
        if self.max_steps == 0:
            raise ValueError(
                f"`target_epsilon` is below the epsilon of a single DP-SGD step: one step "
                f"(noise_multiplier={self.noise_multiplier:g}, num_examples="
                f"{self.num_examples}, batch_size={self.batch_size}, sampling="
                f"{self.sampling!r}) costs epsilon {self.epsilon(1):.4g} at delta="
                f"{self.delta:g}, so no step can be trained. Raise noise_multiplier "
                "(keras_secure.privacy.noise_multiplier_for calibrates it) or target_epsilon. "
                f"Received: target_epsilon={self.target_epsilon:g}")
        if self.sampling == "shuffle":
            allowed = (self.max_steps // self.steps_per_pass - self.passes_done) * \
                self.steps_per_pass
        else:
            allowed = self.max_steps - self.steps_done
        if allowed <= 0:
            raise ValueError(
                f"The privacy budget of this DPSGD callback is spent: epsilon is already "
                f"{self.epsilon():.4g} at delta={self.delta:g} after {self.steps_done} steps, "
                "and one more step would exceed it. Use a new callback only for a new "
                f"training run. Received: target_epsilon={self.target_epsilon:g}")
        return allowed

    def on_train_begin(self, logs=None):
        self._check_data(_fit_arguments(self.model))
        self._fit_max_steps = self._budget()
        # The model remembers the DPSGD callbacks that trained it: a new callback accounts only
        # its own steps, so training the same model on with a new one would restart epsilon.
        earlier = [c() for c in getattr(self.model, _DP_CALLBACKS, [])
                   if c() not in (None, self) and c().steps_done]
        if earlier:
            spent = ", ".join(f"{c.epsilon():.3f} at delta={c.delta:g}" for c in earlier)
            warnings.warn(
                f"This model was already trained with another DPSGD callback (epsilon "
                f"{spent}). The epsilon this callback logs "
                "covers its own steps only; on the same examples the privacy costs compose. "
                "To account a whole training, pass the same DPSGD callback to every fit call.",
                UserWarning, stacklevel=2)
        registry = [c for c in getattr(self.model, _DP_CALLBACKS, []) if c() is not None]
        if not any(c() is self for c in registry):
            registry.append(weakref.ref(self))
        object.__setattr__(self.model, _DP_CALLBACKS, registry)
        iterations = int(self.model.optimizer.iterations.numpy())
        self.stage.fit_start.assign(iterations)
        self._fit = (iterations, self.steps_done, self.passes_done)

    def _update_counts(self):
        iterations, steps, passes = self._fit
        fit_steps = int(self.model.optimizer.iterations.numpy()) - iterations
        self.steps_done = steps + fit_steps
        self.passes_done = passes + math.ceil(fit_steps / self.steps_per_pass)
        return fit_steps

    def on_train_batch_end(self, batch, logs=None):
        if self._fit_max_steps is None:
            return  # no budget to enforce: counted at each epoch's end, no host wait per step
        fit_steps = self._update_counts()
        if self._fit_max_steps is not None and fit_steps >= self._fit_max_steps:
            if not self.model.stop_training:
                print(f"DPSGD: stopping after {self.steps_done} steps: one more step would "
                      f"exceed target_epsilon={self.target_epsilon} (epsilon now "
                      f"{self.epsilon():.3f} at delta={self.delta}).")
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self._update_counts()  # a fit stopped inside an epoch
        super().on_train_end(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._update_counts()
        if logs is not None:
            logs["epsilon"] = self.epsilon()
