"""keras_secure.federated: partitions, malicious clients, Flower's robust aggregators under a
guard, user-level DP accounted with dp-accounting, simulations (docs/federated.md)."""

import math

import dp_accounting
import keras
import numpy as np
import pytest

from keras_secure import federated as fl
from keras_secure.federated.digits_app import make_model  # softmax regression on the digits
from keras_secure.poisoning import PatchTrigger


@pytest.fixture(scope="module")
def data(digits):
    x_train, y_train, x_test, y_test = digits
    return x_train[:600], y_train[:600], x_test[:200], y_test[:200]


# -- partitions ---------------------------------------------------------------------------------

def test_iid_partition_is_a_seeded_disjoint_cover(data):
    x, y = data[0], data[1]
    parts = fl.iid_partition(x, y, 7, seed=3)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(x)
    idx = np.concatenate([p.indices for p in parts])
    assert np.array_equal(np.sort(idx), np.arange(len(x)))
    for p in parts:
        np.testing.assert_array_equal(p.x, x[p.indices])
        np.testing.assert_array_equal(p.y, y[p.indices])
    again = fl.iid_partition(x, y, 7, seed=3)
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(parts, again))


def test_dirichlet_partition_skews_labels_with_small_alpha(data):
    x, y = data[0], data[1]
    skewed = fl.label_distribution(fl.dirichlet_partition(x, y, 10, alpha=0.1, seed=0))
    flat = fl.label_distribution(fl.dirichlet_partition(x, y, 10, alpha=1000.0, seed=0))
    assert skewed.sum() == flat.sum() == len(x)

    def dominant_share(counts):  # share of each client's data in its largest class
        return float(np.mean(counts.max(axis=1) / counts.sum(axis=1)))

    assert dominant_share(skewed) > 0.5 > 0.2 > dominant_share(flat)
    # one-hot labels are kept one-hot and split by class all the same
    onehot = np.eye(10, dtype="float32")[y]
    parts = fl.dirichlet_partition(x, onehot, 10, alpha=0.1, seed=0)
    assert parts[0].y.shape[1] == 10
    np.testing.assert_array_equal(fl.label_distribution(parts), skewed)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_dirichlet_alpha_must_be_positive(data, alpha):
    with pytest.raises(ValueError, match="`alpha` must be a number > 0"):
        fl.dirichlet_partition(data[0], data[1], 5, alpha=alpha)


def test_partition_that_leaves_a_client_empty_is_refused(data):
    x, y = data[0][:30], data[1][:30]
    with pytest.raises(ValueError, match="No Dirichlet.*smallest client"):
        fl.dirichlet_partition(x, y, 20, alpha=0.01, seed=0, max_tries=5)
    with pytest.raises(ValueError, match="num_clients"):
        fl.iid_partition(x, y, 31)
    with pytest.raises(ValueError, match=r"partitions\[1\]` is empty"):
        fl.KerasClients(make_model, [(x, y), (x[:0], y[:0])])


# -- bad input before any round -----------------------------------------------------------------

def test_uncompiled_model_is_refused_before_any_round(data):
    def uncompiled():
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(10)])

    parts = fl.iid_partition(data[0], data[1], 3)
    with pytest.raises(ValueError, match="not compiled"):
        fl.simulate(uncompiled, parts, num_rounds=1)
    with pytest.raises(TypeError, match="model_fn"):
        fl.simulate(make_model(), parts, num_rounds=1)


@pytest.mark.parametrize("aggregator,n,f,rule", [
    ("krum", 10, 4, r"n > 2f \+ 2"), ("multikrum", 6, 2, r"n > 2f \+ 2"),
    ("bulyan", 10, 2, r"n >= 4f \+ 3"), ("fedmedian", 6, 3, "f < n / 2"),
    ("fedtrimmedavg", 10, 3, r"int\(trim_fraction \* n\)")])
def test_more_malicious_clients_than_tolerated_is_refused(aggregator, n, f, rule):
    with pytest.raises(ValueError, match=rule) as err:
        fl.make_strategy(aggregator, num_clients=n, num_malicious=f)
    assert f"at most {fl.max_tolerated(aggregator, n)}" in str(err.value)
    assert f"num_malicious={f}" in str(err.value)


