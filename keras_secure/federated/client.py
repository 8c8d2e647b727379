"""Flower clients for compiled Keras 3 models, with keras_secure's callbacks and malicious
behaviours (docs/federated.md)."""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from keras_secure.federated.attacks import MaliciousBehaviour, check_behaviour
from keras_secure.federated.partition import Partition
from keras_secure.validation import check_number

#: Metric key every client reports as 1: the weight of uniform averaging (user-level DP).
UNIT_WEIGHT_KEY = "unit-weight"
#: Metric key with the number of training examples (FedAvg's weight).
NUM_EXAMPLES_KEY = "num-examples"

# Models built in this process, per model function: {model_fn: (model, optimizer snapshot)}.
# Every round sets the weights and resets the optimizer, so clients (and simulations) that
# share a model function share one model and its traced train function.
_MODELS: dict = {}


def cached_model(model_fn, cache: dict | None = None):
    """``(model, optimizer snapshot)`` for ``model_fn``, built once per process."""
    cache = _MODELS if cache is None else cache
    try:
        entry = cache.get(model_fn)
    except TypeError:  # an unhashable callable: no caching
        return _snapshot(check_compiled_model(model_fn()))
    if entry is None:
        entry = cache[model_fn] = _snapshot(check_compiled_model(model_fn()))
    return entry


def check_compiled_model(model, name: str = "model_fn()"):
    """Raise ``TypeError`` unless ``model`` is a compiled Keras 3 model."""
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"`{name}` must return a keras.Model (Keras 3). Received: "
                        f"{type(model).__name__}")
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError(f"The model returned by `{name}` is not compiled: federated clients "
                         "train it with model.fit, which needs an optimizer and a loss. Call "
                         "model.compile(optimizer=..., loss=..., metrics=[...]) inside the "
                         "function that builds it.")
    if not model.built:
        raise ValueError(f"The model returned by `{name}` is not built (its weights do not "
                         "exist yet): give it an Input, or build it, inside that function.")
    return model


