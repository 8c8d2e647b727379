"""TF-Agents adapters: a gymnasium environment (with keras_secure's wrappers) as a TF-Agents
``PyEnvironment`` (:class:`GymnasiumEnvironment`), a ``PyEnvironment`` as a gymnasium
environment (:class:`PyEnvironmentAsGym`), and :class:`KerasSecureWrapper`, a TF-Agents
``PyEnvironmentBaseWrapper`` that applies any keras_secure gymnasium wrapper to a TF-Agents
environment - each wrapper is written once, for gymnasium, and reaches TF-Agents through these.
Two TF-Agents metrics (:class:`RewardRetentionMetric`, :class:`PolicyDeviationMetric`) log the
RL robustness metrics from a driver, and :func:`network_scores` turns a TF-Agents network into
the ``observations -> scores`` callable keras_secure's attacks use.
TF-Agents environments need no Keras, so this works without ``TF_USE_LEGACY_KERAS``; TF-Agents
*agents* need it set before TensorFlow is imported (see :mod:`keras_secure.rl.robust`)."""

from __future__ import annotations

import math
from typing import Callable

import gymnasium as gym
import numpy as np
import tensorflow as tf
from tf_agents.environments import py_environment, wrappers
from tf_agents.metrics import tf_metric, tf_metrics
from tf_agents.networks import network as tf_agents_network
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts
from tf_agents.utils import common

from keras_secure.classifier import as_classifier, labels_from_logits
from keras_secure.validation import check_number
from keras_secure.rl.wrappers import _check_untargeted_attack


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


def _space(spec, name: str) -> gym.Space:
    dtype = np.dtype(spec.dtype)
    bounded = isinstance(spec, array_spec.BoundedArraySpec)
    if np.issubdtype(dtype, np.integer) and spec.shape == () and bounded:
        low, high = int(spec.minimum), int(spec.maximum)
        return gym.spaces.Discrete(high - low + 1, start=low)
    if np.issubdtype(dtype, np.floating):
        if bounded:
            low = np.broadcast_to(np.asarray(spec.minimum, dtype), spec.shape)
            high = np.broadcast_to(np.asarray(spec.maximum, dtype), spec.shape)
        else:
            low = np.full(spec.shape, -np.inf, dtype)
            high = np.full(spec.shape, np.inf, dtype)
        return gym.spaces.Box(low, high, spec.shape, dtype)
    raise ValueError(f"`env` must have a float array or a bounded scalar integer {name} spec for "
                     f"the gymnasium adapter. Received: {spec}")


class PyEnvironmentAsGym(gym.Env):
    """A gymnasium environment over an unbatched TF-Agents ``PyEnvironment``.

    A LAST step with discount 0 becomes ``terminated``, a LAST step with a positive discount
    ``truncated``; ``info["discount"]`` carries the step's discount. Float array specs become
    ``Box`` spaces, bounded scalar integer specs ``Discrete``. ``reset(seed=...)`` calls the
    environment's ``seed`` when it implements one.

    Args:
        env: an unbatched ``PyEnvironment`` with a single (non-nested) observation and action.

    Raises:
        ValueError: for batched or nested environments or other specs.

    Example:
        >>> gym_env = RewardGuard(PyEnvironmentAsGym(tf_agents_env), reward_range=(0, 1))
    """

    metadata = {"render_modes": []}

    def __init__(self, env: py_environment.PyEnvironment):
        if getattr(env, "batched", False):
            raise ValueError("`env` must be an unbatched PyEnvironment. Received: a batched one")
        obs_spec, act_spec = env.observation_spec(), env.action_spec()
        if not (isinstance(obs_spec, array_spec.ArraySpec)
                and isinstance(act_spec, array_spec.ArraySpec)):
            raise ValueError("`env` must have a single array observation and action spec. "
                             f"Received: {obs_spec}, {act_spec}")
        self.py_env = env
        self.observation_space = _space(obs_spec, "observation")
        self.action_space = _space(act_spec, "action")
        self._action_dtype = act_spec.dtype

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            try:
                self.py_env.seed(seed)
            except NotImplementedError:
                pass
        time_step = self.py_env.reset()
        return np.asarray(time_step.observation), {}

    def step(self, action):
        time_step = self.py_env.step(np.asarray(action, dtype=self._action_dtype))
        last = bool(time_step.is_last())
        discount = float(time_step.discount)
        return (np.asarray(time_step.observation), float(time_step.reward),
                last and discount == 0.0, last and discount > 0.0, {"discount": discount})

    def close(self):
        self.py_env.close()