def test_tolerance_limits_match_the_papers():
    assert fl.max_tolerated("krum", 10) == 3          # 10 > 2*3 + 2
    assert fl.max_tolerated("bulyan", 10) == 1        # 10 >= 4*1 + 3
    assert fl.max_tolerated("bulyan", 11) == 2
    assert fl.max_tolerated("fedmedian", 10) == 4
    assert fl.max_tolerated("fedtrimmedavg", 10, 0.2) == 2
    assert fl.max_tolerated("fedavg", 10) == 0


def test_simulate_checks_malicious_clients_against_the_aggregator(data):
    parts = fl.iid_partition(data[0], data[1], 5)
    malicious = {i: fl.SignFlip() for i in range(2)}
    with pytest.raises(ValueError, match="krum cannot tolerate 2 malicious clients among the 5"):
        fl.simulate(make_model, parts, num_rounds=1, aggregator="krum", malicious=malicious)
    with pytest.raises(ValueError, match=r"`malicious` keys must be client ids in \[0, 4\]"):
        fl.simulate(make_model, parts, num_rounds=1, malicious={5: fl.SignFlip()})
    with pytest.raises(ValueError, match="sensitivity"):
        fl.simulate(make_model, parts, num_rounds=1, aggregator="fedmedian",
                    dp=fl.UserLevelDP(1.0, 1.0))


def test_behaviour_arguments_are_checked():
    with pytest.raises(ValueError, match="`scale`"):
        fl.SignFlip(scale=0)
    with pytest.raises(ValueError, match="`rounds`"):
        fl.ScaledUpdate(rounds=[0])
    with pytest.raises(ValueError, match="go together"):
        fl.LabelFlipping(source=1)
    with pytest.raises(ValueError, match="`boost`"):
        fl.ModelReplacement(PatchTrigger(2), boost=-1)
    with pytest.raises(ValueError, match="noise_multiplier"):
        fl.UserLevelDP(0.0, 1.0)


# -- malicious updates ---------------------------------------------------------------------------

def test_update_attacks_against_hand_computed_values():
    g = [np.array([1.0, 2.0]), np.array([[0.5]])]
    w = [np.array([2.0, 0.0]), np.array([[1.5]])]
    flip = fl.SignFlip().poison_update(w, g, num_clients=10, seed=0)
    np.testing.assert_allclose(flip[0], [0.0, 4.0])
    np.testing.assert_allclose(flip[1], [[-0.5]])
    scaled = fl.ScaledUpdate(3.0).poison_update(w, g, num_clients=10, seed=0)
    np.testing.assert_allclose(scaled[0], [4.0, -4.0])
    replace = fl.ModelReplacement(PatchTrigger(2)).poison_update(w, g, num_clients=4, seed=0)
    np.testing.assert_allclose(replace[0], [5.0, -6.0])  # gamma = n = 4
    # averaging the replacement with three clients that send the global model gives X back
    avg = (replace[0] + 3 * g[0]) / 4
    np.testing.assert_allclose(avg, w[0])


def test_data_attacks_reuse_the_poisoning_module(data):
    x, y = data[0][:100], data[1][:100]
    xf, yf = fl.LabelFlipping(source=1, target=7).poison_data(x, y, num_classes=10, seed=0)
    assert np.all(yf[y == 1] == 7) and np.array_equal(yf[y != 1], y[y != 1])
    trigger = PatchTrigger(2)
    xb, yb = fl.Backdoor(trigger, target=3, fraction=0.5).poison_data(x, y, num_classes=10,
                                                                      seed=0)
    changed = np.any(xb != x, axis=(1, 2, 3))
    assert changed.sum() == 50 and np.all(yb[changed] == 3)
    np.testing.assert_allclose(xb[changed], trigger.apply(x[changed]) if hasattr(
        trigger, "apply") else xb[changed])


# -- the guard and DP, on a scripted federation ----------------------------------------------------

def scripted_app(updates):
    """A ClientApp whose node i replies global + updates[i] (arrays), or an arbitrary list."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):
        cid = int(context.node_config["partition-id"])
        g = msg.content["arrays"].to_numpy_ndarrays()
        u = updates[cid]
        arrays = u(g) if callable(u) else [a + b for a, b in zip(g, u)]
        return Message(RecordDict({"arrays": ArrayRecord(numpy_ndarrays=arrays),
                                   "metrics": MetricRecord({"num-examples": 10 * (cid + 1),
                                                            "unit-weight": 1})}),
                       reply_to=msg)

    return app


class DroppingGrid(fl.LocalGrid):
    """A grid whose last node's reply never arrives (a client that timed out)."""

    def send_and_receive(self, messages, *, timeout=None):
        return list(super().send_and_receive(messages, timeout=timeout))[:-1]


