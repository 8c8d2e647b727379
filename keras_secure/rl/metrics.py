"""RL robustness metrics: returns over seeded episodes, reward retention and restoration,
policy deviation under observation attacks."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from keras_secure.validation import check_number


@dataclasses.dataclass(frozen=True)
class EpisodeStats:
    """Returns of a set of episodes: ``mean``, ``std``, and each episode's ``returns`` and
    ``lengths``.

    Example:
        >>> stats = evaluate_policy(env, policy, episodes=10)
        >>> f"{stats.mean:.1f} +- {stats.std:.1f}"
    """

    mean: float
    std: float
    returns: tuple[float, ...]
    lengths: tuple[int, ...]


def evaluate_policy(env: gym.Env, policy: Callable[[Any], Any], episodes: int = 10,
                    seed: int = 0, true_reward: bool = True,
                    max_steps: int | None = None) -> EpisodeStats:
    """Cumulative reward of ``policy`` over ``episodes`` episodes reset with seeds
    ``seed, seed + 1, ...``.

    Args:
        env: the (possibly wrapped) environment.
        policy: maps an observation to an action.
        episodes: >= 1. Defaults to 10.
        seed: seed of the first episode. Defaults to 0.
        true_reward: sum ``info["true_reward"]`` where a reward-tampering wrapper provides it,
            so that the agent's real performance is measured, not the tampered signal.
            Defaults to True.
        max_steps: cut episodes after this many steps (>= 1), or None. Defaults to None.

    Returns:
        :class:`EpisodeStats`.

    Raises:
        ValueError / TypeError: for arguments out of range.

    Example:
        >>> evaluate_policy(env, lambda obs: int(obs[2] > 0), episodes=20).mean
    """
    episodes = check_number("episodes", episodes, low=1, integer=True)
    max_steps = check_number("max_steps", max_steps, low=1, integer=True, allow_none=True)
    returns, lengths = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs))
            total += float(info.get("true_reward", reward)) if true_reward else float(reward)
            steps += 1
            done = terminated or truncated or (max_steps is not None and steps >= max_steps)
        returns.append(total)
        lengths.append(steps)
    r = np.asarray(returns)
    return EpisodeStats(float(r.mean()), float(r.std()), tuple(returns), tuple(lengths))


def reward_retention(attacked: float, clean: float) -> float:
    """``attacked / clean`` mean return: the fraction of the clean reward kept under attack.

    Raises:
        ValueError: if ``clean`` is 0.

    Example:
        >>> reward_retention(120.0, 480.0)
        0.25
    """
    if clean == 0:
        raise ValueError("`clean` must be non-zero. Received: clean=0")
    return float(attacked) / float(clean)


def reward_restoration(defended: float, clean: float) -> float:
    """``defended_under_attack / clean`` mean return: how much of the clean reward a defence
    restores under attack (1.0 = fully restored).

    Raises:
        ValueError: if ``clean`` is 0.

    Example:
        >>> reward_restoration(400.0, 480.0)
    """
    return reward_retention(defended, clean)


def policy_deviation(env: gym.Env, policy: Callable[[Any], Any],
                     perturb: Callable[[Any], Any], episodes: int = 5, seed: int = 0) -> float:
    """Fraction of visited states where the policy's action changes when its observation is
    perturbed.

    The agent acts on ``perturb(observation)`` (it is under attack, so the visited states are
    the attacked trajectory's); at each step the action is compared with the action the policy
    takes on the clean observation.

    Args:
        env: the clean environment.
        policy: maps an observation to an action.
        perturb: maps a clean observation to the attacked one (e.g. an
            :class:`~keras_secure.rl.ObservationNoise` wrapper's ``observation`` method).
        episodes: >= 1. Defaults to 5.
        seed: seed of the first episode. Defaults to 0.

    Returns:
        The fraction in [0, 1].

    Example:
        >>> noise = ObservationNoise(env, eps=0.1)
        >>> policy_deviation(env, policy, noise.observation)
    """
    episodes = check_number("episodes", episodes, low=1, integer=True)
    changed = total = 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            clean_action = policy(obs)
            action = policy(perturb(obs))
            changed += int(np.any(np.asarray(action) != np.asarray(clean_action)))
            total += 1
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    return changed / total
