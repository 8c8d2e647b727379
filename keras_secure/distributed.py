"""``tf.distribute`` support: the multi-worker workaround for ``model.fit`` and the strategy
checks shared by training and evaluation (docs/training.md, "Multi-worker training";
docs/evaluation.md, "Distributed evaluation").

**Why a workaround.** With TensorFlow 2.21 and Keras 3.15, ``model.fit`` (and ``evaluate``)
fails under ``tf.distribute.MultiWorkerMirroredStrategy`` with more than one worker
(keras-team/keras#20585), for two reasons in Keras's TensorFlow trainer
(``keras/src/backend/tensorflow/trainer.py``):

1. ``_maybe_symbolic_build`` takes the first distributed batch and calls
   ``strategy.reduce("MEAN", batch, axis=None)`` on the whole ``(x, y)`` structure. With one
   worker the reduce of a non-distributed structure returns it unchanged; with several it goes
   to the collective ops, which try to convert the tuple of ``PerReplica`` values to one tensor:
   "Attempt to convert a value (PerReplica:{...}) with an unsupported type". The batch is only
   used for its shapes and dtypes (``_symbolic_build`` makes ``KerasTensor`` placeholders of
   it), so any one replica's part of it is as good as the mean.
2. ``reduce_per_replica`` reduces the step's logs in multi-worker mode with
   ``strategy.reduce("MEAN", v, axis=0)``, which fails on the scalar logs ("Invalid reduction
   dimension 0 for input with 0 dimensions") and would average a vector metric over its own
   entries. On one worker the same logs are averaged over replicas only.

:func:`prepare_model` fixes both on one model instance, for that model only: the first batch is
read from the local replica (no collective), and each train/test step's logs get a leading axis
of length 1, so Keras's ``reduce(..., axis=0)`` becomes the mean over all replicas, exactly the
single-worker reduction. Nothing process-wide is changed.

**Removal.** Each part is installed only while Keras's source still has the defect it works
around (:func:`keras_workaround_needed` reads it), so an upgraded Keras with a fix turns the
workaround off by itself; ``tests/test_multiworker.py`` then fails on its check that the
workaround is still needed, which is the signal to delete this workaround and the
``prepare_model`` calls.
"""

from __future__ import annotations

import functools
import inspect
import threading

import keras
import numpy as np
import tensorflow as tf

_PREPARED = "_keras_secure_multi_worker"


def _keras_trainer():
    from keras.src.backend.tensorflow import trainer  # Keras's TF trainer, where the bug is

    return trainer


def keras_workaround_needed() -> dict:
    """Which of the two Keras defects (see the module docstring) the installed Keras has.

    Read from the source of Keras's TensorFlow trainer, so that the workaround switches itself
    off once Keras is fixed.

    Returns:
        ``{"symbolic_build": bool, "log_reduction": bool}``: True where the defect is present.

    Example:
        >>> keras_workaround_needed()      # Keras 3.15.1
        {'symbolic_build': True, 'log_reduction': True}
    """
    trainer = _keras_trainer()
    build = inspect.getsource(trainer.TensorFlowTrainer._maybe_symbolic_build)
    reduce = inspect.getsource(trainer.reduce_per_replica)
    return {"symbolic_build": "distribute_strategy.reduce(" in build,
            "log_reduction": 'strategy.reduce("MEAN", v, axis=0)' in reduce}


def is_multi_worker(strategy) -> bool:
    """Whether ``strategy`` spans several workers (hosts or processes), as Keras decides it.

    Args:
        strategy: a ``tf.distribute.Strategy``.

    Returns:
        True for a ``MultiWorkerMirroredStrategy`` in multi-worker mode (a cluster of more than
        one task), else False.

    Example:
        >>> is_multi_worker(tf.distribute.MirroredStrategy())
        False
    """
    return _keras_trainer()._collective_all_reduce_multi_worker(strategy)


def _local_part(value):
    """One local replica's part of a distributed value (a plain value is returned as is)."""
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


def _with_replica_axis(value):
    """A log with a leading axis of length 1: ``reduce("MEAN", v, axis=0)`` over replicas of
    such values is the mean over replicas of ``v``, whatever the rank of ``v``."""
    if value is None or not tf.is_tensor(value):
        return value
    return tf.expand_dims(value, 0)


