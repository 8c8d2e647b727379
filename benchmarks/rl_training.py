"""Robust policy training recipes over several training seeds: does the recipe raise the
reward under a PGD state attack beyond DQN's seed-to-seed variance?

For each seed, trains TF-Agents DQN on CartPole-v1 (demo chapter 5's agent and budget) plainly,
with the SA-DQN regularizer (``SADqnAgent``) and with adversarial collection against the live
network (``adversarial_collection_env``, p = 0.5, PGD-3), then evaluates each greedy policy
clean and under PGD-5 (L-inf 0.1) on its own Q-network. Prints per-seed rewards and the mean
and standard deviation over seeds, and each recipe's mean PGD reward as a ratio to the plain
agents' in the same run.

TF-Agents agents need tf-keras: this script sets ``TF_USE_LEGACY_KERAS=1`` first thing.

Run: ``.venv/bin/python benchmarks/rl_training.py [--seeds 3] [--steps 9000]``.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402

from keras_secure import rl  # noqa: E402
from keras_secure.attacks import PGD  # noqa: E402
from keras_secure.demo import ch5_rl  # noqa: E402
from keras_secure.rl.robust import adversarial_collection_env  # noqa: E402
from keras_secure.rl.tf_agents import network_scores  # noqa: E402

EPS = 0.1


def make():
    return gym.make("CartPole-v1")


def evaluate(net, seed: int, episodes: int):
    greedy = ch5_rl._greedy(net)
    clean = rl.evaluate_policy(make(), greedy, episodes=episodes, seed=seed, max_steps=500)
    attacked_env = rl.AdversarialObservation(make(), network_scores(net),
                                             PGD(EPS, steps=5, seed=seed))
    attacked = rl.evaluate_policy(attacked_env, greedy, episodes=episodes, seed=seed,
                                  max_steps=500)
    return clean.mean, attacked.mean


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=9000)
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args()
    settings = dict(ch5_rl._settings(False), steps=args.steps)
    recipes = {  # name -> seed -> train_dqn keyword arguments
        "DQN": lambda seed: {},
        "SA-DQN (sa_eps 0.1, weight 0.1)": lambda seed: {"sa_eps": EPS},
        "adversarial collection (p 0.5, PGD-3)": lambda seed: {
            "collect_env": lambda env, net: adversarial_collection_env(
                env, net, PGD(EPS, steps=3, seed=seed), 0.5, seed=seed)},
    }
    results = {name: [] for name in recipes}
    for seed in range(args.seeds):
        for name, recipe in recipes.items():
            start = time.perf_counter()
            net = ch5_rl.train_dqn(make, seed, settings, **recipe(seed))
            clean, attacked = evaluate(net, 100 + seed, args.episodes)
            results[name].append((clean, attacked))
            print(f"seed {seed} | {name} | clean {clean:.1f} | PGD {attacked:.1f} | "
                  f"{time.perf_counter() - start:.0f} s", flush=True)

    def summary(values):
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {sd:.1f}"

    base = statistics.mean(a for _, a in results["DQN"])
    print(f"\nCartPole-v1, {args.steps} DQN steps, {args.seeds} training seeds, "
          f"{args.episodes} evaluation episodes; mean ± std over seeds\n")
    print("| recipe | clean reward | reward under PGD-5 | PGD reward / DQN's | "
          "per seed (clean, PGD) |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        pgd = [a for _, a in values]
        per_seed = ", ".join(f"({c:.0f}, {a:.0f})" for c, a in values)
        print(f"| {name} | {summary([c for c, _ in values])} | {summary(pgd)} | "
              f"{statistics.mean(pgd) / base:.2f} | {per_seed} |")


if __name__ == "__main__":
    main()
