"""Attack and defend a CartPole policy with keras_secure's gymnasium wrappers - no TF-Agents,
no training: the policy is a linear Keras 3 model with hand-set weights (it balances the pole).

- state attacks: random L-inf noise, FGSM and PGD against the policy's own scores
  (``AdversarialObservation``, Huang et al. 2017), random action replacement;
- a state defence: ``ObservationDenoising`` with a bit-depth squeezer;
- a reward attack and its repair: ``RewardTampering`` sign flips behind ``RewardGuard``,
  checked on the reward signal a learner would see;
- the metrics: mean return over seeded episodes, reward retention, policy deviation.

Run: .venv/bin/python examples/rl_wrappers.py [--episodes 10]
"""

import argparse

import gymnasium as gym
import keras
import numpy as np

import keras_secure as ks
from keras_secure import rl

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--episodes", type=int, default=10)
args = parser.parse_args()
EPS = 0.2


def make():
    return gym.make("CartPole-v1")


# scores(s) = [0, w . s]: push right when the pole falls right (angle, angular velocity)
policy = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
policy.set_weights([np.array([[0, 0.1], [0, 0.5], [0, 3.0], [0, 1.0]], np.float32),
                    np.zeros(2, np.float32)])


def observation_chain(env):
    """obs -> what the policy sees through env's observation wrappers (innermost first)."""
    chain = []
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.ObservationWrapper):
            chain.append(env.observation)
        env = env.env

    def perturb(obs):
        for observe in reversed(chain):
            obs = observe(obs)
        return obs

    return perturb if chain else None


W, B = policy.get_weights()


def act(obs):  # the policy's greedy action, with its weights in NumPy (fast per step)
    return int(np.argmax(np.asarray(obs, np.float32) @ W + B))


clean = rl.evaluate_policy(make(), act, episodes=args.episodes, seed=0)
squeezer = ks.layers.BitDepthReduction(bits=5, value_range=(-4.0, 4.0))
attacks_ = {
    f"random noise (L-inf {EPS})": lambda env: rl.ObservationNoise(env, EPS),
    f"FGSM on the policy (L-inf {EPS})": lambda env: rl.AdversarialObservation(
        env, policy, ks.attacks.FGSM(EPS)),
    f"PGD-10 on the policy (L-inf {EPS})": lambda env: rl.AdversarialObservation(
        env, policy, ks.attacks.PGD(EPS, steps=10, seed=0)),
    "random actions (p 0.2)": lambda env: rl.ActionPerturbation(env, 0.2),
    "PGD-10, observations bit-squeezed (defence)": lambda env: rl.ObservationDenoising(
        rl.AdversarialObservation(env, policy, ks.attacks.PGD(EPS, steps=10, seed=0)),
        squeezer),
}

print(f"CartPole-v1, linear Keras policy, {args.episodes} seeded episodes")
print("| condition | return (mean ± std) | reward retention | policy deviation |")
print("|---|---|---|---|")
print(f"| clean | {clean.mean:.1f} ± {clean.std:.1f} | 100.0% | 0.0% |")
for name, wrap in attacks_.items():
    env = wrap(make())
    stats = rl.evaluate_policy(env, act, episodes=args.episodes, seed=0)
    perturb = observation_chain(env)
    if perturb is not None:
        env.reset(seed=0)  # seeds the wrappers' own randomness
        deviation = rl.policy_deviation(make(), act, perturb, episodes=min(args.episodes, 3))
        shown = f"{100 * deviation:.1f}%"
    else:
        shown = "-"  # the action, not the observation, is attacked
    print(f"| {name} | {stats.mean:.1f} ± {stats.std:.1f} | "
          f"{100 * rl.reward_retention(stats.mean, clean.mean):.1f}% | {shown} |")

# Reward tampering flips the sign of 30% of the rewards; RewardGuard (rewards known to lie in
# [0, 1]) repairs them. Counted on the signal a learner would receive, over 500 steps.
for name, env in [("tampered", rl.RewardTampering(make(), "flip", probability=0.3)),
                  ("tampered + RewardGuard", rl.RewardGuard(
                      rl.RewardTampering(make(), "flip", probability=0.3),
                      reward_range=(0.0, 1.0)))]:
    obs, _ = env.reset(seed=0)
    seen = []
    for _ in range(500):
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        seen.append(reward)
        if terminated or truncated:
            obs, _ = env.reset()
    print(f"{name}: {np.mean(np.asarray(seen) == 1.0):.1%} of the rewards a learner sees are "
          "the true reward (1.0)")
