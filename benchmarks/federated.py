"""Federated learning on the digits: the demo chapter's experiment at full budget (10 clients,
2 model-replacement attackers, FedAvg against Flower's robust aggregators, user-level DP at two
noise levels, Krum on non-IID data), and the cost of a round on the in-process grid against a
plain local ``model.fit`` of the same clients, measured in the same run.

Optionally (``--ray``) the same federation on Flower's Ray simulation engine, whose start-up
(Ray, one TensorFlow import per actor, and its first round) is reported separately from its
steady rounds.

Run: ``.venv/bin/python benchmarks/federated.py [--quick] [--ray] [--only-cost] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_secure import datasets  # noqa: E402
from keras_secure import federated as fl  # noqa: E402
from keras_secure.demo import ch_federated as ch  # noqa: E402


def _final(history: dict, key: str):
    return history["rounds"][-1][key]


def _pct(v):
    return "-" if v is None else f"{100 * v:5.1f}"


def round_cost(seed: int, rounds: int = 3, ray: bool = False) -> dict:
    """Seconds per round of FedAvg over 10 clients, against the same 10 local fits."""
    x, y = datasets.load_digits("train", seed=seed)
    xt, yt = datasets.load_digits("test", seed=seed)
    parts = fl.iid_partition(x, y, ch.NUM_CLIENTS, seed=seed)
    fl.simulate(ch.make_model, parts, num_rounds=1, test_data=(xt, yt), verbose=0)  # warm-up
    start = time.perf_counter()
    fl.simulate(ch.make_model, parts, num_rounds=rounds, test_data=(xt, yt), verbose=0)
    local = (time.perf_counter() - start) / rounds
    model = ch.make_model()
    data = [tf.data.Dataset.from_tensor_slices((p.x, p.y)).shuffle(len(p), seed=0).batch(32)
            for p in parts]
    model.fit(data[0], verbose=0, shuffle=False)
    start = time.perf_counter()
    for _ in range(rounds):
        for d in data:
            model.fit(d, verbose=0, shuffle=False)
    fits = (time.perf_counter() - start) / rounds
    out = {"seconds_per_round_local_grid": local, "seconds_per_round_plain_fits": fits,
           "ratio": local / fits}
    if ray:  # rounds 2.. from the history's clock; round 1 includes each actor's start
        start = time.perf_counter()
        history = fl.simulate(ch.make_model, parts, num_rounds=1 + rounds, test_data=(xt, yt),
                              verbose=0, backend="ray")
        total = time.perf_counter() - start
        clock = history.column("seconds")
        steady = clock[-1] - clock[1]
        out.update({"ray_seconds_per_round": steady / rounds,
                    "ray_startup_seconds": total - steady})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick demo's budget")
    parser.add_argument("--ray", action="store_true", help="also time Flower's Ray engine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--only-cost", action="store_true",
                        help="only the cost of a round (no experiment)")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    if args.only_cost:
        cost = round_cost(args.seed, ray=args.ray)
        print(json.dumps(cost, indent=1))
        return
    results = ch.experiment(args.quick, args.seed,
                            log=lambda m: print(f"[{time.perf_counter() - start:6.1f}s] {m}",
                                                flush=True))
    s = results["settings"]
    print(f"\n{s['num_clients']} clients, {s['rounds']} rounds, attackers {s['malicious']} "
          f"in rounds {s['attack_rounds']}: {s['attack']}\n")
    print("aggregator                 accuracy  backdoor  (accuracy before the attack)")
    if "clean" in results:
        print(f"FedAvg, no attacker         {_pct(_final(results['clean'], 'accuracy'))}")
    for name, h in results["aggregators"].items():
        if "refused" in h:
            print(f"{name:26s} refused: {h['refused']}")
            continue
        before = [r for r in h["rounds"] if r["round"] < s["attack_rounds"][0]][-1]
        print(f"{name:26s} {_pct(_final(h, 'accuracy'))}     {_pct(_final(h, 'backdoor_success'))}"
              f"     ({_pct(before['accuracy'])})")
    for sigma, h in results["dp"].items():
        print(f"FedAvg + DP sigma {sigma:8s} {_pct(_final(h, 'accuracy'))}     "
              f"{_pct(_final(h, 'backdoor_success'))}     epsilon {_final(h, 'epsilon'):.2f} "
              f"(noise std {h['config']['dp']['noise_std']:.3g})")
    for name, h in results["non_iid"].items():
        print(f"non-IID {name:18s} {_pct(_final(h, 'accuracy'))}")
    print("\nbackdoor success per round (%):")
    for name, h in {**results["aggregators"], **{f"dp {k}": v for k, v in
                                                  results["dp"].items()}}.items():
        if "rounds" in h:
            print(f"  {name:24s}", " ".join(_pct(r["backdoor_success"]) for r in h["rounds"]))
    cost = round_cost(args.seed, ray=args.ray)
    print(f"\nFedAvg round, 10 clients, in-process grid: {cost['seconds_per_round_local_grid']:.2f}"
          f" s; the same 10 local fits alone: {cost['seconds_per_round_plain_fits']:.2f} s "
          f"(ratio {cost['ratio']:.2f})")
    if args.ray:
        print(f"Flower's Ray engine: {cost['ray_seconds_per_round']:.2f} s per round, "
              f"{cost['ray_startup_seconds']:.1f} s to start")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"experiment": results, "round_cost": cost}, f, default=float)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
