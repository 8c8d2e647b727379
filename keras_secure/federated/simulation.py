"""Running a federation: the server's round loop (a Flower ``ServerApp``), simulations on
Flower's Ray engine or in this process, and the per-round history (docs/federated.md)."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import uuid
from typing import Callable, Mapping, Sequence

import numpy as np
from flwr.serverapp import Grid

from keras_secure.federated.attacks import Backdoor, MaliciousBehaviour
from keras_secure.federated.client import KerasClients, cached_model, check_compiled_model
from keras_secure.federated.server import AGGREGATORS, UserLevelDP, make_strategy
from keras_secure.validation import check_choice, check_number

BACKENDS = ("local", "ray")
# The server's evaluation model per model function (kept apart from the clients' models).
_SERVER_MODELS: dict = {}
_BOOKKEEPING = ("num-examples", "unit-weight", "malicious", "malicious-clients",
                "missing-clients", "rejected-updates", "failed-clients", "aggregation-skipped")


def _backdoor_spec(value):
    """``(trigger, target, mode)`` from ``(trigger, target)`` or ``(trigger, target, mode)``."""
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    if len(items) not in (2, 3):
        raise TypeError("`backdoor` must be a Backdoor behaviour, (trigger, target) or "
                        "(trigger, target, mode), or None. Received: " + type(value).__name__)
    mode = items[2] if len(items) == 3 else "all_to_one"
    return items[0], items[1], check_choice("backdoor mode", mode, ("all_to_one", "all_to_all"))


def _pair(value, name: str, what: str):
    try:
        first, second = value
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be {what} or None. Received: "
                        f"{type(value).__name__}") from None
    return first, second


def _accuracy_metric(metrics: dict):
    """The clients' accuracy metric: ``accuracy``, else the first ``*accuracy`` key
    (``binary_accuracy``, ``sparse_categorical_accuracy``, ...) that is not a validation one."""
    if "accuracy" in metrics:
        return metrics["accuracy"]
    for key in sorted(metrics):
        if key.endswith("accuracy") and not key.startswith("val_"):
            return metrics[key]
    return None


class FederatedHistory:
    """Per-round results of a federation.

    Attributes:
        rounds: one dict per round, round 0 being the initial model: ``round``, ``accuracy``
            (global model, server test set), ``backdoor_success`` (attack success rate of the
            backdoor on triggered test inputs, or None), ``epsilon`` (user-level DP at
            ``delta``, or None), ``rejected_updates``, ``failed_clients``,
            ``aggregation_skipped``, ``malicious_clients`` (attacking this round),
            ``client_loss`` and ``client_accuracy`` (means of the clients' last local epoch),
            ``missing_clients`` (sampled clients that did not reply in time),
            ``local_epsilon`` (largest local DPSGD epsilon, or None), ``client_metrics``
            (every metric the aggregated clients reported from their last local epoch, e.g.
            ``val_robust_accuracy`` from a ``RobustnessMonitor``; weighted means), ``seconds``.
        config: the federation's settings (aggregator, clients, malicious behaviours, DP, ...).
        notes: plain-language remarks (e.g. an aggregator told to tolerate fewer malicious
            clients than there are).
        rejections: per round, the rejected updates and why (from the server's guard).
        weights: the final global model's weights (``model.set_weights(history.weights)``).

    Example:
        >>> history = simulate(make_model, parts, num_rounds=5, test_data=(x_test, y_test))
        >>> history.final["accuracy"], history.column("backdoor_success")
        >>> print(history.table())
    """

    def __init__(self, rounds: list[dict], config: dict, notes: list[str],
                 rejections: list[dict], weights: list | None = None):
        self.rounds = rounds
        self.config = config
        self.notes = notes
        self.rejections = rejections
        self.weights = weights

    @property
    def final(self) -> dict:
        """The last round's row."""
        return self.rounds[-1]

    def column(self, key: str) -> list:
        """One value per round (round 0 first)."""
        return [row.get(key) for row in self.rounds]

    def to_dict(self) -> dict:
        """JSON-ready: rows, config and notes."""
        return {"rounds": self.rounds, "config": self.config, "notes": self.notes,
                "rejections": self.rejections}

    def to_dataframe(self):
        """The rows as a pandas DataFrame indexed by round."""
        import pandas as pd

        return pd.DataFrame(self.rounds).set_index("round")

    def table(self) -> str:
        """A Markdown table of the rounds."""
        cols = [("round", "Round", "{}"), ("accuracy", "Accuracy", "{:.1%}"),
                ("backdoor_success", "Backdoor success", "{:.1%}"), ("epsilon", "Epsilon",
                                                                      "{:.2f}"),
                ("rejected_updates", "Rejected", "{}"), ("client_loss", "Client loss",
                                                         "{:.3f}")]
        cols = [c for c in cols if any(r.get(c[0]) is not None for r in self.rounds)]
        lines = ["| " + " | ".join(c[1] for c in cols) + " |",
                 "|" + "---|" * len(cols)]
        for row in self.rounds:
            cells = []
            for key, _, fmt in cols:
                value = row.get(key)
                cells.append("-" if value is None else fmt.format(value))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __repr__(self) -> str:
        final = self.final
        parts = [f"rounds={len(self.rounds) - 1}", f"accuracy={final['accuracy']:.4f}"]
        if final.get("backdoor_success") is not None:
            parts.append(f"backdoor_success={final['backdoor_success']:.4f}")
        if final.get("epsilon") is not None:
            parts.append(f"epsilon={final['epsilon']:.3f}")
        return f"FederatedHistory({', '.join(parts)})"


class FederatedServer:
    """The server of a federation: Flower's strategy (by name, guarded, optionally with
    user-level DP) run for ``num_rounds``, with the global model evaluated on a server-side
    test set after every round. :meth:`server_app` gives the Flower ``ServerApp``;
    :meth:`run` runs the loop on a Flower ``Grid``.

    Args:
        model_fn: the function building the (compiled) model the clients train.
        num_clients: clients in the federation.
        num_rounds: rounds to run, >= 1.
        aggregator: one of ``fedavg``, ``fedmedian``, ``fedtrimmedavg``, ``krum``,
            ``multikrum``, ``bulyan``. Defaults to ``"fedavg"``.
        num_malicious: the f the aggregator must tolerate. Defaults to 0.
        trim_fraction: FedTrimmedAvg's beta. Defaults to 0.2.
        dp: :class:`~keras_secure.federated.UserLevelDP` or None.
        fraction_train: fraction of clients sampled per round. Defaults to 1.
        fraction_evaluate: fraction running federated evaluation. Defaults to 0.
        test_data: ``(x, y)`` the global model is evaluated on each round, or None.
        backdoor: the backdoor whose attack success rate is measured each round on
            ``test_data``: a :class:`Backdoor` (or :class:`ModelReplacement`) behaviour,
            ``(trigger, target)`` (all-to-one) or ``(trigger, target, mode)``; or None.
        seed: seeds the server's client sampling and DP noise (NumPy's and Python's global
            generators, which Flower draws from) - for simulations only: a deployed server
            must draw its noise unpredictably, so leave it None there. Defaults to None.
        timeout: seconds to wait for the clients each round. Defaults to 3600.
        verbose: 1 prints one line per round; 0 is silent. Defaults to 1.

    Raises:
        ValueError / TypeError: at construction, for the same checks as :func:`make_strategy`
            and for test data that does not fit the model.

    Example:
        >>> server = FederatedServer(make_model, num_clients=10, num_rounds=5,
        ...                          aggregator="krum", num_malicious=2,
        ...                          test_data=(x_test, y_test))
        >>> app = server.server_app()          # a flwr.serverapp.ServerApp
    """

    def __init__(self, model_fn: Callable, *, num_clients: int, num_rounds: int,
                 aggregator: str = "fedavg", num_malicious: int = 0, trim_fraction: float = 0.2,
                 dp: UserLevelDP | None = None, fraction_train: float = 1.0,
                 fraction_evaluate: float = 0.0, test_data=None, backdoor=None,
                 seed: int | None = None, timeout: float = 3600.0, verbose: int = 1):
        self.model_fn = model_fn
        self.num_rounds = check_number("num_rounds", num_rounds, low=1, integer=True)
        self.aggregator = check_choice("aggregator", aggregator, AGGREGATORS)
        self.num_clients = check_number("num_clients", num_clients, low=1, integer=True)
        self.num_malicious = num_malicious
        self.dp = dp
        with _flower_logging(0, logging.ERROR):  # Flower warns about fraction_evaluate=0
            self.strategy, self.num_sampled = make_strategy(
            aggregator, num_clients=num_clients, num_malicious=num_malicious,
                trim_fraction=trim_fraction, dp=dp, fraction_train=fraction_train,
                fraction_evaluate=fraction_evaluate)
        self.trim_fraction = trim_fraction
        self.fraction_train = fraction_train
        self.seed = check_number("seed", seed, integer=True, allow_none=True)
        self.timeout = check_number("timeout", timeout, low=0.0, low_inclusive=False)
        self.verbose = check_number("verbose", verbose, low=0, high=2, integer=True)
        self.test_data = None
        self.backdoor = None
        self._model = None
        if test_data is not None:
            from keras_secure.classifier import as_classifier, check_labels

            x, y = _pair(test_data, "test_data", "an (x, y) pair")
            model = self._server_model()
            clf = as_classifier(model)
            x = clf.check_inputs(x, name="test_data x")
            y = check_labels(y, clf.num_classes, n=x.shape[0], name="test_data y",
                             x_name="test_data x")
            self.test_data = (x, y)
            if isinstance(backdoor, Backdoor):  # a behaviour: its trigger, target and mode
                backdoor = (backdoor.trigger, backdoor.target, backdoor.mode)
            if backdoor is not None:
                trigger, target, mode = _backdoor_spec(backdoor)
                from keras_secure.poisoning.triggers import check_trigger

                check_trigger(trigger).check(x.shape[1:])
                target = check_number("backdoor target", target, low=0,
                                      high=clf.num_classes - 1, integer=True)
                self.backdoor = (trigger, target, mode)
        elif backdoor is not None:
            raise ValueError("`backdoor` needs `test_data` to measure its success on.")
        self.history: FederatedHistory | None = None
        self.notes: list[str] = []

    def _server_model(self):
        if self._model is None:
            self._model = cached_model(self.model_fn, _SERVER_MODELS)[0]
            if self.seed is not None:  # the initial global model: fresh (seeded) weights
                import keras

                keras.utils.set_random_seed(self.seed)
            self._initial = [np.asarray(w) for w in
                             check_compiled_model(self.model_fn()).get_weights()]
        return self._model

    def evaluate(self, weights: list) -> dict:
        """Accuracy (and backdoor success) of ``weights`` on the server's test data."""
        from keras_secure.poisoning import attack_success_rate, clean_accuracy

        if self.test_data is None:
            return {}
        model = self._server_model()
        model.set_weights(weights)
        out = {"accuracy": float(clean_accuracy(model, *self.test_data))}
        if self.backdoor is not None:
            trigger, target, mode = self.backdoor
            out["backdoor_success"] = float(attack_success_rate(
                model, *self.test_data, trigger, target=target, mode=mode))
        return out

    def run(self, grid) -> FederatedHistory:
        """Run the federation on a Flower ``Grid`` and return its history."""
        from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

        if self.seed is not None:  # Python, NumPy (Flower's sampling and DP noise), TF
            import keras

            keras.utils.set_random_seed(self.seed)
        self._server_model()
        initial = ArrayRecord(numpy_ndarrays=self._initial)
        evaluations = {}
        start = time.perf_counter()
        times = {}

        def evaluate_fn(server_round, arrays):
            values = self.evaluate(arrays.to_numpy_ndarrays())
            evaluations[server_round] = values
            times[server_round] = time.perf_counter() - start
            if self.verbose and server_round > 0:
                train = result_metrics.get(server_round, {})
                text = ", ".join(f"{k} {v:.3f}" for k, v in values.items())
                extra = f", rejected {train.get('rejected-updates', 0)}" if train.get(
                    "rejected-updates") else ""
                eps = f", epsilon {self.dp.epsilon(server_round):.3f}" if self.dp else ""
                print(f"[federated] {self.aggregator} round {server_round}/{self.num_rounds}: "
                      f"{text}{eps}{extra} ({times[server_round]:.1f}s)", flush=True)
            return MetricRecord(values) if values else None

        result_metrics: dict = {}
        strategy = self.strategy
        original = strategy.aggregate_train

        def aggregate_train(server_round, replies):
            arrays, metrics = original(server_round, replies)
            result_metrics[server_round] = dict(metrics) if metrics is not None else {}
            return arrays, metrics

        strategy.aggregate_train = aggregate_train
        try:
            with _flower_logging(self.verbose):
                result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=self.num_rounds,
                               timeout=self.timeout,
                               train_config=ConfigRecord({"num-clients": self.num_sampled}),
                               evaluate_fn=evaluate_fn)
        finally:
            strategy.aggregate_train = original
        rows = []
        for r in range(self.num_rounds + 1):
            values = evaluations.get(r, {})
            train = result_metrics.get(r, {})
            rows.append({
                "round": r,
                "accuracy": values.get("accuracy"),
                "backdoor_success": values.get("backdoor_success"),
                "epsilon": (self.dp.epsilon(r) if self.dp is not None else None),
                "rejected_updates": int(train.get("rejected-updates", 0)),
                "failed_clients": int(train.get("failed-clients", 0)),
                "missing_clients": int(train.get("missing-clients", 0)),
                "aggregation_skipped": int(train.get("aggregation-skipped", 0)),
                "malicious_clients": int(train.get("malicious-clients", 0)),
                "client_loss": train.get("loss"),
                "client_accuracy": _accuracy_metric(train),
                "local_epsilon": train.get("local-epsilon"),
                "client_metrics": {k: v for k, v in train.items() if k not in _BOOKKEEPING},
                "seconds": times.get(r),
            })
        skipped = [row["round"] for row in rows if row["aggregation_skipped"]]
        if skipped:
            self.notes.append(f"{self.aggregator} returned no model in rounds {skipped} (too few"
                              " valid updates); the global model was kept unchanged there.")
        config = {"aggregator": self.aggregator, "num_clients": self.num_clients,
                  "clients_per_round": self.num_sampled, "num_rounds": self.num_rounds,
                  "num_malicious_assumed": self.num_malicious,
                  "trim_fraction": self.trim_fraction if self.aggregator == "fedtrimmedavg"
                  else None,
                  "dp": None if self.dp is None else {
                      "noise_multiplier": self.dp.noise_multiplier,
                      "clipping_norm": self.dp.clipping_norm, "side": self.dp.side,
                      "delta": self.dp.delta, "accountant": self.dp.accountant,
                      "noise_std": self.dp.noise_std(self.num_sampled)}}
        final = result.arrays.to_numpy_ndarrays() if len(result.arrays) else list(self._initial)
        self.history = FederatedHistory(rows, config, list(self.notes), list(strategy.log),
                                        weights=final)
        return self.history

    def server_app(self):
        """The Flower ``ServerApp`` running :meth:`run` (its history is kept in
        :attr:`history` when it runs in this process)."""
        from flwr.serverapp import ServerApp

        app = ServerApp()
        server = self

        @app.main()
        def main(grid, context):
            server.run(grid)

        return app


@contextlib.contextmanager
def _flower_logging(verbose: int, quiet_level: int = logging.WARNING):
    """Flower logs every round at INFO; keep it for verbose=2 only."""
    logger = logging.getLogger("flwr")
    level = logger.level
    if verbose < 2:
        logger.setLevel(quiet_level)
    try:
        yield
    finally:
        logger.setLevel(level)


class LocalGrid(Grid):
    """A Flower ``Grid`` that delivers each message to a ``ClientApp`` in this process, one
    node after the other: Flower's strategies, messages, records and client mods run
    unchanged, without Flower's Ray engine (whose start-up and per-process TensorFlow import
    cost tens of seconds on a small machine). Deterministic: nodes are served in order.

    Each node keeps its Flower ``Context`` (``node_config`` ``partition-id`` and
    ``num-partitions``, and a ``state`` kept across rounds), as the simulation engine does.
    A client that raises stops the run with its exception.

    Args:
        client_app: the ``flwr.clientapp.ClientApp``.
        num_nodes: nodes (clients), >= 1.

    Example:
        >>> grid = LocalGrid(KerasClients(make_model, parts).client_app(), len(parts))
        >>> FederatedServer(make_model, num_clients=len(parts), num_rounds=3).run(grid)
    """

    def __init__(self, client_app, num_nodes: int):
        from flwr.app import Context, RecordDict

        self.client_app = client_app
        num_nodes = check_number("num_nodes", num_nodes, low=1, integer=True)
        self.node_ids = [1000 + i for i in range(num_nodes)]
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config={
                "partition-id": i, "num-partitions": num_nodes}, state=RecordDict(),
                run_config={})
            for i, node in enumerate(self.node_ids)}
        self._replies: dict = {}
        self._run = None
        # What Flower's runtime sets in a ServerApp process; messages read it when created.
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        from flwr.app import Message

        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self):
        return list(self.node_ids)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in self.contexts:
                raise ValueError(f"No node {node} in this grid (nodes: {self.node_ids}).")
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            delivered = copy.deepcopy(msg)
            reply = self.client_app(delivered, self.contexts[node])
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def simulate(model_fn: Callable, partitions: Sequence, *, num_rounds: int,
             aggregator: str = "fedavg", malicious: Mapping[int, MaliciousBehaviour] | None = None,
             num_malicious: int | None = None, trim_fraction: float = 0.2,
             dp: UserLevelDP | None = None, epochs: int = 1, batch_size: int = 32,
             callbacks: Callable | None = None, test_data=None, backdoor="auto",
             fraction_train: float = 1.0, backend: str = "local", seed: int | None = 0,
             verbose: int = 1, ray_client_cpus: float = 1.0) -> FederatedHistory:
    """Simulate a federation of Keras clients on Flower and return its per-round history:
    global accuracy, backdoor success, epsilon (user-level DP) and rejected updates.

    All checks run before the first round: the model, the partitions, the malicious clients
    against what the aggregator tolerates, DP with the aggregator, the test data.

    Args:
        model_fn: function with no arguments returning a compiled Keras 3 model.
        partitions: one ``(x, y)`` per client (see :func:`iid_partition`,
            :func:`dirichlet_partition`).
        num_rounds: federated rounds, >= 1.
        aggregator: ``"fedavg"``, ``"fedmedian"``, ``"fedtrimmedavg"``, ``"krum"``,
            ``"multikrum"`` or ``"bulyan"`` (Flower's strategies). Defaults to ``"fedavg"``.
        malicious: ``{client_id: behaviour}`` (:class:`LabelFlipping`, :class:`Backdoor`,
            :class:`SignFlip`, :class:`ScaledUpdate`, :class:`ModelReplacement`,
            :class:`CorruptUpdate`). Defaults to none.
        num_malicious: the f the aggregator is told to tolerate; None uses
            ``len(malicious)``. A smaller value is allowed (an aggregator configured for
            fewer attackers than there are) and noted in the history.
        trim_fraction: FedTrimmedAvg's beta. Defaults to 0.2.
        dp: :class:`UserLevelDP` (FedAvg only), or None.
        epochs: local epochs per round. Defaults to 1.
        batch_size: local batch size. Defaults to 32.
        callbacks: None or ``client_id -> list of Keras callbacks`` (e.g. keras_secure's
            ``AdversarialTraining`` or ``DPSGD``), called each round.
        test_data: ``(x, y)`` of the server's evaluation; None skips it (no accuracy column).
        backdoor: the backdoor to measure (a :class:`Backdoor` behaviour, ``(trigger,
            target)`` or ``(trigger, target, mode)``); ``"auto"`` takes the first backdoor
            among the malicious behaviours, with its mode (None if there is none); None
            measures none.
        fraction_train: fraction of clients sampled each round. Defaults to 1.
        backend: ``"local"`` (:class:`LocalGrid`, in this process, deterministic) or
            ``"ray"`` (Flower's simulation engine, ``flwr.simulation.run_simulation``, clients
            in Ray actors). Defaults to ``"local"``.
        seed: seeds partitions' poisoning, local training, client sampling and DP noise.
            Defaults to 0.
        verbose: 0 silent, 1 one line per round, 2 also Flower's logs. Defaults to 1.
        ray_client_cpus: CPUs each Ray client actor takes (``"ray"`` only). Defaults to 1.

    Returns:
        A :class:`FederatedHistory`.

    Raises:
        ValueError / TypeError: before any round, for any bad argument (see
            :class:`KerasClients`, :func:`make_strategy`, :class:`FederatedServer`).
        RuntimeError: if a client fails during a round (its error is quoted).

    Example:
        >>> from keras_secure import federated as fl
        >>> parts = fl.iid_partition(x_train, y_train, num_clients=10)
        >>> history = fl.simulate(make_model, parts, num_rounds=10, aggregator="krum",
        ...                       malicious={0: fl.SignFlip(), 1: fl.SignFlip()},
        ...                       test_data=(x_test, y_test))
        >>> print(history.table())
    """
    backend = check_choice("backend", backend, BACKENDS)
    if malicious is not None and not isinstance(malicious, Mapping):
        raise TypeError("`malicious` must be a dict {client_id: behaviour}, e.g. "
                        "{0: SignFlip()}. Received: " + type(malicious).__name__)
    malicious = dict(malicious or {})
    if num_malicious is None:
        num_malicious = len(malicious)
    num_malicious = check_number("num_malicious", num_malicious, low=0, integer=True)
    if isinstance(partitions, Mapping) and sorted(partitions) != list(range(len(partitions))):
        raise ValueError("A simulation runs clients 0..n-1: `partitions` must be a list, or a "
                         f"mapping with keys 0..n-1. Received keys: {sorted(partitions)}")
    clients = KerasClients(model_fn, partitions, epochs=epochs, batch_size=batch_size,
                           callbacks=callbacks, malicious=malicious,
                           client_side_clipping=dp is not None and dp.side == "client",
                           seed=seed)
    if isinstance(backdoor, str):
        if backdoor != "auto":
            raise ValueError("`backdoor` must be 'auto', None or a (trigger, target) pair. "
                             f"Received: backdoor={backdoor!r}")
        found = [b for b in malicious.values() if isinstance(b, Backdoor)]
        backdoor = found[0] if found and test_data is not None else None
    server = FederatedServer(model_fn, num_clients=len(clients.partitions),
                             num_rounds=num_rounds, aggregator=aggregator,
                             num_malicious=num_malicious, trim_fraction=trim_fraction, dp=dp,
                             fraction_train=fraction_train, test_data=test_data,
                             backdoor=backdoor, seed=seed, verbose=verbose)
    for cid, behaviour in sorted(malicious.items()):
        if behaviour.rounds is not None and min(behaviour.rounds) > num_rounds:
            raise ValueError(
                f"`malicious[{cid}]` attacks in rounds {list(behaviour.rounds)}, but the run "
                f"has {num_rounds} rounds: it would never attack. Received: num_rounds="
                f"{num_rounds}")
    if malicious and aggregator == "fedavg":
        server.notes.append(
            f"FedAvg has no defence against malicious clients; {len(malicious)} are malicious "
            "here (the baseline of the comparison).")
    if len(malicious) > num_malicious and aggregator != "fedavg":
        server.notes.append(
            f"{aggregator} was configured to tolerate {num_malicious} malicious clients; "
            f"{len(malicious)} are malicious.")
    if fraction_train < 1 and dp is not None:
        server.notes.append("Clients are sampled each round; the epsilon reported does not "
                            "use sampling amplification (a valid upper bound).")
    if backend == "local":
        history = server.run(LocalGrid(clients.client_app(), len(clients.partitions)))
    else:
        history = _run_on_ray(server, clients, ray_client_cpus, verbose)
    history.config.update({
        "backend": backend, "epochs": clients.epochs, "batch_size": clients.batch_size,
        "malicious": {str(k): v.describe() for k, v in sorted(malicious.items())},
        "seed": seed})
    return history


def _run_on_ray(server: FederatedServer, clients: KerasClients, cpus: float,
                verbose: int) -> FederatedHistory:
    import os

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    cpus = check_number("ray_client_cpus", cpus, low=0.0, low_inclusive=False)
    server.history = None
    with _flower_logging(verbose):
        run_simulation(server_app=server.server_app(), client_app=clients.client_app(),
                       num_supernodes=len(clients.partitions),
                       backend_config={"client_resources": {"num_cpus": cpus,
                                                            "num_gpus": 0.0}},
                       verbose_logging=verbose >= 2)
    if server.history is None:
        raise RuntimeError("Flower's simulation ended without completing the server's rounds "
                           "(see Flower's log above for the error).")
    return server.history