class KerasClients:
    """The clients of a federation: one compiled Keras model architecture, one private
    :class:`~keras_secure.federated.Partition` per client, how they train locally and which of
    them are malicious. :meth:`client_app` gives the Flower ``ClientApp`` they run, in a
    simulation or under Flower's deployment engine.

    Each round a client receives the global weights, trains ``epochs`` of ``model.fit`` on its
    partition with the callbacks ``callbacks(client_id)`` returns (any keras_secure callback:
    :class:`~keras_secure.callbacks.AdversarialTraining`, :class:`~keras_secure.callbacks.DPSGD`
    for local example-level DP, :class:`~keras_secure.callbacks.RobustnessMonitor`, ...) and
    replies with its weights and metrics: ``num-examples``, ``unit-weight`` (1), the last
    epoch's logs (``loss``, compiled metrics, ``robust_accuracy`` if a monitor is attached,
    ...), ``malicious`` (0/1) and, with a DPSGD callback, ``local-epsilon`` (its epsilon over
    every round so far: the callback's step counts are kept in the node's Flower context
    between rounds). The optimizer's state is reset to its initial value each round (local
    training starts fresh from the global model, as in FedAvg).

    A client is told its id by Flower's node config: ``partition-id`` (0-based), which the
    simulation engine sets and a SuperNode gets from ``--node-config "partition-id=3"``.

    Args:
        model_fn: a function with no arguments returning a *compiled* Keras 3 model. Called
            once per process (the model is cached per function and reused, weights and
            optimizer state reset each round), so it must build the same architecture
            every time.
        partitions: one ``(x, y)`` pair (or :class:`~keras_secure.federated.Partition`) per
            client, client ids 0..n-1; or a mapping ``{client_id: (x, y)}`` holding only the
            data of the nodes that run here (a SuperNode holds its own partition only).
            Labels in the encoding the model's loss expects.
        epochs: local epochs per round, >= 1. Defaults to 1.
        batch_size: local batch size, >= 1. Defaults to 32.
        callbacks: None, or a function ``client_id -> list of Keras callbacks`` called each
            round (callbacks keep per-fit state, so fresh ones are made each round).
        malicious: ``{client_id: behaviour}`` for the malicious clients (see
            :mod:`keras_secure.federated.attacks`). Defaults to none.
        num_classes: classes of the labels (for the poisoning behaviours); None reads it from
            the model's output. Defaults to None.
        client_side_clipping: add Flower's ``fixedclipping_mod`` so each client clips its own
            update to the norm the server sends (client-side user-level DP). Defaults to False.
        seed: seeds each client's local training (from ``(seed, round, client)``: the data
            shuffle, Python's and NumPy's generators, the model's Keras ``SeedGenerator``
            states) and its poisoning draws; None leaves them unseeded. Defaults to 0.

    Raises:
        TypeError / ValueError: before any round, for a ``model_fn`` that does not return a
            compiled, built Keras model, an empty or malformed partition, inputs that do not
            fit the model, malicious ids out of range, or bad numbers.

    Example:
        >>> from keras_secure import federated as fl
        >>> parts = fl.dirichlet_partition(x, y, num_clients=10, alpha=0.5)
        >>> clients = fl.KerasClients(make_model, parts, epochs=1,
        ...                           malicious={0: fl.SignFlip()})
        >>> app = clients.client_app()          # a flwr.clientapp.ClientApp
    """

    def __init__(self, model_fn: Callable, partitions: Sequence, *, epochs: int = 1,
                 batch_size: int = 32, callbacks: Callable | None = None,
                 malicious: Mapping[int, MaliciousBehaviour] | None = None,
                 num_classes: int | None = None, client_side_clipping: bool = False,
                 seed: int | None = 0):
        import keras

        if isinstance(model_fn, keras.layers.Layer):
            raise TypeError("`model_fn` must be a function that builds and compiles the model "
                            "(e.g. `def make_model(): ...; return model`), not a model: each "
                            "process running clients builds its own copy. Received: a "
                            f"{type(model_fn).__name__}")
        if not callable(model_fn):
            raise TypeError("`model_fn` must be a function returning a compiled Keras model "
                            f"(each client process builds its own). Received: "
                            f"{type(model_fn).__name__}")
        from keras_secure.classifier import as_classifier, check_inputs, check_labels

        model = cached_model(model_fn)[0]
        if num_classes is None:
            num_classes = as_classifier(model).num_classes
        self.num_classes = check_number("num_classes", num_classes, low=2, integer=True)
        if isinstance(partitions, (str, bytes)) or not hasattr(partitions, "__len__"):
            raise TypeError("`partitions` must be a list of (x, y) pairs, one per client. "
                            f"Received: {type(partitions).__name__}")
        if len(partitions) == 0:
            raise ValueError("`partitions` must hold at least one client. Received: 0")
        if isinstance(partitions, Mapping):  # {client_id: (x, y)}: the data of these nodes
            items = list(partitions.items())
            for cid, _ in items:
                if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)) or cid < 0:
                    raise TypeError("`partitions` keys must be client ids (ints >= 0). "
                                    f"Received: {cid!r}")
        else:
            items = list(enumerate(partitions))
        parts = {}
        for i, part in items:
            i = int(i)
            try:
                x, y = part
            except (TypeError, ValueError):
                raise TypeError(f"`partitions[{i}]` must be an (x, y) pair. Received: "
                                f"{type(part).__name__}") from None
            if np.ndim(x) == 0 or np.shape(x)[0] == 0:
                raise ValueError(f"`partitions[{i}]` is empty: client {i} has no data to train "
                                 "on. Every client needs at least one example.")
            x = check_inputs(x, name=f"partitions[{i}].x")
            check_labels(y, self.num_classes, n=x.shape[0], name=f"partitions[{i}].y",
                         x_name=f"partitions[{i}].x")
            expected = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) \
                else None
            if expected is not None and any(
                    e is not None and e != s for e, s in zip(expected, x.shape[1:])) or (
                    expected is not None and len(expected) != x.ndim - 1):
                raise ValueError(f"`partitions[{i}].x` has examples of shape {x.shape[1:]}, "
                                 f"the model takes {expected}.")
            _check_loss(model, x, y, f"partitions[{i}]")
            indices = getattr(part, "indices", np.arange(x.shape[0]))
            parts[i] = Partition(x, np.asarray(y), indices)
        self.partitions = parts
        self.model_fn = model_fn
        self.epochs = check_number("epochs", epochs, low=1, integer=True)
        self.batch_size = check_number("batch_size", batch_size, low=1, integer=True)
        if callbacks is not None and not callable(callbacks):
            raise TypeError("`callbacks` must be None or a function client_id -> list of Keras "
                            "callbacks (fresh callbacks each round). Received: "
                            f"{type(callbacks).__name__}")
        self.callbacks = callbacks
        if malicious is not None and not isinstance(malicious, Mapping):
            raise TypeError("`malicious` must be a dict {client_id: behaviour}, e.g. "
                            "{0: SignFlip()}. Received: " + type(malicious).__name__)
        malicious = dict(malicious or {})
        for cid, behaviour in malicious.items():
            if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)) or \
                    int(cid) not in parts:
                raise ValueError(f"`malicious` keys must be client ids in {_ids(parts)}. "
                                 f"Received: {cid!r}")
            check_behaviour(behaviour, f"malicious[{cid}]")
            if behaviour.poisons_data and hasattr(behaviour, "trigger"):
                shape = parts[int(cid)].x.shape[1:]
                if len(shape) != 3:
                    raise ValueError(f"`malicious[{cid}]` plants an image trigger, but client "
                                     f"{cid}'s inputs have shape {shape}, not (height, width, "
                                     "channels).")
                behaviour.trigger.check(shape)
        self.malicious = {int(k): v for k, v in malicious.items()}
        self.client_side_clipping = bool(client_side_clipping)
        self.seed = check_number("seed", seed, integer=True, allow_none=True)
        self.num_weights = len(model.get_weights())

    # -- what runs in a client process --------------------------------------------------------

    def _model(self):
        return cached_model(self.model_fn)

    def _client_seed(self, server_round: int, client_id: int) -> int | None:
        if self.seed is None:
            return None
        return int(np.random.SeedSequence([self.seed, server_round, client_id]).generate_state(1)[0]
                   % (2 ** 31 - 1))

    def client_id(self, context) -> int:
        """The 0-based client id of a Flower node (its ``partition-id`` node config)."""
        config = context.node_config
        if "partition-id" not in config:
            raise ValueError("This Flower node has no `partition-id` in its node config: start "
                             "the SuperNode with --node-config \"partition-id=<0-based id>\".")
        cid = int(config["partition-id"])
        if cid not in self.partitions:
            raise ValueError(f"`partition-id` must be one of the client ids these clients hold "
                             f"data for, {_ids(self.partitions)}. Received: {cid}")
        return cid

    def local_data(self, client_id: int, server_round: int):
        """``(x, y)`` client ``client_id`` trains on in ``server_round`` (poisoned when its
        malicious behaviour poisons data and is active)."""
        part = self.partitions[client_id]
        behaviour = self.malicious.get(client_id)
        if behaviour is None or not behaviour.poisons_data or not behaviour.active(server_round):
            return part.x, part.y
        seed = None if self.seed is None else self.seed * 7919 + client_id
        return behaviour.poison_data(part.x, part.y, num_classes=self.num_classes, seed=seed)

    def fit(self, weights: list, client_id: int, server_round: int, state=None,
            num_clients: int | None = None) -> tuple[list, dict]:
        """One round of local training from ``weights``; returns the weights to send and the
        metrics. ``state`` is the node's Flower ``RecordDict`` (keeps DPSGD's step counts).

        Raises:
            ValueError: if ``weights`` do not match the model's weights (count or shapes).
        """
        from keras_secure.callbacks import DPSGD

        model, snapshot = self._model()
        _check_weights(weights, model.get_weights(), "the global model's arrays")
        model.set_weights(weights)
        for var, value in zip(model.optimizer.variables, snapshot):
            var.assign(value)
        seed = self._client_seed(server_round, client_id)
        if seed is not None:
            _reseed(model, seed, self.seed)
        x, y = self.local_data(client_id, server_round)
        callbacks = list(self.callbacks(client_id)) if self.callbacks else []
        dp = [c for c in callbacks if isinstance(c, DPSGD)]
        _restore_dp_state(dp, state)
        fit_kwargs = {"epochs": self.epochs, "verbose": 0, "callbacks": callbacks}
        if any(c.sampling == "poisson" for c in dp):
            from keras_secure.privacy import poisson_batches

            data, steps = poisson_batches(x, y, dp[0].batch_size, seed=seed)
            history = model.fit(data, steps_per_epoch=steps, shuffle=False, **fit_kwargs)
        elif dp:  # arrays: DPSGD checks that fit trains on its declared examples and batches
            history = model.fit(x, y, batch_size=self.batch_size, shuffle=True, **fit_kwargs)
        else:  # a plain shuffled dataset: 4x less per-call overhead than fit's array adapter
            import tensorflow as tf

            data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
                len(x), seed=0 if seed is None else seed).batch(self.batch_size)
            history = model.fit(data, shuffle=False, **fit_kwargs)
        _save_dp_state(dp, state)
        local = [np.asarray(w) for w in model.get_weights()]
        behaviour = self.malicious.get(client_id)
        attacking = behaviour is not None and behaviour.active(server_round)
        if attacking and behaviour.poisons_update:
            local = behaviour.poison_update(local, [np.asarray(w) for w in weights],
                                            num_clients=num_clients or len(self.partitions),
                                            seed=seed)
        metrics = {NUM_EXAMPLES_KEY: int(len(x)), UNIT_WEIGHT_KEY: 1,
                   "malicious": int(attacking)}
        for key, values in history.history.items():  # NaN kept: divergence must show
            if values and isinstance(values[-1], (int, float, np.floating, np.integer)):
                metrics[key] = float(values[-1])
        if dp:
            metrics["local-epsilon"] = float(max(c.epsilon() for c in dp))
        return local, metrics

    def evaluate(self, weights: list, client_id: int) -> dict:
        """Loss and compiled metrics of ``weights`` on client ``client_id``'s (clean) data."""
        model, _ = self._model()
        _check_weights(weights, model.get_weights(), "the global model's arrays")
        model.set_weights(weights)
        part = self.partitions[client_id]
        logs = model.evaluate(part.x, part.y, batch_size=max(self.batch_size, 256), verbose=0,
                              return_dict=True)
        out = {NUM_EXAMPLES_KEY: int(len(part.x)), UNIT_WEIGHT_KEY: 1}
        out.update({k: float(v) for k, v in logs.items() if math.isfinite(float(v))})
        return out

    # -- Flower ----------------------------------------------------------------------------

    def _clipping_mod(self, msg, context, call_next):
        """Flower's ``fixedclipping_mod``, except that (1) a zero update is sent as it is
        (Flower's mod divides by the update's norm and raises ``ZeroDivisionError``), and
        (2) a malicious client attacking this round does not clip: it sends its update as
        crafted, as a real attacker would, and the server's guard must catch it."""
        from flwr.app import MessageType
        from flwr.clientapp.mod import fixedclipping_mod

        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        config = msg.content.config_records.get("config")
        server_round = int(config["server-round"]) if config and "server-round" in config \
            else 1
        behaviour = self.malicious.get(self.client_id(context))
        if behaviour is not None and behaviour.poisons_update and \
                behaviour.active(server_round):
            return call_next(msg, context)
        reply = call_next(msg, context)
        if reply.has_error() or len(reply.content.array_records) != 1:
            return reply
        sent = next(iter(reply.content.array_records.values())).to_numpy_ndarrays()
        received = next(iter(msg.content.array_records.values())).to_numpy_ndarrays()
        if len(sent) == len(received) and all(
                np.shape(a) == np.shape(b) and np.array_equal(a, b)
                for a, b in zip(sent, received)):
            return reply  # a zero update: nothing to clip
        return fixedclipping_mod(msg, context, lambda m, c: reply)

    def client_app(self):
        """The Flower ``ClientApp`` of these clients (Message API: ``train`` and ``evaluate``).

        Serve it from a Flower App (``clientapp = "module:app"`` in its ``pyproject.toml``)
        for the deployment engine, or give it to :func:`keras_secure.federated.simulate`.

        Returns:
            A ``flwr.clientapp.ClientApp``.
        """
        from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
        from flwr.clientapp import ClientApp

        clients = self
        mods = [clients._clipping_mod] if self.client_side_clipping else []
        app = ClientApp(mods=mods)

        @app.train()
        def train(msg, context):
            cid = clients.client_id(context)
            config = msg.content.config_records.get("config")
            server_round = int(config["server-round"]) if config and \
                "server-round" in config else 1
            num_clients = int(config["num-clients"]) if config and "num-clients" in config \
                else None
            weights = msg.content["arrays"].to_numpy_ndarrays()
            local, metrics = clients.fit(weights, cid, server_round, context.state, num_clients)
            reply = RecordDict({"arrays": ArrayRecord(numpy_ndarrays=local),
                                "metrics": MetricRecord(metrics)})
            return Message(reply, reply_to=msg)

        @app.evaluate()
        def evaluate(msg, context):
            cid = clients.client_id(context)
            metrics = clients.evaluate(msg.content["arrays"].to_numpy_ndarrays(), cid)
            return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

        return app


