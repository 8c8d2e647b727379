"""Per-step overhead of the RL wrappers against the bare environment, measured in one run.

For each wrapper around CartPole-v1 (and around a slower environment, CartPole with a simulated
1 ms physics step, to show the overhead relative to a realistic simulator) this prints the time
per step and the overhead over the bare environment. Goal (issue): <= 5% for the non-gradient
wrappers. AdversarialObservation runs a keras_secure attack on a small Keras policy network each
step; its cost is reported in milliseconds per step.

Run: ``.venv/bin/python benchmarks/rl.py [--steps 20000] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gymnasium as gym  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_secure as ks  # noqa: E402
from keras_secure import rl  # noqa: E402


class SlowPhysics(gym.Wrapper):
    """CartPole whose step takes about 1 ms more (busy wait), like a heavier simulator."""

    def step(self, action):
        end = time.perf_counter() + 1e-3
        while time.perf_counter() < end:
            pass
        return self.env.step(action)


class PerCallAttack(gym.ObservationWrapper):
    """Baseline for AdversarialObservation: the attack called through ``Attack.__call__`` on
    every step (input validation, a probe forward pass, then the compiled attack) - how the
    wrapper worked before it traced the attack once at construction."""

    def __init__(self, env, policy, attack):
        super().__init__(env)
        self.policy, self.attack = policy, attack

    def observation(self, observation):
        return self.attack(self.policy, np.asarray(observation, np.float32)[None])[0]


def per_step(make, steps, repeats=3, warmup=0):
    times = []
    for r in range(repeats):
        env = make()
        env.reset(seed=r)
        action_rng = np.random.default_rng(r)
        for _ in range(warmup):  # graph tracing happens on the first steps, not timed
            _, _, terminated, truncated, _ = env.step(int(action_rng.integers(2)))
            if terminated or truncated:
                env.reset()
        env.reset(seed=r)
        start = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(int(action_rng.integers(2)))
            if terminated or truncated:
                env.reset()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    policy = keras.Sequential([keras.Input((4,)), keras.layers.Dense(32, activation="relu"),
                               keras.layers.Dense(2)])
    wrappers = [
        ("RewardTampering", lambda e: rl.RewardTampering(e, "flip", 0.2)),
        ("ObservationNoise", lambda e: rl.ObservationNoise(e, 0.05)),
        ("ActionPerturbation", lambda e: rl.ActionPerturbation(e, 0.1)),
        ("RewardShaping", lambda e: rl.RewardShaping(e, lambda s: -abs(float(s[2])))),
        ("RewardGuard", lambda e: rl.RewardGuard(e, reward_range=(0.0, 1.0))),
    ]
    for title, base, steps in [("CartPole-v1", lambda: gym.make("CartPole-v1"), args.steps),
                               ("CartPole-v1 + 1 ms physics",
                                lambda: SlowPhysics(gym.make("CartPole-v1")),
                                max(args.steps // 20, 200))]:
        # bare and wrapped runs alternate, and each overhead is the median of the per-round
        # ratios, so drift in the machine's speed does not bias the comparison
        rounds = {name: [] for name, _ in wrappers}
        bares = []
        for r in range(args.rounds):
            for name, wrap in wrappers:
                bare = per_step(base, steps, repeats=1)
                t = per_step(lambda: wrap(base()), steps, repeats=1)
                bares.append(bare)
                rounds[name].append((t, t / bare))
        print(f"\n## {title}: bare environment {1e6 * statistics.median(bares):.1f} us/step\n")
        print("| wrapper | us/step | overhead (median of per-round ratios) |")
        print("|---|---|---|")
        for name, _ in wrappers:
            t = statistics.median(v for v, _ in rounds[name])
            ratio = statistics.median(q for _, q in rounds[name])
            print(f"| {name} | {1e6 * t:.1f} | {100 * (ratio - 1):+.1f}% |", flush=True)
    print("\n## AdversarialObservation on a 4-32-2 Keras policy (CartPole-v1)\n")
    print("| attack | ms/step | per-call Attack.__call__ baseline ms/step | ratio |")
    print("|---|---|---|---|")
    for name, attack in [("FGSM", ks.attacks.FGSM(0.05)),
                         ("PGD-10", ks.attacks.PGD(0.05, steps=10, seed=0))]:
        wrapped = per_step(lambda: rl.AdversarialObservation(
            gym.make("CartPole-v1"), policy, attack), 500, repeats=3, warmup=20)
        baseline = per_step(lambda: PerCallAttack(gym.make("CartPole-v1"), policy, attack), 500,
                            repeats=3, warmup=20)
        print(f"| {name} | {1e3 * wrapped:.2f} | {1e3 * baseline:.2f} | "
              f"{wrapped / baseline:.2f} |", flush=True)


if __name__ == "__main__":
    main()
