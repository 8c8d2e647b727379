"""Gymnasium wrappers: reward-manipulation and observation-noise attacks, potential-based reward
shaping as a defence.

Randomness: each wrapper owns a ``numpy.random.Generator`` seeded from the seed given to
``reset(seed=...)`` (mixed with a per-wrapper constant). Gymnasium's ``Wrapper.np_random``
forwards to the wrapped environment's generator; drawing from it would shift the environment's
own random stream, so an attacked run would start from other initial states than the clean run
with the same seed - which would confound every clean-vs-attacked comparison.
"""

from __future__ import annotations

import math
from typing import Any, Callable, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.utils import RecordConstructorArgs

from keras_secure.attacks.base import check_choice, check_number

REWARD_MODES = ("flip", "scale", "noise", "constant")
NOISE_KINDS = ("linf", "l2", "gaussian")


class _OwnRandom:
    """A generator of the wrapper's own, seeded by ``reset(seed=...)``."""

    _salt = 0

    def _seed_rng(self, seed):
        if seed is not None:
            self._rng = np.random.default_rng([int(seed), self._salt])
        elif getattr(self, "_rng", None) is None:
            self._rng = np.random.default_rng()

    @property
    def rng(self) -> np.random.Generator:
        """The wrapper's generator (seeded by ``reset(seed=...)``)."""
        self._seed_rng(None)
        return self._rng


def _check_probability(name, value):
    return check_number(name, value, low=0.0, high=1.0)


class RewardTampering(_OwnRandom, gym.Wrapper, RecordConstructorArgs):
    """Reward-manipulation attack: the agent receives tampered rewards (seed Table 3).

    Each step from ``start_step`` on, with probability ``probability`` and while the per-episode
    ``budget`` of tampered steps lasts, the reward ``r`` is replaced by ``-r`` (``"flip"``),
    ``scale * r`` (``"scale"``), ``r + N(0, noise_std^2)`` (``"noise"``) or ``value``
    (``"constant"``). ``info["reward_tampered"]`` says whether the step was tampered and
    ``info["true_reward"]`` holds the untampered reward (for evaluation only: an agent must not
    read it).

    Args:
        env: the environment.
        mode: ``"flip"``, ``"scale"``, ``"noise"`` or ``"constant"``. Defaults to ``"flip"``.
        probability: per-step tampering probability in [0, 1]. Defaults to 0.2.
        scale: factor of ``"scale"``. Defaults to -1.0.
        noise_std: std of ``"noise"``, >= 0. Defaults to 1.0.
        value: reward of ``"constant"``. Defaults to 0.0.
        budget: most tampered steps per episode (>= 0), or None for no limit. Defaults to None.
        start_step: first step of an episode that may be tampered (delayed attack), >= 0.
            Defaults to 0.

    Raises:
        ValueError / TypeError: for an unknown mode or arguments out of range.

    Example:
        >>> env = RewardTampering(gymnasium.make("CartPole-v1"), mode="flip", probability=0.2)

    References:
        Huang & Zhu (2019), "Deceptive Reinforcement Learning Under Adversarial Manipulations on
        Cost Signals"; Zhang et al. (2020), "Adaptive Reward-Poisoning Attacks against
        Reinforcement Learning", ICML.
    """

    _salt = 0x7A3

    def __init__(self, env: gym.Env, mode: str = "flip", probability: float = 0.2,
                 scale: float = -1.0, noise_std: float = 1.0, value: float = 0.0,
                 budget: int | None = None, start_step: int = 0):
        RecordConstructorArgs.__init__(self, mode=mode, probability=probability, scale=scale,
                                       noise_std=noise_std, value=value, budget=budget,
                                       start_step=start_step)
        gym.Wrapper.__init__(self, env)
        self.mode = check_choice("mode", mode, REWARD_MODES)
        self.probability = _check_probability("probability", probability)
        self.scale = check_number("scale", scale)
        self.noise_std = check_number("noise_std", noise_std, low=0.0)
        self.value = check_number("value", value)
        self.budget = check_number("budget", budget, low=0, integer=True, allow_none=True)
        self.start_step = check_number("start_step", start_step, low=0, integer=True)
        self._rng = None
        self._t = 0
        self._used = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._seed_rng(seed)
        self._t = 0
        self._used = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["true_reward"] = float(reward)
        tamper = (self._t >= self.start_step
                  and (self.budget is None or self._used < self.budget)
                  and self.rng.random() < self.probability)
        self._t += 1
        if tamper:
            self._used += 1
            reward = self._tampered(float(reward))
        info["reward_tampered"] = bool(tamper)
        return obs, reward, terminated, truncated, info

    def _tampered(self, reward: float) -> float:
        if self.mode == "flip":
            return -reward
        if self.mode == "scale":
            return self.scale * reward
        if self.mode == "noise":
            return reward + float(self.rng.normal(0.0, self.noise_std))
        return self.value