class KerasSecureWrapper(wrappers.PyEnvironmentBaseWrapper):
    """A TF-Agents ``PyEnvironmentBaseWrapper`` applying a keras_secure gymnasium wrapper (or
    any ``gym.Env -> gym.Env`` function) to a TF-Agents environment.

    The environment is seen as gymnasium through :class:`PyEnvironmentAsGym`, wrapped, and
    turned back into a ``PyEnvironment`` with :class:`GymnasiumEnvironment`, so every
    keras_secure wrapper (attacks and defences) is written once and used from both libraries.
    The wrapped environment's specs follow the gymnasium wrapper's spaces. Non-terminal
    discounts are ``discount`` (the inner environment's own per-step discounts are not kept).

    Args:
        env: an unbatched TF-Agents ``PyEnvironment``.
        wrapper: a gymnasium wrapper class or a function ``gym.Env -> gym.Env``.
        *args, **kwargs: passed to ``wrapper`` after the environment.
        discount: discount of non-terminal steps, in [0, 1]. Defaults to 1.0.
        seed: seed of the first reset (and of the wrapper's randomness). Defaults to None.

    Raises:
        TypeError: if ``wrapper`` is not callable or does not return a gymnasium environment.
        ValueError: as :class:`PyEnvironmentAsGym` and the wrapper itself.

    Example:
        >>> env = KerasSecureWrapper(py_env, RewardTampering, "flip", probability=0.2, seed=0)
        >>> env = KerasSecureWrapper(env, RewardGuard, reward_range=(0, 1))
    """

    def __init__(self, env: py_environment.PyEnvironment, wrapper, *args,
                 discount: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(env)
        if not callable(wrapper):
            raise TypeError(f"`wrapper` must be a gymnasium wrapper class or a function "
                            f"gym.Env -> gym.Env. Received: wrapper={wrapper!r}")
        wrapped = wrapper(PyEnvironmentAsGym(env), *args, **kwargs)
        if not isinstance(wrapped, gym.Env):
            raise TypeError("`wrapper` must return a gymnasium environment. Received: "
                            f"{type(wrapped).__name__}")
        self.gym_env = wrapped
        self._adapter = GymnasiumEnvironment(wrapped, discount=discount, seed=seed)

    def observation_spec(self):
        return self._adapter.observation_spec()

    def action_spec(self):
        return self._adapter.action_spec()

    def _reset(self):
        return self._adapter.reset()

    def _step(self, action):
        return self._adapter.step(action)


def network_scores(network, observation_normalizer=None) -> Callable[[tf.Tensor], tf.Tensor]:
    """``observations -> action scores`` for a TF-Agents network: Q-values of a ``QNetwork``,
    or the logits of an actor network's categorical distribution (PPO, REINFORCE).

    Args:
        network: a feed-forward TF-Agents ``Network``, called as
            ``network(observations, step_type=None, network_state=())``.
        observation_normalizer: a TF-Agents ``TensorNormalizer`` applied to the observations
            before the network, as a PPO agent with ``normalize_observations=True`` does, or
            None. Gradients flow through it, so attacks stay in raw observation units.
            :func:`keras_secure.rl.robust.agent_scores` picks it from the agent. Defaults to
            None.

    Returns:
        A callable mapping a float batch of observations to ``(batch, n_actions)`` scores, for
        keras_secure's attacks, :class:`~keras_secure.rl.AdversarialObservation` and
        :class:`PolicyDeviationMetric`.

    Raises:
        TypeError: if ``network`` is not callable.

    Example:
        >>> env = AdversarialObservation(gym_env, network_scores(agent._q_network), FGSM(0.05))
    """
    if not callable(network):
        raise TypeError(f"`network` must be a TF-Agents network. Received: {network!r}")

    def scores(observations):
        if observation_normalizer is not None:
            observations = observation_normalizer.normalize(observations)
        out, _ = network(observations, step_type=None, network_state=(), training=False)
        if hasattr(out, "logits_parameter"):
            return out.logits_parameter()
        return out

    return scores


class RewardRetentionMetric(tf_metrics.AverageReturnMetric):
    """TF-Agents metric: average return of the last ``buffer_size`` episodes divided by a clean
    reference return - the reward retention under attack (or, for a defended agent under
    attack, its reward restoration), logged from a driver like ``AverageReturnMetric``.

    Args:
        clean_return: the agent's mean return without attack (e.g. from
            :func:`keras_secure.rl.evaluate_policy`), non-zero and finite.
        name, prefix, batch_size, buffer_size: as ``AverageReturnMetric``.

    Raises:
        ValueError / TypeError: if ``clean_return`` is zero, not finite or not a number.

    Example:
        >>> retention = RewardRetentionMetric(clean_return=480.0)
        >>> DynamicEpisodeDriver(attacked_tf_env, policy, [retention], num_episodes=10).run()
        >>> retention.result()   # attacked mean return / 480
    """

    def __init__(self, clean_return: float, name: str = "RewardRetention",
                 prefix: str = "Metrics", batch_size: int = 1, buffer_size: int = 10):
        clean_return = check_number("clean_return", clean_return)
        if clean_return == 0 or not math.isfinite(clean_return):
            raise ValueError("`clean_return` must be non-zero and finite. "
                             f"Received: clean_return={clean_return!r}")
        batch_size = check_number("batch_size", batch_size, low=1, integer=True)
        buffer_size = check_number("buffer_size", buffer_size, low=1, integer=True)
        super().__init__(name=name, prefix=prefix, batch_size=batch_size,
                         buffer_size=buffer_size)
        self.clean_return = float(clean_return)

    def result(self):
        return super().result() / self.clean_return


class PolicyDeviationMetric(tf_metric.TFStepMetric):
    """TF-Agents metric: the fraction of observed states at which an attack changes the
    greedy action of a network (policy deviation), as a driver observer that runs in the
    driver's graph.

    For every non-boundary step of the trajectories it observes (a LAST step's action leads
    nowhere and is skipped), the greedy action ``argmax scores(s)`` is compared with
    ``argmax scores(attack(s))``, the attack pushing away from the greedy action. The states
    are the ones the driver visits: with a clean environment this is "how often would the
    attack change the action along the agent's own trajectories". (The function
    :func:`keras_secure.rl.policy_deviation` instead follows the attacked trajectory.)

    Args:
        scores: a TF-Agents network (Q-network or categorical actor), or a callable mapping a
            float batch of observations to ``(batch, n_actions)`` scores. For a PPO agent that
            normalizes observations, pass ``keras_secure.rl.robust.agent_scores(agent)``.
        attack: an untargeted keras_secure attack, e.g. ``PGD(0.05, steps=5)``.
        name, prefix: as TF-Agents metrics.

    Raises:
        TypeError: for a non-callable ``scores`` or a targeted / non-keras_secure attack.

    Example:
        >>> deviation = PolicyDeviationMetric(agent._q_network, ks.attacks.PGD(0.1, steps=5))
        >>> DynamicStepDriver(tf_env, agent.policy, [deviation], num_steps=1000).run()
        >>> float(deviation.result())
    """

    def __init__(self, scores, attack, name: str = "PolicyDeviation", prefix: str = "Metrics"):
        if not callable(scores):
            raise TypeError("`scores` must be a TF-Agents network or a callable returning action "
                            f"scores. Received: scores={scores!r}")
        _check_untargeted_attack(attack)
        super().__init__(name=name, prefix=prefix)
        if isinstance(scores, tf_agents_network.Network):
            scores = network_scores(scores)
        # action scores (Q-values or logits), read as logits by the classifier contract
        self._scores = as_classifier(scores, from_logits=True).logits
        self.attack = attack
        self._changed = common.create_variable("changed", 0, dtype=tf.int64)
        self._total = common.create_variable("total", 0, dtype=tf.int64)

    @tf.function  # not TF-Agents' relaxed-shape function: the flattening needs static ranks
    def _update_state(self, trajectory):
        return self.call(trajectory)

    def call(self, trajectory):
        outer = trajectory.step_type.shape.rank
        obs = tf.cast(trajectory.observation, tf.float32)
        obs = tf.reshape(obs, [-1, *obs.shape[outer:]])  # outer (batch, time) dims flattened
        valid = tf.reshape(~trajectory.is_boundary(), [-1])
        greedy = labels_from_logits(self._scores(obs))
        adversarial = self.attack.perturb(self._scores, obs, greedy)
        attacked = labels_from_logits(self._scores(adversarial))
        self._changed.assign_add(tf.reduce_sum(tf.cast(valid & (attacked != greedy), tf.int64)))
        self._total.assign_add(tf.reduce_sum(tf.cast(valid, tf.int64)))
        return trajectory

    def result(self):
        return tf.cast(self._changed, tf.float32) / tf.cast(tf.maximum(self._total, 1), tf.float32)

    @common.function
    def reset(self):
        self._changed.assign(0)
        self._total.assign(0)
