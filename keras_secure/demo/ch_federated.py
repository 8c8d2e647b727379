"""Chapter: federated learning on Flower - ten digits clients, two of them malicious (model
replacement), FedAvg against Flower's robust aggregators, user-level DP at two noise levels,
and where a robust aggregator fails (Krum on non-IID data)."""

from __future__ import annotations

import keras

from keras_secure import datasets
from keras_secure import federated as fl
from keras_secure.poisoning import PatchTrigger

#: runs in the demo's child process, in parallel with the chapters before it (runner.py)
IN_CHILD_PROCESS = True

NUM_CLIENTS = 10
MALICIOUS = (0, 1)
TARGET = 0
AGGREGATORS = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
NAMES = {"fedavg": "FedAvg", "fedmedian": "FedMedian", "fedtrimmedavg": "FedTrimmedAvg (0.2)",
         "krum": "Krum", "multikrum": "MultiKrum", "bulyan": "Bulyan"}


def make_model():
    """The clients' model: a two-layer perceptron on the 8x8 digits (logits)."""
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def settings(quick: bool) -> dict:
    """The experiment's budget: rounds, attack rounds, aggregators, DP noise levels."""
    rounds = 3 if quick else 10
    return {"rounds": rounds,
            # Bagdasaryan et al. attack a model that has (nearly) converged
            "attack_rounds": [rounds] if quick else [6, 8, 10],
            "epochs": 1 if quick else 2, "clipping_norm": 1.0, "noise_multipliers": (0.5, 1.0),
            "alpha": 0.3, "poison_fraction": 0.3,
            "aggregators": ("fedavg", "fedmedian", "krum", "bulyan") if quick else AGGREGATORS,
            "non_iid_aggregators": ("fedavg", "krum") if quick else ("fedavg", "fedmedian",
                                                                       "krum"),
            "clean_run": not quick}


def experiment(quick: bool, seed: int, log=print) -> dict:
    """Every federation of the chapter; returns JSON-ready results (also used by
    ``benchmarks/federated.py``)."""
    s = settings(quick)
    x_train, y_train = datasets.load_digits("train", seed=seed)
    x_test, y_test = datasets.load_digits("test", seed=seed)
    trigger = PatchTrigger(2)
    iid = fl.iid_partition(x_train, y_train, NUM_CLIENTS, seed=seed)
    attack = {cid: fl.ModelReplacement(trigger, target=TARGET, fraction=s["poison_fraction"],
                                       boost=NUM_CLIENTS / len(MALICIOUS),
                                       rounds=s["attack_rounds"]) for cid in MALICIOUS}
    common = dict(num_rounds=s["rounds"], epochs=s["epochs"], batch_size=32,
                  test_data=(x_test, y_test), seed=seed, verbose=0)
    results = {"settings": {**s, "num_clients": NUM_CLIENTS, "malicious": list(MALICIOUS),
                            "train_examples": len(x_train), "test_examples": len(x_test),
                            "attack": "model replacement (Bagdasaryan et al. 2020), boost "
                                      f"{NUM_CLIENTS / len(MALICIOUS):g}, backdoor patch 2x2 "
                                      f"-> class {TARGET} on {100 * s['poison_fraction']:g}% of the "
                                      "attackers' data"},
               "aggregators": {}, "dp": {}, "non_iid": {}}

    if s["clean_run"]:
        log("federated: FedAvg, no attacker")
        results["clean"] = fl.simulate(make_model, iid, **common).to_dict()
    for name in s["aggregators"]:
        log(f"federated: {NAMES[name]} with {len(MALICIOUS)} model-replacement clients")
        try:
            history = fl.simulate(make_model, iid, aggregator=name, malicious=attack,
                                  backdoor=(trigger, TARGET), **common)
            results["aggregators"][name] = history.to_dict()
        except ValueError as err:  # the aggregator cannot tolerate that many attackers
            results["aggregators"][name] = {"refused": str(err).split(". Use")[0]}
            f = fl.max_tolerated(name, NUM_CLIENTS)
            if not quick and f > 0:  # the same aggregator told to expect fewer attackers
                log(f"federated: {NAMES[name]} told f={f}")
                results["aggregators"][f"{name} (f={f})"] = fl.simulate(
                    make_model, iid, aggregator=name, malicious=attack, num_malicious=f,
                    backdoor=(trigger, TARGET), **common).to_dict()
    for sigma in s["noise_multipliers"]:
        log(f"federated: FedAvg + user-level DP, noise multiplier {sigma:g}")
        dp = fl.UserLevelDP(sigma, s["clipping_norm"], delta=1e-5)
        history = fl.simulate(make_model, iid, malicious=attack, dp=dp,
                              backdoor=(trigger, TARGET), **common)
        results["dp"][f"{sigma:g}"] = history.to_dict()
    non_iid = fl.dirichlet_partition(x_train, y_train, NUM_CLIENTS, alpha=s["alpha"],
                                     seed=seed)
    results["non_iid_labels"] = fl.label_distribution(non_iid, 10).tolist()
    for name in s["non_iid_aggregators"]:
        log(f"federated: {NAMES[name]} on non-IID clients (Dirichlet {s['alpha']:g}), "
            "no attacker")
        history = fl.simulate(make_model, non_iid, aggregator=name, **common)
        results["non_iid"][name] = history.to_dict()
    return results


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _last(history: dict, key: str, before: int | None = None):
    rows = history["rounds"]
    if before is not None:
        rows = [r for r in rows if r["round"] < before]
    return rows[-1][key]