def prepare_model(model):
    """Make ``model.fit`` and ``model.evaluate`` work under ``MultiWorkerMirroredStrategy``.

    Works around keras-team/keras#20585 on this model instance (see the module docstring for
    the cause): call it once after building and compiling the model in ``strategy.scope()``,
    before ``fit``, in the script every worker runs. Under any other strategy, or with a Keras
    that no longer has the defects, it changes nothing; calling it again is a no-op. The
    training-step hook of keras_secure's callbacks composes with it.

    Args:
        model: a ``keras.Model`` (Keras 3, TensorFlow backend).

    Returns:
        ``model`` itself.

    Raises:
        TypeError: if ``model`` is not a ``keras.Model``.

    Example:
        >>> strategy = tf.distribute.MultiWorkerMirroredStrategy()   # TF_CONFIG set
        >>> with strategy.scope():
        ...     model = ks.models.small_cnn(seed=0)
        ...     model.compile("adam", loss, metrics=["accuracy"])
        >>> ks.distributed.prepare_model(model)
        >>> model.fit(x, y, batch_size=64, epochs=2, callbacks=[ks.callbacks.DPSGD(...)])
    """
    if not isinstance(model, keras.Model):
        raise TypeError("`model` must be a Keras 3 keras.Model. "
                        f"Received: model of type {type(model).__name__}")
    if model.__dict__.get(_PREPARED) or not is_multi_worker(model.distribute_strategy):
        return model
    needed = keras_workaround_needed()
    if needed["symbolic_build"]:
        build = model._maybe_symbolic_build  # the class's method, bound

        def _maybe_symbolic_build(iterator=None, data_batch=None):
            if iterator is not None:
                for _, _, batches in iterator:  # the first batch, as Keras takes it
                    data_batch = tf.nest.map_structure(_local_part, next(batches))
                    break
            return build(data_batch=data_batch)

        model._maybe_symbolic_build = _maybe_symbolic_build
    if needed["log_reduction"]:
        make_function = model._make_function

        def _make_function(step_function):
            def step(data):
                return tf.nest.map_structure(_with_replica_axis, step_function(data))

            return make_function(step)

        model._make_function = _make_function
    model.__dict__[_PREPARED] = True
    return model


# -- randomness inside replicas -----------------------------------------------------------------
#: offset between the seed streams of two replicas (a stream advances by 1 per draw)
_REPLICA_STRIDE = 2 ** 24


class _ReplicaStream(keras.random.SeedGenerator):
    """A view of a ``SeedGenerator`` whose seeds are offset by the replica's id.

    It has no state of its own: ``next()`` advances the base generator and adds
    ``replica_id * 2**24`` to the second seed component, so replicas that share (or copy) one
    generator still draw distinct, independent streams (TensorFlow scrambles stateless seeds).
    """

    def __init__(self, base, replica_id):  # no SeedGenerator.__init__: no new variable
        self.base = base
        self.replica_id = replica_id
        self.name = f"{base.name}_replica"
        self.backend = base.backend
        self._initial_seed = base._initial_seed

    @property
    def state(self):
        return self.base.state

    def next(self, ordered=True):
        seed = self.base.next(ordered=ordered)
        offset = tf.stack([tf.zeros([], seed.dtype),
                           tf.cast(self.replica_id, seed.dtype) * _REPLICA_STRIDE])
        return seed + offset


