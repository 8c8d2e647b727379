"""Per-step overhead of the RL wrappers against the bare environment, measured in one run.

For each wrapper around CartPole-v1 (and around a slower environment, CartPole with a simulated
1 ms physics step, to show the overhead relative to a realistic simulator) this prints the time
per step and the overhead over the bare environment. Goal (issue): <= 5% for the non-gradient
wrappers. AdversarialObservation runs a keras_secure attack on a small Keras policy network each
step; its cost is reported in milliseconds per step.

Run: ``.venv/bin/python benchmarks/rl.py [--steps 20000]``.
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


def per_step(make, steps, repeats=3):
    times = []
    for r in range(repeats):
        env = make()
        env.reset(seed=r)
        action_rng = np.random.default_rng(r)
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
        bare = per_step(base, steps)
        print(f"\n## {title}: bare environment {1e6 * bare:.1f} us/step\n")
        print("| wrapper | us/step | overhead |")
        print("|---|---|---|")
        for name, wrap in wrappers:
            t = per_step(lambda: wrap(base()), steps)
            print(f"| {name} | {1e6 * t:.1f} | {100 * (t / bare - 1):+.1f}% |", flush=True)
    adv = per_step(lambda: rl.AdversarialObservation(
        gym.make("CartPole-v1"), policy, ks.attacks.FGSM(0.05)), 300, repeats=1)
    pgd = per_step(lambda: rl.AdversarialObservation(
        gym.make("CartPole-v1"), policy, ks.attacks.PGD(0.05, steps=10, seed=0)), 300,
        repeats=1)
    print(f"\nAdversarialObservation on a 4-32-2 Keras policy: FGSM {1e3 * adv:.2f} ms/step, "
          f"PGD-10 {1e3 * pgd:.2f} ms/step")


if __name__ == "__main__":
    main()
