"""The training-step hook: the one mechanism by which callbacks change what ``model.fit`` does
per batch (docs/architecture.md, "The training-step hook").

A callback owns a :class:`Stage` and calls :func:`attach` in ``set_model``. While a ``fit``
with attached stages runs, the model's step is, in one ``tf.function``:

1. **batch stages** map ``(x, y, sample_weight) -> (x', y', sample_weight')`` (adversarial
   example generation, backdoor injection);
2. the model's *own* ``train_step`` runs on the transformed batch - so the compiled loss and
   metrics, loss scaling for mixed precision and ``tf.distribute`` reductions are Keras' own -
   with **loss stages** adding terms to ``compute_loss`` (training only; validation losses are
   untouched);
3. a **gradient stage** (at most one; DP-SGD) replaces step 2 by its own computation of the
   update from per-example losses (see :class:`Stage.apply_gradients`).

Stages add running means to the ``logs`` dict (``adv_loss``, ``trades_kl``, ...). The hook is
installed when ``fit`` builds its train function and removed in ``on_train_end``; if ``fit``
raises (Keras then skips ``on_train_end``), the next ``fit``/``make_train_function`` without the
stages removes it before building, so no training step is ever silently altered.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_ATTR = "_keras_secure_hook"


class Stage:
    """A piece of a training step contributed by a callback.

    Subclasses set the flags of what they do, ``needs_labels`` and ``log_names``, and implement
    the matching methods. All methods run inside the traced training step and must use
    TensorFlow ops only. ``log_names`` lists the scalar logs the stage reports through
    :meth:`record`; the hook keeps a running mean of each over the epoch.

    - ``transforms_batch``: ``transform(model, x, y, sample_weight) -> (x, y, sample_weight)``.
    - ``adds_loss``: ``loss(model, x, y, y_pred, sample_weight, base_loss) -> scalar`` added to
      the compiled loss (``base_loss`` is the compiled loss of the batch without the model's
      regularization losses, unscaled by replicas: a stage may subtract it to replace the
      compiled loss while keeping the regularization).
    - ``computes_gradients`` (at most one per model; DP-SGD):
      ``apply_gradients(model, x, y, sample_weight, per_example_loss) -> (y_pred, losses)``
      computes and applies the update itself and returns the predictions and per-example
      losses (for the metrics and the ``loss`` log); ``per_example_loss(y, y_pred,
      sample_weight)`` gives the compiled loss of each example
      (:meth:`TrainingHook.per_example_loss`).

    Example:
        >>> class FlipLabels(Stage):           # a poisoning experiment: a batch stage
        ...     transforms_batch = True
        ...     def transform(self, model, x, y, sample_weight):
        ...         return x, 9 - y, sample_weight
        >>> model.fit(x, y, callbacks=[StageCallback(FlipLabels())])
    """

    transforms_batch = False
    adds_loss = False
    computes_gradients = False
    needs_labels = True
    log_names: tuple[str, ...] = ()

    def __init__(self):
        self._hook = None

    def record(self, name: str, value) -> None:
        """Add ``value`` (a scalar tensor: a mean over the batch) to the running mean logged as
        ``name``, weighted by the batch's number of examples."""
        self._hook.record(name, value)

    def check_model(self, model) -> None:
        """Raise a clear error if the stage cannot work with ``model`` (called at attach)."""

    def context(self) -> dict:
        """A dict shared by the stages within one training step (e.g. a batch stage leaves
        ``x_adv`` for its loss stage)."""
        return self._hook.step_context

    def on_epoch_begin(self, epoch: int) -> None:
        """Called before each epoch (e.g. to update an eps schedule)."""

    def on_train_batch_begin(self, batch: int) -> None:
        """Called before each batch."""