def replica_generator(generator):
    """The seed generator to draw from in the current replica.

    In a replica context with more than one replica in sync (``MirroredStrategy``,
    ``MultiWorkerMirroredStrategy``), every replica would otherwise draw the same numbers from
    its copy of ``generator`` (workers hold identical copies); the returned view offsets the
    seeds by the replica's id. Elsewhere ``generator`` itself is returned.

    Args:
        generator: a ``keras.random.SeedGenerator``.

    Returns:
        A ``SeedGenerator`` to pass as ``seed=`` to ``keras.random`` functions.

    Example:
        >>> noise = keras.random.normal(shape, seed=replica_generator(self.seed_generator))
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return generator
    return _ReplicaStream(generator, context.replica_id_in_sync_group)


def replica_attack(attack):
    """``attack`` drawing its randomness from :func:`replica_generator` streams.

    A shallow copy whose seed generator (and those of attacks it wraps, e.g. a ``Transfer``'s
    inner attack) is the replica's view; the original is returned outside multi-replica
    contexts. Used by training stages that run an attack inside the training step, so that
    the random starts of two replicas' examples are independent.

    Args:
        attack: a :class:`keras_secure.attacks.Attack`.

    Returns:
        The attack to call ``perturb`` on in this replica.

    Example:
        >>> x_adv = replica_attack(self.attack).perturb(logits_fn, x, y)
    """
    import copy

    from keras_secure.attacks.base import Attack

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return attack
    clone = copy.copy(attack)
    clone._seed_generator = replica_generator(attack._seed_generator)
    for name, value in vars(attack).items():
        if isinstance(value, Attack):
            setattr(clone, name, replica_attack(value))
    return clone


# -- distributed evaluation: attack batches split across replicas --------------------------------
def check_strategy(strategy, name: str = "strategy"):
    """Validate a ``tf.distribute`` strategy argument.

    Args:
        strategy: a ``tf.distribute.Strategy`` (``MirroredStrategy``, ``OneDeviceStrategy``,
            ``MultiWorkerMirroredStrategy``, the default strategy), or None for the strategy
            of the enclosing scope (the default strategy outside any scope).
        name: the argument's name in error messages. Defaults to ``"strategy"``.

    Returns:
        The strategy to use.

    Raises:
        TypeError: if ``strategy`` is not a ``tf.distribute.Strategy``.
        ValueError: for a ``ParameterServerStrategy`` or ``TPUStrategy`` (not supported: the
            first runs functions on remote workers through a coordinator, the second was never
            tested here).

    Example:
        >>> check_strategy(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    """
    if strategy is None:
        return tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(f"`{name}` must be a tf.distribute.Strategy (e.g. "
                        "tf.distribute.MirroredStrategy()) or None. "
                        f"Received: {name} of type {type(strategy).__name__}")
    unsupported = (tf.distribute.experimental.ParameterServerStrategy, tf.distribute.TPUStrategy)
    if isinstance(strategy, unsupported):
        raise ValueError(
            f"`{name}` must be a MirroredStrategy, MultiWorkerMirroredStrategy, "
            "OneDeviceStrategy or the default strategy; "
            f"{type(strategy).__name__} is not supported. "
            f"Received: {name}={type(strategy).__name__}")
    return strategy


def _attack_tree(attack) -> list:
    """``attack`` and the attacks it wraps (a Transfer's inner attack), in a fixed order."""
    from keras_secure.attacks.base import Attack

    tree = [attack]
    for name in sorted(vars(attack)):
        value = vars(attack)[name]
        if isinstance(value, Attack) and value is not attack:
            tree.extend(_attack_tree(value))
    return tree


def _unit_seeds(attack, count: int) -> np.ndarray:
    """One seed state per unit and per attack of ``attack``'s tree, shape ``(count, J, 2)``
    int64: derived from each attack's generator state and the unit's index only, so a unit's
    random draws do not depend on which replica runs it or what ran before."""
    states = [np.asarray(a._seed_generator.state.numpy(), np.int64) for a in _attack_tree(attack)]
    seeds = np.zeros((count, len(states), 2), np.int64)
    for u in range(count):
        for j, (s0, s1) in enumerate(states):
            words = np.random.SeedSequence(
                [int(s0) & 0xFFFFFFFF, int(s1) & 0xFFFFFFFF, j, u]).generate_state(1)
            seeds[u, j] = (int(words[0]) >> 1, 0)  # below 2**31: kept by Keras's int32 cast
    return seeds


def _outside_strategy_scopes(make):
    """``make()`` outside any ``strategy.scope()``: the replicas' seed generators must be plain
    variables (one per replica), not mirrored ones that a replica cannot assign alone. Scopes
    are per thread, so a fresh thread is outside the caller's."""
    if not tf.distribute.has_strategy():
        return make()
    result = {}

    def run():
        try:
            result["value"] = make()
        except BaseException as err:  # pragma: no cover - re-raised in the caller
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:  # pragma: no cover
        raise result["error"]
    return result["value"]


class _ReplicaAttacks:
    """Per replica: a copy of the attack tree with its own seed generators (replicas never
    share a generator variable), and the traced step that attacks one unit per replica."""

    def __init__(self, attack, clf, strategy, shape):
        import copy
        import weakref

        tree = _attack_tree(attack)
        self.replicas = strategy.num_replicas_in_sync
        self.generators = _outside_strategy_scopes(
            lambda: [[keras.random.SeedGenerator(0) for _ in tree]
                     for _ in range(self.replicas)])
        self.clones = []
        for gens in self.generators:
            clones = {id(a): copy.copy(a) for a in tree}
            for a, g in zip(tree, gens):
                clone = clones[id(a)]
                clone._seed_generator = g
                for name, value in vars(a).items():
                    if id(value) in clones and value is not a:
                        setattr(clone, name, clones[id(value)])
            self.clones.append(clones[id(attack)])
        self.strategy_ref = weakref.ref(strategy)
        # a partial of module functions, not closures: TensorFlow counts retracing per code
        # object, and every attack's closure would share one
        # reduce_retracing: unit sizes vary between calls (balanced units, a suite's
        # shrinking sets of examples); after a second size the batch dimension is left open
        self.step = tf.function(functools.partial(_step, self, weakref.ref(clf)),
                                reduce_retracing=True)


def _replica_step(runner, clf_ref, x, y, seeds):
    context = tf.distribute.get_replica_context()
    replica = tf.get_static_value(context.replica_id_in_sync_group)
    if replica is None:  # pragma: no cover - every supported strategy has a static id
        raise ValueError("distributed evaluation needs a strategy whose replica ids are known "
                         "when the step is traced.")
    assigns = [g.state.assign(seeds[j]) for j, g in enumerate(runner.generators[int(replica)])]
    with tf.control_dependencies(assigns):
        return runner.clones[int(replica)].perturb(clf_ref().logits, x, y)


def _step(runner, clf_ref, x, y, seeds):
    strategy = runner.strategy_ref()
    per_replica = strategy.run(functools.partial(_replica_step, runner, clf_ref),
                               args=(x, y, seeds))
    return strategy.gather(per_replica, axis=0)


_RUNNERS = "_keras_secure_replica_runners"


def _runner(attack, clf, strategy, shape) -> _ReplicaAttacks:
    import weakref

    runners = attack.__dict__.setdefault(_RUNNERS, weakref.WeakKeyDictionary())
    per_clf = runners.setdefault(clf, {})
    key = (tuple(shape), id(strategy))
    runner = per_clf.get(key)
    if runner is None or runner.strategy_ref() is not strategy:
        runner = per_clf[key] = _ReplicaAttacks(attack, clf, strategy, shape)
    return runner


def overrides_call(attack) -> bool:
    """Whether ``attack`` runs its own ``__call__`` (it then cannot be split across replicas
    unit by unit)."""
    from keras_secure.attacks.base import Attack

    return type(attack).__call__ is not Attack.__call__


def attack_units(attack, clf, x: np.ndarray, y: np.ndarray, unit: int, strategy,
                 progress=None) -> np.ndarray:
    """Attack ``x`` in units of ``unit`` examples, one unit per replica at a time.

    The ``n`` examples are cut into ``ceil(n / unit)`` units of equal size (at most ``unit``;
    the sizes depend on ``n`` and ``unit`` only). Each unit's randomness comes from seeds
    derived from the attack's generator state and the unit's index (:func:`_unit_seeds`); the
    last unit is padded with copies of its first example, and a step with fewer units than replicas gives the idle replicas a copy of the
    last unit (both discarded). The result is therefore the same for any number of replicas,
    one included. The attack's own generators are not advanced.

    Args:
        attack: a :class:`keras_secure.attacks.Attack` that does not override ``__call__``.
        clf: the :class:`keras_secure.Classifier` attacked.
        x: float32 inputs ``(n, ...)``, already validated.
        y: int32 labels ``(n,)``.
        unit: examples per unit, >= 1.
        strategy: the ``tf.distribute.Strategy`` whose replicas share the units.
        progress: called with the number of examples done after each step, or None.

    Returns:
        Adversarial inputs, float32 ``(n, ...)``.

    Example:
        >>> x_adv = attack_units(pgd, as_classifier(model), x, y, 256, strategy)
    """
    n = x.shape[0]
    out = np.empty(x.shape, np.float32)
    if n == 0:
        return out
    runner = _runner(attack, clf, strategy, x.shape[1:])
    replicas = runner.replicas
    count = -(-n // unit)
    unit = -(-n // count)  # balanced: the last unit is padded by fewer than `count` examples
    seeds = _unit_seeds(attack, count)
    for first in range(0, count, replicas):
        units = list(range(first, min(first + replicas, count)))
        xs, ys, ss = [], [], []
        for u in units:
            rows = np.arange(u * unit, min((u + 1) * unit, n))
            rows = np.concatenate([rows, np.full(unit - rows.size, rows[0])])
            xs.append(x[rows])
            ys.append(y[rows])
            ss.append(seeds[u])
        while len(xs) < replicas:  # idle replicas repeat the last unit
            xs.append(xs[-1])
            ys.append(ys[-1])
            ss.append(ss[-1])
        xs, ys, ss = (np.stack(v) for v in (xs, ys, ss))

        def part(context, values):
            return tf.constant(values[context.replica_id_in_sync_group])

        inputs = [strategy.experimental_distribute_values_from_function(
            lambda context, v=v: part(context, v)) for v in (xs, ys, ss)]
        result = runner.step(*inputs).numpy().reshape(replicas, unit, *x.shape[1:])
        for i, u in enumerate(units):
            size = min((u + 1) * unit, n) - u * unit
            out[u * unit:u * unit + size] = result[i, :size]
        if progress is not None:
            progress(min((units[-1] + 1) * unit, n))
    return out