def run_scripted(strategy, updates, initial, rounds=1, grid_class=fl.LocalGrid):
    from flwr.app import ArrayRecord

    grid = grid_class(scripted_app(updates), len(updates))
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(numpy_ndarrays=initial),
                            num_rounds=rounds)
    return result


def test_malformed_updates_are_rejected_before_aggregation():
    initial = [np.zeros((3,), "float32"), np.zeros((2, 2), "float32")]
    good = [[np.full(3, float(i + 1), "float32"), np.full((2, 2), 1.0, "float32")]
            for i in range(3)]

    def nan(g):
        return [g[0] + np.array([np.nan, 0, 0], "float32"), g[1]]

    def inf(g):
        return [g[0], g[1] + np.inf]

    def shape(g):
        return [np.zeros((4,), "float32"), g[1]]

    def count(g):
        return [g[0]]

    strategy, _ = fl.make_strategy("fedavg", num_clients=7)
    result = run_scripted(strategy, good + [nan, inf, shape, count], initial)
    arrays = result.arrays.to_numpy_ndarrays()
    # FedAvg of the three good updates only, weighted by num-examples 10, 20, 30
    np.testing.assert_allclose(arrays[0], np.full(3, (10 * 1 + 20 * 2 + 30 * 3) / 60))
    np.testing.assert_allclose(arrays[1], np.ones((2, 2)))
    assert result.train_metrics_clientapp[1]["rejected-updates"] == 4
    reasons = [why for _, why in strategy.log[0]["rejected"]]
    assert any("NaN/inf" in r for r in reasons) and any("shape (4,)" in r for r in reasons)
    assert any("1 arrays" in r for r in reasons)


@pytest.mark.parametrize("side", ["server", "client"])
def test_user_level_dp_clips_and_adds_noise_of_std_sigma_c_over_n(side):
    n, d, clip, sigma = 4, 20000, 0.5, 2.0
    initial = [np.zeros((d,), "float64")]
    # every client sends the same update of norm 10 * C in direction e
    e = np.ones(d) / math.sqrt(d)
    clipped = [e * clip * 0.999] * n if side == "client" else [e * clip * 10] * n
    dp = fl.UserLevelDP(sigma, clip, side=side)
    strategy, _ = fl.make_strategy("fedavg", num_clients=n, dp=dp)
    np.random.seed(0)
    arrays = run_scripted(strategy, [[u] for u in clipped], initial).arrays.to_numpy_ndarrays()
    noise = arrays[0] - np.mean(clipped, axis=0) * (1 if side == "client" else 0.1)
    std = sigma * clip / n
    # the sample std of d normal draws has relative std 1/sqrt(2d); 5 of them as tolerance
    assert abs(noise.std() / std - 1) < 5 / math.sqrt(2 * d)
    assert abs(noise.mean()) < 5 * std / math.sqrt(d)  # the clipped mean update is removed


def test_client_side_dp_rejects_an_update_that_skipped_clipping():
    n, clip = 3, 1.0
    initial = [np.zeros((5,), "float64")]
    dp = fl.UserLevelDP(1e-9, clip, side="client")  # noise negligible
    strategy, _ = fl.make_strategy("fedavg", num_clients=n, dp=dp)
    big = [np.full(5, 10.0)]  # norm 22 > C: the client did not clip
    small = [np.full(5, 0.1)]
    arrays = run_scripted(strategy, [small, small, big], initial).arrays.to_numpy_ndarrays()
    # the unclipped update became a zero update: the average keeps its n = 3 terms
    np.testing.assert_allclose(arrays[0], np.full(5, 0.2 / 3), atol=1e-6)
    assert "above the clipping norm" in strategy.log[0]["rejected"][0][1]


def test_user_level_dp_epsilon_equals_dp_accounting_used_directly():
    for sigma, rounds, accountant in [(1.0, 10, "rdp"), (0.7, 3, "pld"), (2.0, 50, "rdp")]:
        dp = fl.UserLevelDP(sigma, 1.0, delta=1e-5, accountant=accountant)
        acc = (dp_accounting.rdp.RdpAccountant() if accountant == "rdp"
               else dp_accounting.pld.PLDAccountant())
        for _ in range(rounds):  # compose round by round, as a server would
            acc.compose(dp_accounting.GaussianDpEvent(sigma))
        assert dp.epsilon(rounds) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert fl.UserLevelDP(1.0, 1.0).epsilon(0) == 0.0