class TrainingHook:
    """The stages attached to one model, and the installed step. Use :func:`attach`.

    Example:
        >>> hook = attach(model, stage)
        >>> [type(s).__name__ for s in hook.stages]
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.stages: list[Stage] = []
        self.step_context: dict = {}
        self._trackers: dict[str, keras.metrics.Mean] = {}
        self._installed = False
        self._pending = False
        self._fresh: set[int] = set()  # stages attached for the coming fit
        self._original_make = model.make_train_function
        model.make_train_function = self._make_train_function

    # -- attaching --------------------------------------------------------------------------
    def add(self, stage: Stage) -> None:
        if not isinstance(stage, Stage):
            raise TypeError(f"`stage` must be a keras_secure Stage. Received: {stage!r}")
        self._fresh.add(id(stage))
        if stage in self.stages:
            self._pending = True
            return
        if stage.computes_gradients:
            others = [s for s in self.stages
                      if s.computes_gradients and id(s) in self._fresh]
            if others:
                raise ValueError(
                    "At most one gradient stage can change a training step; "
                    f"{stage_name(others[0])} is attached already and "
                    f"{stage_name(stage)} is another. Received: two gradient stages")
        stage.check_model(self.model)
        stage._hook = self
        self.stages.append(stage)
        self._pending = True
        with self._scope():
            for name in stage.log_names:
                if name not in self._trackers:
                    self._trackers[name] = keras.metrics.Mean(name=name)

    def remove(self, stage: Stage) -> None:
        if stage in self.stages:
            self.stages.remove(stage)
        if not self.stages:
            self.uninstall()

    def _scope(self):
        strategy = getattr(self.model, "distribute_strategy", None)
        return strategy.scope() if strategy is not None else tf.init_scope()

    # -- installing -------------------------------------------------------------------------
    def _make_train_function(self, force=False):
        if self._pending and self.stages:
            # Only the stages attached for this fit count (a fit that raised leaves its own).
            self.stages = [s for s in self.stages if id(s) in self._fresh]
            self._pending = False
            self._fresh = set()
            self.install()
            return self._original_make(force=True)
        if self._installed:  # a fit without our callbacks (the last one raised): restore
            self.uninstall()
            return self._original_make(force=True)
        return self._original_make(force=force)

    def install(self) -> None:
        model = self.model
        if "train_step" not in model.__dict__:
            self._original_step = model.train_step
            self._original_compute_loss = model.compute_loss
            model.train_step = self._train_step
            model.compute_loss = self._compute_loss
        model.train_function = None
        self._installed = True

    def uninstall(self) -> None:
        model = self.model
        if self._installed:
            model.__dict__.pop("train_step", None)
            model.__dict__.pop("compute_loss", None)
            model.train_function = None
            self._installed = False

    def detach(self) -> None:
        """Remove the hook entirely (restores ``make_train_function``)."""
        self.uninstall()
        self.model.__dict__.pop("make_train_function", None)
        if self.model.__dict__.get(_ATTR) is self:
            del self.model.__dict__[_ATTR]

    # -- logs -------------------------------------------------------------------------------
    def record(self, name, value):
        # Weighted by the batch's number of examples, as Keras weights its own `loss` log: an
        # epoch's log is then the mean over examples, also when the last batch is smaller.
        # (a stage's transform called outside a training step, as in tests, weighs 1)
        count = self.step_context.get("batch_size", tf.constant(1.0))
        mean = tf.reduce_mean(tf.cast(value, tf.float32))
        # an empty (Poisson) batch adds nothing; its mean would be NaN, and NaN * 0 is NaN
        self._trackers[name].update_state(tf.where(count > 0, mean, 0.0), sample_weight=count)

    def reset_logs(self):
        for tracker in self._trackers.values():
            tracker.reset_state()

    # -- the step ---------------------------------------------------------------------------
    def _stages(self, flag):
        return [s for s in self.stages if getattr(s, flag)]

    def _train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self.step_context = {
            "batch_size": tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], tf.float32)}
        if y is None and any(s.needs_labels for s in self.stages):
            needing = [stage_name(s) for s in self.stages if s.needs_labels]
            verb = "needs" if len(needing) == 1 else "need"
            raise ValueError(f"{', '.join(needing)} {verb} labels, but the training data has "
                             "none (fit was given x without y).")
        for stage in self._stages("transforms_batch"):
            x, y, sample_weight = stage.transform(self.model, x, y, sample_weight)
        gradient = self._stages("computes_gradients")
        if gradient:
            y_pred, losses = gradient[0].apply_gradients(self.model, x, y, sample_weight,
                                                         self.per_example_loss)
            tracker = getattr(self.model, "_loss_tracker", None)  # Keras' "loss" log
            if tracker is not None:  # weighted by the batch size: an empty batch adds nothing
                count = tf.shape(losses)[0]
                tracker.update_state(
                    tf.math.divide_no_nan(tf.reduce_sum(losses), tf.cast(count, losses.dtype)),
                    sample_weight=count)
            logs = self.model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        else:
            data = (x, y) if sample_weight is None else (x, y, sample_weight)
            logs = self._original_step(data)
        logs = dict(logs)
        for name, tracker in self._trackers.items():
            logs[name] = tracker.result()
        return logs

    def _compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Keras's total loss is the compiled loss plus the model's own losses (regularizers,
        # add_loss). Stages are given the compiled part alone, so that a stage that replaces
        # it (distillation's (1 - alpha), the policy gradient's surrogate) leaves the
        # regularization untouched.
        regularization = _regularization(self.model)
        if y is None and training and self._stages("adds_loss"):
            # No labels (e.g. distillation on unlabeled data): the compiled loss cannot be
            # computed, the loss stages provide the rest of the loss.
            loss = regularization
            compiled = tf.constant(0.0)
        else:
            loss = self._original_compute_loss(x=x, y=y, y_pred=y_pred,
                                               sample_weight=sample_weight, training=training)
            compiled = loss - tf.cast(regularization, loss.dtype)
        if training:
            # Keras scales the compiled loss by 1 / replicas; stages see and add unscaled values.
            replicas = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)
            base = tf.cast(compiled, loss.dtype) * replicas
            for stage in self._stages("adds_loss"):
                extra = stage.loss(self.model, x, y, y_pred, sample_weight, base)
                loss = loss + tf.cast(extra, loss.dtype) / replicas
        return loss

    def per_example_loss(self, y, y_pred, sample_weight=None):
        """The compiled loss of each example, shape ``(batch,)`` (for gradient stages)."""
        loss_fn = self.model.loss
        if loss_fn is None:
            raise ValueError("The model was compiled without a loss.")
        loss_fn = keras.losses.get(loss_fn)
        values = loss_fn.call(y, y_pred) if isinstance(loss_fn, keras.losses.Loss) else \
            loss_fn(y, y_pred)
        values = tf.reshape(values, [tf.shape(values)[0], -1])
        values = tf.reduce_mean(values, axis=1)
        if sample_weight is not None:
            values = values * tf.cast(tf.reshape(sample_weight, [-1]), values.dtype)
        return values


def stage_name(stage: Stage) -> str:
    """The name users know a stage by: its callback's class name (``DPSGD``,
    ``BackdoorInjection``), else its own class name."""
    return getattr(stage, "callback_name", None) or type(stage).__name__.lstrip("_")


def _regularization(model) -> tf.Tensor:
    """The sum of the model's own losses (regularizers, ``add_loss``), as Keras adds them."""
    losses = model.losses
    if not losses:
        return tf.constant(0.0)
    return tf.add_n([tf.cast(tf.reduce_sum(v), tf.float32) for v in losses])