def _reseed(model, seed: int, global_seed: int) -> None:
    """Seed a client's round: Python's and NumPy's generators and the state of every Keras
    ``SeedGenerator`` in the model (dropout, noise layers); TensorFlow's global seed is set to
    ``global_seed`` only if it has another value (``tf.random.set_seed`` clears TensorFlow's
    kernel caches, which made every round several times slower when done each round). The
    data pipeline's shuffle combines that global seed with the round's own seed, so every
    process running clients (this one, Ray actors, SuperNodes) shuffles alike."""
    import random

    import keras
    from tensorflow.python.eager import context

    if context.global_seed() != global_seed:
        import tensorflow as tf

        tf.random.set_seed(global_seed)
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    for layer in model._flatten_layers(include_self=True):
        for generator in getattr(layer, "_seed_generators", ()):
            dtype = keras.backend.standardize_dtype(generator.state.dtype)
            generator.state.assign(np.array([seed % (2 ** 31 - 1), 0], dtype=dtype))


def _check_loss(model, x, y, name: str) -> None:
    """Compute the compiled loss on two examples, so that labels the loss cannot take (one-hot
    rows for a sparse loss, ...) are an error naming the partition before any round."""
    sample_x, sample_y = x[:2], np.asarray(y)[:2]
    try:
        model.compute_loss(x=sample_x, y=sample_y, y_pred=model(sample_x, training=False))
    except Exception as err:  # noqa: BLE001 - re-raised with the partition's name
        raise ValueError(
            f"The model's compiled loss cannot take `{name}`'s labels (y of shape "
            f"{np.shape(y)}, dtype {np.asarray(y).dtype}): e.g. one-hot rows need "
            "CategoricalCrossentropy, class indices SparseCategoricalCrossentropy. "
            f"Keras said: {str(err).splitlines()[0][:300]}") from err