def run(ctx) -> None:
    quick, seed = ctx.quick, ctx.seed
    results = experiment(quick, seed, log=ctx.log)
    ctx.results["chapter_federated"] = results
    s = results["settings"]
    first_attack = s["attack_rounds"][0]

    rows, curves = [], {}
    if "clean" in results:
        rows.append(["FedAvg, no attacker", _pct(_last(results["clean"], "accuracy")), "-",
                     "-"])
    for name, h in results["aggregators"].items():
        label = NAMES.get(name) or NAMES[name.split()[0]] + " " + name.split(maxsplit=1)[1]
        if "refused" in h:
            rows.append([label, "refused", "-", h["refused"]])
            continue
        curves[label] = [r["backdoor_success"] for r in h["rounds"]]
        rows.append([label, _pct(_last(h, "accuracy")),
                     _pct(_last(h, "backdoor_success")),
                     f"before the attack: {_pct(_last(h, 'accuracy', first_attack))}% accurate"])
    agg_table = _table(["aggregator", "final accuracy (%)", "backdoor success (%)", "note"],
                       rows)
    dp_rows = []
    for sigma, h in results["dp"].items():
        curves[f"FedAvg + DP (sigma {sigma})"] = [r["backdoor_success"] for r in h["rounds"]]
        dp_rows.append([sigma, f"{h['config']['dp']['noise_std']:.3g}",
                        _pct(_last(h, "accuracy")), _pct(_last(h, "backdoor_success")),
                        f"{_last(h, 'epsilon'):.2f}"])
    dp_table = _table(["noise multiplier", "noise std", "final accuracy (%)",
                       "backdoor success (%)", f"epsilon (delta 1e-5, {s['rounds']} rounds)"],
                      dp_rows)
    per_round = _table(
        ["round"] + list(curves),
        [[r] + [_pct(c[r]) for c in curves.values()] for r in range(s["rounds"] + 1)])
    non_iid_rows = [[NAMES[n], _pct(_last(h, "accuracy"))]
                    for n, h in results["non_iid"].items()]
    non_iid_table = _table(["aggregator (no attacker)", "final accuracy (%)"], non_iid_rows)
    krum = results["non_iid"]["krum"]["rounds"][-1]["accuracy"]
    fedavg = results["non_iid"]["fedavg"]["rounds"][-1]["accuracy"]
    verdict = ("Krum loses accuracy on non-IID clients even without any attacker: it keeps "
               "the single update closest to its neighbours, which has seen only a few "
               "classes." if krum < fedavg - 0.05 else
               "Here Krum kept up with FedAvg on the non-IID split; with stronger skew "
               "(smaller alpha) it falls behind.")
    for title, table in (("Aggregators under model replacement", agg_table),
                         ("User-level DP (FedAvg)", dp_table),
                         ("Backdoor success per round (%)", per_round),
                         ("Non-IID clients", non_iid_table)):
        print(f"\n{title}\n\n{table}", flush=True)
    plot = ctx.line_plot("ch_federated_backdoor.png", list(range(s["rounds"] + 1)), curves,
                         "round", "backdoor success (%)", size=(7, 4))
    ctx.section(
        f"{NUM_CLIENTS} Flower clients (keras_secure.federated, Flower's strategies on the "
        f"in-process grid) each hold a tenth of the {sum(len(p) for p in [0] * 0) or 1437} "
        f"training digits (IID) and train a two-layer perceptron for {s['epochs']} local "
        f"epoch(s) per round, {s['rounds']} rounds. Clients {', '.join(map(str, MALICIOUS))} "
        f"are malicious from round {first_attack} on: {s['attack']}. Accuracy and backdoor "
        "success (triggered test digits of other classes classified as "
        f"{TARGET}) are of the global model on the test digits.\n\n" + agg_table + "\n\n"
        "User-level DP (McMahan et al. 2018): each update clipped to L2 norm "
        f"{s['clipping_norm']:g}, Gaussian noise on the average, epsilon from dp-accounting "
        "(no sampling amplification: every client in every round). Clipping bounds the "
        "boosted update, which is what blunts model replacement here.\n\n" + dp_table +
        "\n\n" + per_round + f"\n\n![backdoor success per round]({plot})\n\n"
        f"Non-IID clients (Dirichlet alpha {s['alpha']:g} over labels), no attacker:\n\n"
        + non_iid_table + "\n\n" + verdict + "\n")