def test_user_level_dp_epsilon_agrees_with_flowers_own_accountant():
    from flwr.serverapp import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                SamplingMethod)
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    flower = RdpAccountant(PrivacyConfig(
        target_delta=1e-5, population_size=10,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION))
    for _ in range(20):
        flower.compose(GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=10,
                                            population_size=10))
    ours = fl.UserLevelDP(1.0, 1.0, delta=1e-5).epsilon(20)
    assert flower.get_privacy_spent().epsilon == pytest.approx(ours, rel=1e-3)


# -- simulations ----------------------------------------------------------------------------------

def test_simulation_learns_and_is_deterministic(data):
    x, y, xt, yt = data
    parts = fl.iid_partition(x, y, 4, seed=0)
    runs = [fl.simulate(make_model, parts, num_rounds=2, test_data=(xt, yt), verbose=0)
            for _ in range(2)]
    acc = runs[0].column("accuracy")
    assert acc[0] < 0.3 and acc[2] > 0.75
    assert acc == runs[1].column("accuracy")
    assert runs[0].final["client_loss"] > 0 and runs[0].final["rejected_updates"] == 0
    assert "| Round | Accuracy |" in runs[0].table()
    assert runs[0].to_dataframe().shape[0] == 3


def test_model_replacement_beats_fedavg_but_not_krum(data):
    x, y, xt, yt = data
    parts = fl.iid_partition(x, y, 6, seed=0)
    # Bagdasaryan et al. attack once, late, when the global model has converged
    attack = {0: fl.ModelReplacement(PatchTrigger(2), target=0, fraction=0.5, rounds=[3])}
    fedavg = fl.simulate(make_model, parts, num_rounds=3, malicious=attack,
                         test_data=(xt, yt), verbose=0)
    krum = fl.simulate(make_model, parts, num_rounds=3, aggregator="krum", malicious=attack,
                       test_data=(xt, yt), verbose=0)
    assert fedavg.column("malicious_clients") == [0, 0, 0, 1]
    assert fedavg.rounds[2]["backdoor_success"] < 0.2
    assert fedavg.final["backdoor_success"] > 0.8
    assert krum.final["backdoor_success"] < 0.3 and krum.final["accuracy"] > 0.7
    assert fedavg.config["malicious"] == {"0": "model replacement -> 0"}
    assert krum.final["malicious_clients"] == 1


def test_a_corrupt_client_cannot_poison_the_global_model(data):
    x, y, xt, yt = data
    parts = fl.iid_partition(x, y, 4, seed=0)
    history = fl.simulate(make_model, parts, num_rounds=2, test_data=(xt, yt), verbose=0,
                          malicious={1: fl.CorruptUpdate("nan")})
    assert history.column("rejected_updates") == [0, 1, 1]
    assert history.final["accuracy"] > 0.75


def test_local_dpsgd_epsilon_composes_over_rounds(data):
    from keras_secure.callbacks import DPSGD
    from keras_secure.privacy import compute_epsilon

    x, y, xt, yt = data
    parts = fl.iid_partition(x[:200], y[:200], 2, seed=0)

    def callbacks(cid):
        return [DPSGD(1.0, 1.1, num_examples=len(parts[cid]), batch_size=25, delta=1e-5,
                      sampling="shuffle")]

    history = fl.simulate(make_model, parts, num_rounds=3, batch_size=25, callbacks=callbacks,
                          test_data=(xt, yt), verbose=0)
    eps = history.column("local_epsilon")[1:]
    expected = [compute_epsilon(1.1, 100, 25, delta=1e-5, epochs=r, sampling="shuffle")
                for r in (1, 2, 3)]
    np.testing.assert_allclose(eps, expected, rtol=1e-9)


def test_adversarial_training_clients_report_robust_accuracy(data):
    from keras_secure.attacks import FGSM
    from keras_secure.callbacks import AdversarialTraining, RobustnessMonitor

    x, y, xt, yt = data
    parts = fl.iid_partition(x[:200], y[:200], 2, seed=0)
    attack = FGSM(eps=0.1, value_range=(0.0, 1.0))

    def callbacks(cid):
        part = parts[cid]
        return [AdversarialTraining(attack),
                RobustnessMonitor(part.x[:50], part.y[:50], attack)]

    history = fl.simulate(make_model, parts, num_rounds=1, test_data=(xt, yt), verbose=0,
                          callbacks=callbacks)
    assert np.isfinite(history.final["client_loss"])
    robust = history.final["client_metrics"]["val_robust_accuracy"]
    assert 0.0 <= robust <= 1.0  # the monitor's logs reached the server


