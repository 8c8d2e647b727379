"""Why the state attacks beat every PPO recipe on CartPole, and whether a robust policy exists.

Two measurements, in one run:

1. **How attacked episodes end.** For ``--seeds`` training seeds, plain PPO is trained at the
   benchmark's budget (``keras_secure.demo.ch5_rl``'s ``ppo`` recipe, 24 iterations) and run
   greedily for ``--episodes`` episodes clean and under PGD-5 on its actor (L-inf 0.1). For each
   episode: its length, whether it ended with the cart off the track (``|x| > 2.4``) or the
   pole down (``|theta| > 0.2095``), and the mean perturbation the attack applied to each
   observation component (a constant sign there is a sensor bias).
2. **Can any simple policy withstand the budget?** Random linear policies
   ``a = [k . s > 0]`` (``k`` drawn over ranges that contain the usual balancing gains) that
   keep the clean pole up for >= 475 steps are run against simple adversaries inside the L-inf
   ball. Against a linear policy the ball gives the adversary the choice of the action exactly
   when the margin ``|k . s|`` is below ``eps * ||k||_1``; there it picks: the opposite action
   (``flip``, what one-step PGD does), always left, always right (a sensor bias), a push
   toward the nearer edge of the track, toward the centre, along the cart's velocity, or the
   push that tips the pole further. Reported per eps: how many policies keep >= 475 steps
   against all seven, and the best and median worst case (steps).

Run: ``.venv/bin/python benchmarks/rl_failure_modes.py [--seeds 3] [--episodes 10]``.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from keras_secure.demo import ch5_rl  # noqa: E402
from keras_secure.rl import ppo  # noqa: E402

X_LIMIT, THETA_LIMIT = 2.4, 12 * 2 * np.pi / 360


def attacked_episodes(seed: int, episodes: int, settings: dict) -> list[dict]:
    agent, _, _ = ch5_rl.train_recipe("ppo", seed, settings, log=lambda m: None)
    act = ppo.greedy_action_fn(agent)
    attack = ch5_rl.pgd_attack(ppo.logits_fn(agent), ch5_rl.STATE_EPS, settings["pgd_steps"],
                               1000 + 100 * seed)
    rows = []
    for name, observe in (("clean", None), ("PGD-5", attack)):
        for episode in range(episodes):
            env = gym.make(ch5_rl.ENV_ID)
            obs, _ = env.reset(seed=1000 + 100 * seed + episode)
            deltas, steps = [], 0
            while True:
                seen = obs[np.newaxis].astype(np.float32)
                if observe is not None:
                    seen = observe(seen)
                deltas.append(seen[0] - obs)
                obs, _, terminated, truncated, _ = env.step(int(act(seen)[0]))
                steps += 1
                if terminated or truncated or steps >= settings["max_steps"]:
                    break
            cause = ("cart off the track" if abs(obs[0]) > X_LIMIT else
                     "pole down" if abs(obs[2]) > THETA_LIMIT else "500 steps")
            rows.append({"seed": seed, "condition": name, "steps": steps, "cause": cause,
                         "mean_delta": np.mean(deltas, axis=0)})
    return rows


ADVERSARIES = {  # the action chosen inside the band, from the true state s and the policy's a
    "flip": lambda s, a: 1 - a, "left": lambda s, a: 0, "right": lambda s, a: 1,
    "edge": lambda s, a: int(s[0] > 0), "centre": lambda s, a: int(s[0] < 0),
    "velocity": lambda s, a: int(s[1] > 0), "tip": lambda s, a: int(s[2] + 0.5 * s[3] < 0)}


def linear_policies(count: int, eps: float, seed: int = 0) -> tuple[int, int, list[float]]:
    rng = np.random.default_rng(seed)

    def run(k, mode, episodes=2):
        lengths = []
        for episode in range(episodes):
            env = gym.make(ch5_rl.ENV_ID)
            obs, _ = env.reset(seed=episode)
            steps = 0
            while True:
                margin = float(k @ obs)
                action = int(margin > 0)
                if mode is not None and abs(margin) < eps * np.abs(k).sum():
                    action = ADVERSARIES[mode](obs, action)
                obs, _, terminated, truncated, _ = env.step(action)
                steps += 1
                if terminated or truncated:
                    break
            lengths.append(steps)
        return float(np.mean(lengths))

    balancing, worst = 0, []
    for _ in range(count):
        k = np.array([rng.uniform(0, 6), rng.uniform(0, 8), rng.uniform(5, 40),
                      rng.uniform(0.5, 8)])
        if run(k, None) < 475:
            continue
        balancing += 1
        worst.append(min(run(k, mode) for mode in ADVERSARIES))
    return count, balancing, worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--linear", type=int, default=150, help="random linear policies drawn")
    parser.add_argument("--eps", default="0.1,0.05,0.02",
                        help="budgets for the linear policies (comma-separated)")
    args = parser.parse_args()
    for name in ("seeds", "episodes", "linear"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; received {getattr(args, name)}")
    try:
        budgets = [float(e) for e in args.eps.split(",")]
    except ValueError:
        parser.error(f"--eps must be comma-separated numbers; received {args.eps!r}")
    if not all(0 < e < float("inf") for e in budgets):
        parser.error(f"--eps values must be finite and > 0; received {args.eps!r}")
    settings = ch5_rl._settings(False, benchmark=True)
    rows = [r for seed in range(args.seeds)
            for r in attacked_episodes(seed, args.episodes, settings)]
    print(f"PPO ({settings['iterations']} iterations), {args.seeds} seeds x {args.episodes} "
          f"episodes, L-inf {ch5_rl.STATE_EPS}\n")
    print("| condition | mean length | cart off the track | pole down | 500 steps | "
          "mean perturbation (x, x_dot, theta, theta_dot), mean over episodes of |per-episode "
          "mean| |")
    print("|---|---|---|---|---|---|")
    for name in ("clean", "PGD-5"):
        sel = [r for r in rows if r["condition"] == name]
        causes = [r["cause"] for r in sel]
        bias = np.mean([np.abs(r["mean_delta"]) for r in sel], axis=0)
        print(f"| {name} | {np.mean([r['steps'] for r in sel]):.1f} | "
              f"{causes.count('cart off the track')} | {causes.count('pole down')} | "
              f"{causes.count('500 steps')} | {np.array2string(bias, precision=3)} |")
    print(f"\nRandom linear policies against the {len(ADVERSARIES)} band adversaries "
          f"({', '.join(ADVERSARIES)})\n")
    print("| L-inf eps | drawn | balance the clean pole (>= 475 steps) | keep >= 475 steps "
          "against all | best worst case | median worst case |")
    print("|---|---|---|---|---|---|")
    for eps in budgets:
        count, balancing, worst = linear_policies(args.linear, eps)
        if not worst:
            print(f"| {eps} | {count} | 0 | - | - | - |", flush=True)
            continue
        robust = sum(w >= 475 for w in worst)
        print(f"| {eps} | {count} | {balancing} | {robust} | {np.max(worst):.1f} | "
              f"{np.median(worst):.1f} |", flush=True)


if __name__ == "__main__":
    main()