def attach(model, stage: Stage) -> TrainingHook:
    """Attach ``stage`` to ``model``'s training-step hook (creating the hook once).

    Validates at once (before any training): the model must be a compiled Keras 3 model on the
    TensorFlow backend, and at most one gradient stage may be attached.

    Args:
        model: the ``keras.Model`` passed to the callback's ``set_model``.
        stage: the callback's :class:`Stage`.

    Returns:
        The model's :class:`TrainingHook`.

    Raises:
        TypeError: if ``model`` is not a Keras 3 model.
        ValueError: if it is not compiled, or a second gradient stage is attached.

    Example:
        >>> class MyCallback(keras.callbacks.Callback):
        ...     def set_model(self, model):
        ...         super().set_model(model)
        ...         attach(model, self.stage)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras 3 keras.Model. Received: model={model!r}")
    if keras.backend.backend() != "tensorflow":  # pragma: no cover - guarded at import
        raise ValueError("keras_secure training stages need the TensorFlow backend.")
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"{stage_name(stage)} needs a compiled model: call model.compile(optimizer, "
            "loss, ...) before fit. Received: an uncompiled model")
    hook = model.__dict__.get(_ATTR)
    if hook is None:
        hook = TrainingHook(model)
        model.__dict__[_ATTR] = hook
    hook.add(stage)
    return hook


def hook_of(model) -> TrainingHook | None:
    """The model's :class:`TrainingHook`, or None.

    Example:
        >>> hook_of(model) is None   # after fit, the hook is gone
        True
    """
    return getattr(model, "__dict__", {}).get(_ATTR)


class StageCallback(keras.callbacks.Callback):
    """Base class of callbacks that own a :class:`Stage`: attaches it in ``set_model``, resets
    the stage logs each epoch, forwards epoch/batch events to the stage, and detaches at the
    end of training.

    Args:
        stage: the :class:`Stage` this callback contributes.

    Example:
        >>> model.fit(x, y, callbacks=[StageCallback(MyStage())])
    """

    def __init__(self, stage: Stage):
        super().__init__()
        self.stage = stage
        stage.callback_name = type(self).__name__  # the name error messages use

    def set_model(self, model):
        super().set_model(model)
        attach(model, self.stage)

    def on_epoch_begin(self, epoch, logs=None):
        self.stage.on_epoch_begin(epoch)
        hook = hook_of(self.model)
        if hook is not None:
            hook.reset_logs()

    def on_train_batch_begin(self, batch, logs=None):
        self.stage.on_train_batch_begin(batch)

    def on_train_end(self, logs=None):
        hook = hook_of(self.model)
        if hook is not None:
            hook.remove(self.stage)
            if not hook.stages:
                hook.detach()