@pytest.mark.slow
def test_flowers_ray_engine_gives_the_in_process_results(data):
    """The same federation on Flower's simulation engine (clients in Ray actors) and on the
    in-process grid: same seeds, same per-round accuracy and backdoor success."""
    x, y, xt, yt = data
    parts = fl.iid_partition(x[:300], y[:300], 3, seed=0)
    kwargs = dict(num_rounds=2, aggregator="fedmedian", test_data=(xt, yt), verbose=0,
                  malicious={2: fl.Backdoor(PatchTrigger(2), target=0)}, num_malicious=1)
    local = fl.simulate(make_model, parts, backend="local", **kwargs)
    ray = fl.simulate(make_model, parts, backend="ray", **kwargs)
    for key in ("accuracy", "backdoor_success", "malicious_clients"):
        np.testing.assert_allclose(ray.column(key), local.column(key), atol=1e-6)
    assert ray.config["backend"] == "ray"


def test_a_node_can_hold_only_its_own_partition(data):
    """Deployment: a SuperNode's clients hold {partition_id: (x, y)} for that node only."""
    from flwr.app import Context, RecordDict

    x, y = data[0], data[1]
    clients = fl.KerasClients(make_model, {3: (x[:50], y[:50])})

    def context(pid):
        return Context(run_id=1, node_id=7, node_config={"partition-id": pid},
                       state=RecordDict(), run_config={})

    assert clients.client_id(context(3)) == 3
    with pytest.raises(ValueError, match=r"client ids these clients hold data for, \[3\]"):
        clients.client_id(context(0))
    weights = make_model().get_weights()
    local, metrics = clients.fit(weights, 3, server_round=1)
    assert metrics["num-examples"] == 50 and len(local) == len(weights)
    with pytest.raises(ValueError, match="keys 0..n-1"):
        fl.simulate(make_model, {3: (x[:50], y[:50])}, num_rounds=1)


# -- found by a new user's trial ---------------------------------------------------------------------

def test_all_to_all_backdoor_is_measured_as_all_to_all(data):
    from keras_secure.poisoning import attack_success_rate

    x, y, xt, yt = data
    trigger = PatchTrigger(2)
    parts = fl.iid_partition(x[:300], y[:300], 2, seed=0)
    malicious = {0: fl.Backdoor(trigger, mode="all_to_all", fraction=0.5)}
    history = fl.simulate(make_model, parts, num_rounds=1, epochs=5, test_data=(xt, yt),
                          malicious=malicious, verbose=0)
    model = make_model()
    model.set_weights(history.weights)
    expected = attack_success_rate(model, xt, yt, trigger, mode="all_to_all")
    assert history.final["backdoor_success"] == pytest.approx(expected, abs=1e-12)
    assert history.config["malicious"] == {"0": "backdoor (all-to-all)"}