class ObservationNoise(_OwnRandom, gym.ObservationWrapper, RecordConstructorArgs):
    """Random state-perturbation attack on ``Box`` observations (seed Table 3).

    With probability ``probability`` per step, adds noise to the observation: uniform in the
    L-inf ball of radius ``eps`` (``"linf"``), uniform in the L2 ball (``"l2"``) or Gaussian
    with std ``eps`` (``"gaussian"``); the result is clipped to the observation space's finite
    bounds. Also a defence-side tool: training with it is noise injection.

    Args:
        env: an environment with a ``Box`` observation space.
        eps: radius (or std) in observation units, >= 0.
        kind: ``"linf"``, ``"l2"`` or ``"gaussian"``. Defaults to ``"linf"``.
        probability: per-step probability in [0, 1]. Defaults to 1.0.

    Raises:
        ValueError / TypeError: for a non-Box observation space or arguments out of range.

    Example:
        >>> env = ObservationNoise(gymnasium.make("CartPole-v1"), eps=0.05)

    References:
        Huang et al. (2017), "Adversarial Attacks on Neural Network Policies"; Zhang et al.
        (2020), "Robust Deep Reinforcement Learning against Adversarial Perturbations on State
        Observations" (random perturbations as the baseline attack).
    """

    _salt = 0x0B5

    def __init__(self, env: gym.Env, eps: float, kind: str = "linf", probability: float = 1.0):
        RecordConstructorArgs.__init__(self, eps=eps, kind=kind, probability=probability)
        gym.ObservationWrapper.__init__(self, env)
        if not isinstance(env.observation_space, gym.spaces.Box):
            raise ValueError("`env` must have a Box observation space for ObservationNoise. "
                             f"Received: observation_space={env.observation_space}")
        self.eps = check_number("eps", eps, low=0.0)
        self.kind = check_choice("kind", kind, NOISE_KINDS)
        self.probability = _check_probability("probability", probability)
        self._rng = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._seed_rng(seed)
        return super().reset(seed=seed, options=options)

    def observation(self, observation):
        if self.eps == 0 or self.rng.random() >= self.probability:
            return observation
        obs = np.asarray(observation, dtype=np.float64)
        if self.kind == "linf":
            noise = self.rng.uniform(-self.eps, self.eps, obs.shape)
        elif self.kind == "gaussian":
            noise = self.rng.normal(0.0, self.eps, obs.shape)
        else:
            direction = self.rng.normal(size=obs.shape)
            direction /= max(np.linalg.norm(direction), 1e-12)
            noise = direction * self.eps * self.rng.random() ** (1.0 / max(obs.size, 1))
        space = self.observation_space
        out = np.clip(obs + noise, space.low, space.high)
        return out.astype(space.dtype)


class RewardShaping(gym.Wrapper, RecordConstructorArgs):
    """Potential-based reward shaping (Ng, Harada & Russell 1999), a policy-invariant defence.

    Adds ``F(s, s') = gamma * Phi(s') - Phi(s)`` to each reward, with ``Phi(s') = 0`` when the
    episode terminates, so the optimal policies of the shaped and the original MDP coincide
    (Ng et al.'s theorem) while a good potential densifies the learning signal and dilutes
    sparse reward tampering. ``info["shaping"]`` holds ``F``.

    Args:
        env: the environment.
        potential: ``Phi``: a callable mapping an observation to a finite number.
        gamma: the agent's discount factor in [0, 1]. Defaults to 0.99.

    Raises:
        TypeError: if ``potential`` is not callable or does not return a finite number for an
            observation of ``env`` (checked at construction on a sample observation).
        ValueError: for ``gamma`` outside [0, 1].

    Example:
        >>> env = RewardShaping(gymnasium.make("CartPole-v1"), potential=lambda s: -abs(s[2]))

    References:
        Ng, Harada & Russell (1999), "Policy invariance under reward transformations: Theory and
        application to reward shaping", ICML.
    """

    def __init__(self, env: gym.Env, potential: Callable[[Any], SupportsFloat],
                 gamma: float = 0.99):
        RecordConstructorArgs.__init__(self, potential=potential, gamma=gamma)
        gym.Wrapper.__init__(self, env)
        if not callable(potential):
            raise TypeError(f"`potential` must be callable. Received: potential={potential!r}")
        self.gamma = check_number("gamma", gamma, low=0.0, high=1.0)
        sample = env.observation_space.sample()
        try:
            value = float(potential(sample))
        except Exception as err:  # noqa: BLE001 - report what the user's function did
            raise TypeError("`potential` must map one observation to a number; calling it on "
                            f"a sample observation raised {type(err).__name__}: {err}") from err
        if not math.isfinite(value):
            raise TypeError(f"`potential` must return a finite number. Received: {value!r} for "
                            "a sample observation")
        self.potential = potential
        self._phi = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._phi = float(self.potential(obs))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        phi_next = 0.0 if terminated else float(self.potential(obs))
        shaping = self.gamma * phi_next - self._phi
        self._phi = phi_next
        info = dict(info)
        info["shaping"] = shaping
        return obs, float(reward) + shaping, terminated, truncated, info
