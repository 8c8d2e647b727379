"""Adapter from a gymnasium environment (with keras_secure's wrappers) to a TF-Agents
``PyEnvironment``. TF-Agents environments need no Keras, so this works without
``TF_USE_LEGACY_KERAS``; TF-Agents *agents* need it set before TensorFlow is imported."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from keras_secure.attacks.base import check_number


def _spec(space: gym.Space, name: str):
    if isinstance(space, gym.spaces.Discrete):
        return array_spec.BoundedArraySpec((), np.int64, int(space.start),
                                           int(space.start + space.n - 1), name=name)
    if isinstance(space, gym.spaces.Box):
        if np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high)):
            return array_spec.BoundedArraySpec(space.shape, space.dtype, space.low, space.high,
                                               name=name)
        return array_spec.ArraySpec(space.shape, space.dtype, name=name)
    raise ValueError(f"`env` spaces must be Discrete or Box for the TF-Agents adapter. "
                     f"Received: {name} space {space}")


class GymnasiumEnvironment(py_environment.PyEnvironment):
    """A TF-Agents ``PyEnvironment`` over a gymnasium environment.

    ``terminated`` becomes a LAST step with discount 0, ``truncated`` a LAST step with discount
    ``discount`` (the episode was cut, the state still has value), other steps MID steps. The
    environment resets itself after a LAST step (``handle_auto_reset=True``, without which
    TF-Agents drivers loop on the last step). ``seed`` seeds the first reset; later resets
    continue the environment's random stream. Discrete actions are int64 scalars.

    Args:
        env: a gymnasium environment with Discrete or Box spaces.
        discount: discount of non-terminal steps, in [0, 1]. Defaults to 1.0.
        seed: seed of the first reset. Defaults to None.

    Raises:
        ValueError: for other spaces or ``discount`` outside [0, 1].

    Example:
        >>> py_env = to_tf_agents(RewardTampering(gymnasium.make("CartPole-v1")), seed=0)
        >>> tf_agents.environments.utils.validate_py_environment(py_env, episodes=3)
    """

    def __init__(self, env: gym.Env, discount: float = 1.0, seed: int | None = None):
        super().__init__(handle_auto_reset=True)
        self.gym_env = env
        self.discount = check_number("discount", discount, low=0.0, high=1.0)
        self._seed = check_number("seed", seed, integer=True, allow_none=True)
        self._observation_spec = _spec(env.observation_space, "observation")
        self._action_spec = _spec(env.action_space, "action")

    def observation_spec(self):
        return self._observation_spec

    def action_spec(self):
        return self._action_spec

    def _obs(self, observation):
        return np.asarray(observation, dtype=self._observation_spec.dtype)

    def _reset(self):
        observation, _ = self.gym_env.reset(seed=self._seed)
        self._seed = None
        return ts.restart(self._obs(observation))

    def _step(self, action):
        action = np.asarray(action)
        if isinstance(self.gym_env.action_space, gym.spaces.Discrete):
            action = int(action)
        observation, reward, terminated, truncated, _ = self.gym_env.step(action)
        observation, reward = self._obs(observation), np.float32(reward)
        if terminated:
            return ts.termination(observation, reward)
        if truncated:
            return ts.truncation(observation, reward, np.float32(self.discount))
        return ts.transition(observation, reward, np.float32(self.discount))

    def close(self):
        self.gym_env.close()


def to_tf_agents(env: gym.Env, discount: float = 1.0,
                 seed: int | None = None) -> GymnasiumEnvironment:
    """Wrap a gymnasium environment as a TF-Agents ``PyEnvironment`` (see
    :class:`GymnasiumEnvironment`).

    Example:
        >>> tf_env = tf_agents.environments.TFPyEnvironment(to_tf_agents(env, seed=0))
    """
    return GymnasiumEnvironment(env, discount=discount, seed=seed)