def test_integer_weights_keep_their_dtype_and_the_model_keeps_learning(data):
    x, y, xt, yt = data
    flat = x.reshape(len(x), -1)

    def normalized_model():
        norm = keras.layers.Normalization()
        norm.adapt(flat[:100])  # its `count` weight is int64
        model = keras.Sequential([keras.Input((64,)), norm, keras.layers.Dense(10)])
        model.compile(keras.optimizers.Adam(0.05),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    parts = fl.iid_partition(flat, y, 3, seed=0)
    history = fl.simulate(normalized_model, parts, num_rounds=3,
                          test_data=(xt.reshape(len(xt), -1), yt), verbose=0)
    assert history.column("rejected_updates") == [0, 0, 0, 0]
    acc = history.column("accuracy")
    assert acc[3] > acc[1]
    dtypes = [np.asarray(w).dtype for w in history.weights]
    assert dtypes == [np.asarray(w).dtype for w in normalized_model().get_weights()]


@pytest.mark.parametrize("side", ["server", "client"])
def test_dp_with_a_rejected_or_zero_update_runs(data, side):
    x, y, xt, yt = data
    parts = fl.iid_partition(x[:300], y[:300], 3, seed=0)
    dp = fl.UserLevelDP(1.0, 0.5, side=side)
    corrupt = fl.simulate(make_model, parts, num_rounds=1, dp=dp, test_data=(xt, yt),
                          malicious={0: fl.CorruptUpdate("nan")}, verbose=0)
    assert corrupt.final["rejected_updates"] == 1
    zero = fl.simulate(make_model, parts, num_rounds=1, dp=dp, test_data=(xt, yt),
                       malicious={0: fl.ScaledUpdate(0.0)}, verbose=0)
    assert np.isfinite(zero.final["accuracy"])


def test_client_side_dp_catches_a_malicious_client_that_does_not_clip(data):
    x, y, xt, yt = data
    parts = fl.iid_partition(x[:300], y[:300], 3, seed=0)
    history = fl.simulate(make_model, parts, num_rounds=1, test_data=(xt, yt), verbose=0,
                          dp=fl.UserLevelDP(1.0, 0.5, side="client"),
                          malicious={0: fl.ScaledUpdate(50.0)})
    assert history.final["rejected_updates"] == 1
    assert "above the clipping norm" in history.rejections[0]["rejected"][0][1]


def test_dropout_model_is_deterministic(data):
    x, y, xt, yt = data

    def dropout_model():
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dropout(0.5), keras.layers.Dense(10)])
        model.compile(keras.optimizers.Adam(0.01),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    parts = fl.iid_partition(x[:300], y[:300], 3, seed=0)
    runs = [fl.simulate(dropout_model, parts, num_rounds=2, test_data=(xt, yt), verbose=0,
                        seed=5) for _ in range(2)]
    assert runs[0].column("accuracy") == runs[1].column("accuracy")
    assert runs[0].column("client_loss") == runs[1].column("client_loss")


def test_more_user_mistakes_get_clear_errors(data):
    x, y, xt, yt = data
    parts = fl.iid_partition(x[:100], y[:100], 2, seed=0)
    with pytest.raises(TypeError, match="`malicious` must be a dict"):
        fl.simulate(make_model, parts, num_rounds=1, malicious=[fl.SignFlip()])
    onehot = [(p.x, np.eye(10, dtype="float32")[p.y]) for p in parts]
    with pytest.raises(ValueError, match=r"cannot take `partitions\[0\]`'s labels"):
        fl.simulate(make_model, onehot, num_rounds=1)
    with pytest.raises(ValueError, match="would never attack"):
        fl.simulate(make_model, parts, num_rounds=1, malicious={0: fl.SignFlip(rounds=[5])})
    with pytest.raises(ValueError, match="`test_data x` and `test_data y`"):
        fl.simulate(make_model, parts, num_rounds=1, test_data=(xt, yt[:-1]))
    with pytest.raises(ValueError, match=r"\(`num_classes`=5\)"):
        fl.dirichlet_partition(x[:100], y[:100], 2, alpha=1.0, num_classes=5)
    history = fl.simulate(make_model, parts, num_rounds=1, malicious={0: fl.SignFlip()},
                          verbose=0)
    assert any("FedAvg has no defence" in note for note in history.notes)


def test_client_accuracy_reads_any_accuracy_metric():
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")

    def binary_model():
        model = keras.Sequential([keras.Input((30,)), keras.layers.Dense(1,
                                                                         activation="sigmoid")])
        model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy",
                      metrics=[keras.metrics.BinaryAccuracy()])
        return model

    parts = fl.iid_partition(x[:400], y[:400], 2, seed=0)
    history = fl.simulate(binary_model, parts, num_rounds=1, test_data=(x[400:], y[400:]),
                          verbose=0)
    assert history.final["client_accuracy"] == history.final["client_metrics"][
        "binary_accuracy"]
    assert history.final["accuracy"] > 0.8


def test_a_missing_reply_is_counted_and_refused_under_dp():
    initial = [np.zeros((3,), "float64")]
    updates = [[np.full(3, 0.1)]] * 3
    strategy, _ = fl.make_strategy("fedavg", num_clients=3)
    result = run_scripted(strategy, updates, initial, grid_class=DroppingGrid)
    assert result.train_metrics_clientapp[1]["missing-clients"] == 1
    dp_strategy, _ = fl.make_strategy("fedavg", num_clients=3, dp=fl.UserLevelDP(1.0, 1.0))
    with pytest.raises(RuntimeError, match="1 of the 3 sampled clients did not reply"):
        run_scripted(dp_strategy, updates, initial, grid_class=DroppingGrid)
