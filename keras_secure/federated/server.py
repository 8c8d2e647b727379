"""The server side: Flower's aggregation strategies by name, checked against the number of
malicious clients they tolerate; Flower's user-level DP wrappers with dp-accounting; and the
guard that rejects malformed updates before aggregation (docs/federated.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.serverapp.strategy import Strategy

from keras_secure.federated.client import NUM_EXAMPLES_KEY, UNIT_WEIGHT_KEY
from keras_secure.validation import check_choice, check_number

AGGREGATORS = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")

#: What each aggregator tolerates, with the paper: f malicious among n sampled clients.
TOLERANCE = {
    "fedavg": ("no malicious client (one arbitrary update moves the mean anywhere)", None),
    "fedmedian": ("f < n / 2 (coordinate-wise median; Yin et al. 2018)",
                  lambda n, f, beta: 2 * f < n),
    "fedtrimmedavg": ("f <= int(trim_fraction * n), trim_fraction < 0.5 (coordinate-wise "
                      "trimmed mean; Yin et al. 2018)",
                      lambda n, f, beta: f <= int(beta * n)),
    "krum": ("n > 2f + 2 (Blanchard et al. 2017)", lambda n, f, beta: n > 2 * f + 2),
    "multikrum": ("n > 2f + 2 (Blanchard et al. 2017)", lambda n, f, beta: n > 2 * f + 2),
    "bulyan": ("n >= 4f + 3 (El Mhamdi et al. 2018)", lambda n, f, beta: n >= 4 * f + 3),
}


def max_tolerated(aggregator: str, num_clients: int, trim_fraction: float = 0.2) -> int:
    """The largest number of malicious clients ``aggregator`` tolerates among ``num_clients``
    sampled per round (0 for FedAvg).

    Example:
        >>> max_tolerated("krum", 10)
        3
    """
    aggregator = check_choice("aggregator", aggregator, AGGREGATORS)
    rule = TOLERANCE[aggregator][1]
    if rule is None:
        return 0
    best = 0
    for f in range(num_clients + 1):
        if rule(num_clients, f, trim_fraction):
            best = f
    return best


@dataclass(frozen=True)
class UserLevelDP:
    """User-level differential privacy for FedAvg (McMahan et al. 2018, "Learning
    Differentially Private Recurrent Language Models"): each client's update is clipped to L2
    norm ``clipping_norm``, updates are averaged with equal weights over the ``n`` sampled
    clients, and Gaussian noise of std ``noise_multiplier * clipping_norm / n`` is added to
    the average. The noise is added by Flower's ``DifferentialPrivacyClientSideFixedClipping``
    wrapper. With ``side="client"`` each client clips its own update (Flower's
    ``fixedclipping_mod``) and the server checks every update's norm (see
    :class:`UpdateGuard`); with ``side="server"`` the :class:`UpdateGuard` clips each update
    with :func:`clip_update` (Flower's server-side wrapper computes the same clipping, but
    divides by the update's norm and fails on a zero update).

    Privacy is accounted with ``dp_accounting`` for add/remove-one-client adjacency: each round
    is a Gaussian mechanism with ``noise_multiplier`` (sensitivity ``clipping_norm / n``);
    rounds compose. With every client in every round there is no sampling amplification;
    with ``fraction_train < 1`` the clients are sampled without replacement in fixed-size
    rounds, and the epsilon reported is the one without amplification (valid, larger).

    Args:
        noise_multiplier: sigma, > 0.
        clipping_norm: C, the L2 bound of one client's update (weights after minus before),
            > 0.
        side: ``"server"`` or ``"client"`` clipping. Defaults to ``"server"``.
        delta: the delta of the reported epsilon, in (0, 1). Defaults to 1e-5.
        accountant: ``"rdp"`` or ``"pld"`` (dp-accounting). Defaults to ``"rdp"``.

    Example:
        >>> UserLevelDP(noise_multiplier=1.0, clipping_norm=0.5)
    """

    noise_multiplier: float
    clipping_norm: float
    side: str = "server"
    delta: float = 1e-5
    accountant: str = "rdp"

    def __post_init__(self):
        check_number("noise_multiplier", self.noise_multiplier, low=0.0, low_inclusive=False)
        check_number("clipping_norm", self.clipping_norm, low=0.0, low_inclusive=False)
        check_choice("side", self.side, ("server", "client"))
        check_number("delta", self.delta, low=0.0, high=1.0, low_inclusive=False,
                     high_inclusive=False)
        check_choice("accountant", self.accountant, ("rdp", "pld"))

    def epsilon(self, rounds: int) -> float:
        """Epsilon at :attr:`delta` after ``rounds`` rounds, from ``dp_accounting``.

        Example:
            >>> UserLevelDP(1.0, 0.5).epsilon(10)
        """
        import dp_accounting

        from keras_secure.privacy.accounting import make_accountant

        rounds = check_number("rounds", rounds, low=0, integer=True)
        if rounds == 0:
            return 0.0
        acc = make_accountant(self.accountant)
        acc.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.GaussianDpEvent(self.noise_multiplier), rounds))
        return float(acc.get_epsilon(self.delta))

    def noise_std(self, num_sampled: int) -> float:
        """Std of the noise added to the averaged weights: ``sigma * C / n``."""
        return self.noise_multiplier * self.clipping_norm / num_sampled


def clip_update(weights: list, global_weights: list, clipping_norm: float) -> list:
    """``global + update * min(1, C / ||update||)`` with ``update = weights - global`` and the
    L2 norm taken over every array together (McMahan et al. 2018's per-user clipping). A zero
    update is returned as it is (Flower's own clipping divides by its norm and raises
    ``ZeroDivisionError`` for it).

    Example:
        >>> clip_update([np.array([3.0, 4.0])], [np.zeros(2)], 1.0)
        [array([0.6, 0.8])]
    """
    updates = [np.asarray(w, np.float64) - np.asarray(g, np.float64)
               for w, g in zip(weights, global_weights)]
    norm = math.sqrt(sum(float(np.sum(u * u)) for u in updates))
    scale = 1.0 if norm <= clipping_norm or norm == 0 else clipping_norm / norm
    return [(np.asarray(g, np.float64) + scale * u).astype(np.asarray(w).dtype)
            for w, g, u in zip(weights, global_weights, updates)]


def _aggregate_metrics(contents, weighted_by_key: str):
    """Per-round client metrics: weighted means by ``num-examples``, except counts (summed)
    and epsilons (max over clients: the privacy of the least private client)."""
    from flwr.app import MetricRecord

    sums, weights, out = {}, {}, {}
    for content in contents:
        record = next(iter(content.metric_records.values()))
        w = float(record.get(NUM_EXAMPLES_KEY, 1))
        for key, value in record.items():
            if isinstance(value, (list, tuple)):
                continue
            if key in (NUM_EXAMPLES_KEY, UNIT_WEIGHT_KEY, "malicious"):
                out[key] = out.get(key, 0) + value
            elif key.endswith("epsilon"):
                out[key] = max(out.get(key, -math.inf), float(value))
            else:
                sums[key] = sums.get(key, 0.0) + w * float(value)
                weights[key] = weights.get(key, 0.0) + w
    out.update({k: sums[k] / weights[k] for k in sums if weights[k] > 0})
    return MetricRecord(out)


def _flower_strategy(aggregator, *, num_sampled, num_malicious, trim_fraction,
                     multikrum_select, weighted_by_key, fraction_train, fraction_evaluate,
                     min_available):
    from flwr.serverapp import strategy as S

    common = dict(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                  min_train_nodes=num_sampled, min_evaluate_nodes=0 if fraction_evaluate == 0
                  else max(1, min(num_sampled, min_available)),
                  min_available_nodes=min_available, weighted_by_key=weighted_by_key,
                  train_metrics_aggr_fn=_aggregate_metrics,
                  evaluate_metrics_aggr_fn=_aggregate_metrics)
    if aggregator == "fedavg":
        return S.FedAvg(**common)
    if aggregator == "fedmedian":
        return S.FedMedian(**common)
    if aggregator == "fedtrimmedavg":
        return S.FedTrimmedAvg(beta=trim_fraction, **common)
    if aggregator == "krum":
        return S.Krum(num_malicious_nodes=num_malicious, **common)
    if aggregator == "multikrum":
        return S.MultiKrum(num_malicious_nodes=num_malicious,
                           num_nodes_to_select=multikrum_select, **common)
    return S.Bulyan(num_malicious_nodes=num_malicious, **common)


class UpdateGuard(Strategy):
    """A Flower strategy wrapper that checks every client update before aggregation and
    rejects the malformed ones: arrays of the wrong number, shape or dtype kind, NaN or inf
    values, a ``num-examples``/``unit-weight`` that is not a positive finite number (or, under
    user-level DP, a ``unit-weight`` other than 1) and, with client-side DP clipping, an
    update whose L2 norm exceeds the clipping norm the clients were told to apply.

    Without DP a rejected update is dropped. Under user-level DP it is replaced by the
    current global model (a zero update), so the average keeps its ``n`` terms and the noise
    its calibration. The counts are added to the round's train metrics: ``rejected-updates``,
    ``malicious-clients`` (replies whose ``malicious`` metric is 1: simulation bookkeeping),
    ``failed-clients`` (clients that replied with an error) and ``aggregation-skipped`` (1
    when the strategy returned no model, e.g. Bulyan with too few valid updates) and
    ``missing-clients`` (sampled clients that did not reply before the timeout).

    Args:
        strategy: the Flower strategy to protect.
        dp: the :class:`UserLevelDP` the strategy applies, or None.
        fail_on_client_error: raise when a client replies with an error (a bug in the client
            code would otherwise leave the global model unchanged without a word). Defaults
            to True.
        num_sampled: clients sampled per round. Under user-level DP a round with fewer
            replies (a client timed out) is an error: the noise is calibrated to n replies.
            Otherwise the shortfall is counted as ``missing-clients``. Defaults to None (not
            checked).

    Example:
        >>> guarded = UpdateGuard(flwr.serverapp.strategy.FedMedian(), num_sampled=10)
        >>> guarded.log[-1]["rejected"]        # after a round: (node, why) pairs
    """

    def __init__(self, strategy, dp: UserLevelDP | None = None,
                 fail_on_client_error: bool = True, num_sampled: int | None = None):
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise TypeError("`strategy` must be a flwr.serverapp.strategy.Strategy. Received: "
                            f"{type(strategy).__name__}")
        self.strategy = strategy
        self.dp = dp
        self.fail_on_client_error = bool(fail_on_client_error)
        self.num_sampled = num_sampled
        self.current = None
        self.log: list[dict] = []  # one entry per round: rejected clients and why

    # The Strategy interface, delegated to the wrapped strategy.
    def summary(self):
        self.strategy.summary()

    def configure_train(self, server_round, arrays, config, grid):
        self.current = arrays.to_numpy_ndarrays()
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.strategy.aggregate_evaluate(server_round, replies)

    def problem(self, content) -> str | None:
        """Why a reply's content is malformed, or None if it is acceptable."""
        arrays = [r for r in content.array_records.values()]
        metrics = [r for r in content.metric_records.values()]
        if len(arrays) != 1 or len(metrics) != 1:
            return f"{len(arrays)} array records and {len(metrics)} metric records (expected 1+1)"
        record = metrics[0]
        for key in (NUM_EXAMPLES_KEY, UNIT_WEIGHT_KEY):
            value = record.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value <= 0:
                return f"metric {key!r} is {value!r}, not a positive finite number"
        if self.dp is not None and record.get(UNIT_WEIGHT_KEY) != 1:
            return f"unit-weight {record.get(UNIT_WEIGHT_KEY)!r} under user-level DP (must be 1)"
        try:
            received = arrays[0].to_numpy_ndarrays()
        except Exception as err:  # noqa: BLE001 - an undecodable record is malformed
            return f"arrays that cannot be decoded ({err})"
        if len(received) != len(self.current):
            return f"{len(received)} arrays, the global model has {len(self.current)}"
        sq = 0.0
        for i, (r, g) in enumerate(zip(received, self.current)):
            if r.shape != g.shape:
                return f"array {i} of shape {r.shape}, the global model's is {g.shape}"
            if not np.issubdtype(r.dtype, np.number) or (
                    np.issubdtype(g.dtype, np.floating) != np.issubdtype(r.dtype, np.floating)):
                return f"array {i} of dtype {r.dtype}, the global model's is {g.dtype}"
            if not np.isfinite(r).all():
                return f"array {i} holds {int((~np.isfinite(r)).sum())} NaN/inf values"
            sq += float(np.sum((r.astype(np.float64) - g.astype(np.float64)) ** 2))
        if self.dp is not None and self.dp.side == "client":
            norm = math.sqrt(sq)
            if norm > self.dp.clipping_norm * (1 + 1e-5) + 1e-7:
                return (f"update norm {norm:.4g} above the clipping norm "
                        f"{self.dp.clipping_norm:g} (client-side clipping skipped)")
        return None

    def _clip(self, msg) -> None:
        """Replace a reply's arrays by ``global + clip(update, C)``."""
        from flwr.app import Array, ArrayRecord

        key = next(iter(msg.content.array_records.keys()))
        record = msg.content.array_records[key]
        clipped = clip_update(record.to_numpy_ndarrays(), self.current, self.dp.clipping_norm)
        msg.content.array_records[key] = ArrayRecord(
            {k: Array(np.asarray(a)) for k, a in zip(record.keys(), clipped)})

    def _as_global_dtypes(self, arrays):
        from flwr.app import Array, ArrayRecord

        values = arrays.to_numpy_ndarrays()
        cast = []
        for value, g in zip(values, self.current):
            if np.issubdtype(g.dtype, np.integer):
                value = np.rint(value)
            cast.append(np.asarray(value).astype(g.dtype, copy=False))
        return ArrayRecord({k: Array(v) for k, v in zip(arrays.keys(), cast)})

    def aggregate_train(self, server_round, replies):
        from flwr.app import ArrayRecord, MetricRecord, RecordDict

        replies = list(replies)
        kept, rejected, failed = [], [], []
        for msg in replies:
            if msg.has_error():
                failed.append((msg.metadata.src_node_id, msg.error.reason))
                continue
            why = self.problem(msg.content)
            if why is None:
                kept.append(msg)
                continue
            rejected.append((msg.metadata.src_node_id, why))
            if self.dp is not None:  # a zero update keeps the DP average's n terms
                metrics = msg.content.metric_records
                record = next(iter(metrics.values())) if len(metrics) == 1 else None
                weight = {NUM_EXAMPLES_KEY: 1, UNIT_WEIGHT_KEY: 1}
                if record is not None:
                    for key, value in record.items():
                        if key not in weight and isinstance(value, (int, float)) and \
                                math.isfinite(value):
                            weight[key] = value
                msg.content = RecordDict({"arrays": ArrayRecord(numpy_ndarrays=[
                    np.array(g, copy=True) for g in self.current]),
                    "metrics": MetricRecord(weight)})
                kept.append(msg)
        missing = 0 if self.num_sampled is None else max(self.num_sampled - len(replies), 0)
        self.log.append({"round": int(server_round), "rejected": rejected, "failed": failed,
                         "missing": missing})
        if missing and self.dp is not None:
            raise RuntimeError(
                f"{missing} of the {self.num_sampled} sampled clients did not reply in round "
                f"{server_round}: user-level DP's noise is calibrated to an average over "
                f"{self.num_sampled} updates, so averaging fewer would spend more privacy than "
                "the epsilon reported. Raise the round's timeout or check the clients.")
        if failed and self.fail_on_client_error:
            node, reason = failed[0]
            raise RuntimeError(
                f"{len(failed)} of {len(replies)} clients failed in round {server_round}; the "
                f"first (node {node}) replied: {reason}")
        if self.dp is not None and self.dp.side == "server":
            for msg in kept:  # the server clips each update to C (see clip_update)
                self._clip(msg)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        if arrays is not None:  # the aggregate in the global model's dtypes (int weights stay int)
            arrays = self._as_global_dtypes(arrays)
        values = dict(metrics) if metrics is not None else {}
        attacking = 0  # simulation bookkeeping: clients that say they attacked this round
        for msg in replies:
            if not msg.has_error():
                for record in msg.content.metric_records.values():
                    value = record.get("malicious", 0)
                    attacking += int(value) if isinstance(value, (int, float)) else 0
        values.update({"malicious-clients": attacking, "missing-clients": missing,
                       "rejected-updates": len(rejected), "failed-clients": len(failed),
                       "aggregation-skipped": int(arrays is None)})
        return arrays, MetricRecord(values)


def make_strategy(aggregator: str = "fedavg", *, num_clients: int, num_malicious: int = 0,
                  trim_fraction: float = 0.2, multikrum_select: int | None = None,
                  dp: UserLevelDP | None = None, fraction_train: float = 1.0,
                  fraction_evaluate: float = 0.0):
    """A Flower strategy by name, checked against the malicious clients it must tolerate,
    optionally with user-level DP, wrapped in an :class:`UpdateGuard`.

    Aggregators (Flower's own implementations): ``"fedavg"`` (McMahan et al. 2017, weighted by
    ``num-examples``), ``"fedmedian"`` and ``"fedtrimmedavg"`` (coordinate-wise median and
    trimmed mean, Yin et al. 2018), ``"krum"`` and ``"multikrum"`` (Blanchard et al. 2017),
    ``"bulyan"`` (El Mhamdi et al. 2018).

    Args:
        aggregator: one of :data:`AGGREGATORS`. Defaults to ``"fedavg"``.
        num_clients: clients connected to the federation, >= 1.
        num_malicious: the f the aggregator is built to tolerate (Krum, MultiKrum, Bulyan use
            it; the median and trimmed mean are checked against it). Defaults to 0.
        trim_fraction: FedTrimmedAvg's beta, cut from each end, in [0, 0.5). Defaults to 0.2.
        multikrum_select: updates MultiKrum averages; None uses ``n - f``. Defaults to None.
        dp: a :class:`UserLevelDP` (FedAvg only), or None.
        fraction_train: fraction of the clients sampled each round, in (0, 1]. Defaults to 1.
        fraction_evaluate: fraction of clients running federated evaluation each round, in
            [0, 1]; 0 leaves evaluation to the server. Defaults to 0.

    Returns:
        ``(strategy, num_sampled)``: the guarded Flower strategy and the clients per round.

    Raises:
        ValueError: before any round, for an unknown aggregator, more malicious clients than
            the aggregator tolerates (the rule and the largest f allowed are named), DP with a
            robust aggregator (its sensitivity is not ``C / n``), or numbers out of range.

    Example:
        >>> strategy, n = make_strategy("krum", num_clients=10, num_malicious=2)
    """
    aggregator = check_choice("aggregator", aggregator, AGGREGATORS)
    num_clients = check_number("num_clients", num_clients, low=1, integer=True)
    num_malicious = check_number("num_malicious", num_malicious, low=0, high=num_clients,
                                 integer=True)
    trim_fraction = check_number("trim_fraction", trim_fraction, low=0.0, high=0.5,
                                 high_inclusive=False)
    fraction_train = check_number("fraction_train", fraction_train, low=0.0, high=1.0,
                                  low_inclusive=False)
    fraction_evaluate = check_number("fraction_evaluate", fraction_evaluate, low=0.0, high=1.0)
    if dp is not None and not isinstance(dp, UserLevelDP):
        raise TypeError("`dp` must be a keras_secure.federated.UserLevelDP or None. Received: "
                        f"{type(dp).__name__}")
    num_sampled = max(int(num_clients * fraction_train), 1)
    if aggregator != "fedavg":
        rule_text, rule = TOLERANCE[aggregator]
        if not rule(num_sampled, num_malicious, trim_fraction):
            raise ValueError(
                f"{aggregator} cannot tolerate {num_malicious} malicious clients among the "
                f"{num_sampled} sampled each round: it needs {rule_text}; here at most "
                f"{max_tolerated(aggregator, num_sampled, trim_fraction)}. Use more clients, "
                "another aggregator" + (" or a larger `trim_fraction`"
                                         if aggregator == "fedtrimmedavg" else "") +
                f". Received: num_malicious={num_malicious}, num_clients={num_clients}, "
                f"fraction_train={fraction_train:g}")
    if multikrum_select is None:
        multikrum_select = max(num_sampled - num_malicious, 1)
    multikrum_select = check_number("multikrum_select", multikrum_select, low=1,
                                    high=num_sampled, integer=True)
    if dp is not None and aggregator != "fedavg":
        raise ValueError(
            "User-level DP is accounted for FedAvg's equal-weight average, whose sensitivity "
            f"to one client is clipping_norm / n; {aggregator}'s output has another "
            "sensitivity, so the epsilon reported would be wrong. Use aggregator='fedavg' "
            f"with `dp`. Received: aggregator={aggregator!r}")
    weighted_by = UNIT_WEIGHT_KEY if dp is not None else NUM_EXAMPLES_KEY
    inner = _flower_strategy(aggregator, num_sampled=num_sampled, num_malicious=num_malicious,
                             trim_fraction=trim_fraction, multikrum_select=multikrum_select,
                             weighted_by_key=weighted_by, fraction_train=fraction_train,
                             fraction_evaluate=fraction_evaluate, min_available=num_clients)
    if dp is not None:
        from flwr.serverapp import strategy as S

        # Flower's client-side wrapper adds the noise sigma C / n to the equal-weight average
        # in both cases; with side="server" the UpdateGuard clips each update first (Flower's
        # server-side wrapper computes the same clipping but raises ZeroDivisionError on a
        # zero update, e.g. the one the guard puts in place of a rejected update).
        inner = S.DifferentialPrivacyClientSideFixedClipping(
            inner, noise_multiplier=dp.noise_multiplier, clipping_norm=dp.clipping_norm,
            num_sampled_clients=num_sampled)
    return UpdateGuard(inner, dp=dp, num_sampled=num_sampled), num_sampled