def _ids(parts: dict) -> str:
    ids = sorted(parts)
    if ids == list(range(len(ids))):
        return f"[0, {len(ids) - 1}]"
    return str(ids)


def _snapshot(model):
    """The model and its optimizer's initial variable values (restored before each round)."""
    model.optimizer.build(model.trainable_variables)
    return model, [np.array(v.numpy(), copy=True) for v in model.optimizer.variables]


def _check_weights(received: list, expected: list, what: str) -> None:
    if len(received) != len(expected):
        raise ValueError(f"{what} hold {len(received)} arrays, the client's model has "
                         f"{len(expected)}: the server and the clients run different models.")
    for i, (r, e) in enumerate(zip(received, expected)):
        if tuple(np.shape(r)) != tuple(np.shape(e)):
            raise ValueError(f"{what}: array {i} has shape {tuple(np.shape(r))}, the client's "
                             f"model has {tuple(np.shape(e))}.")


def _restore_dp_state(dp, state) -> None:
    if state is None or not dp:
        return
    record = state.config_records.get("keras-secure-dpsgd")
    if record is None:
        return
    for i, callback in enumerate(dp):
        callback.steps_done = int(record.get(f"{i}.steps_done", 0))
        callback.passes_done = int(record.get(f"{i}.passes_done", 0))


def _save_dp_state(dp, state) -> None:
    if state is None or not dp:
        return
    from flwr.app import ConfigRecord

    values = {}
    for i, callback in enumerate(dp):
        values[f"{i}.steps_done"] = int(callback.steps_done)
        values[f"{i}.passes_done"] = int(callback.passes_done)
    state.config_records["keras-secure-dpsgd"] = ConfigRecord(values)
