"""Gymnasium wrappers: reward-manipulation and observation-noise attacks, potential-based reward
shaping as a defence.

Randomness: each wrapper owns a ``numpy.random.Generator`` seeded from the seed given to
``reset(seed=...)`` (mixed with a per-wrapper constant). Gymnasium's ``Wrapper.np_random``
forwards to the wrapped environment's generator; drawing from it would shift the environment's
own random stream, so an attacked run would start from other initial states than the clean run
with the same seed - which would confound every clean-vs-attacked comparison.
"""

from __future__ import annotations

import bisect
import collections
import math
from typing import Any, Callable, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.utils import RecordConstructorArgs

from keras_secure.validation import check_choice, check_number

REWARD_MODES = ("flip", "scale", "noise", "constant")
NOISE_KINDS = ("linf", "l2", "gaussian", "bias")


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


def _perturbed_into_space(original, perturbed, space: gym.spaces.Box, *,
                          computed=None, eps: float | None = None) -> np.ndarray:
    """The observation ``original`` moved by the change ``perturbed - computed`` (``computed``:
    the input the perturbation was computed from, e.g. ``original`` cast to float32 for a
    graph; defaults to ``original``), as an observation of ``space`` that never leaves the
    budget:

    - the change is applied to ``original`` itself, so coordinates the perturbation did not
      move keep their exact value whatever the dtype (float64, large integers);
    - with ``eps``, each coordinate's change is clipped to ``[-eps, eps]`` (L-inf budgets),
      also after the cast to ``space.dtype`` (one float32 rounding step could overshoot);
    - on an integer ``dtype`` the change is rounded toward zero (the integer points of a ball
      around an integer point are the ones inside it; rounding to the nearest would let a
      change of 0.6 become 1), and the arithmetic is done in integers;
    - the result is clipped to the space's bounds, except where ``original`` itself lies
      outside them (clipping would then move it by more than the budget).

    Symmetric noise stays symmetric, hence unbiased.

    Raises:
        ValueError: for a non-finite observation, or an integer space whose dtype cannot hold
            ``original``.
    """
    dtype = space.dtype
    original = np.asarray(original)
    computed = original if computed is None else computed
    change = np.asarray(perturbed, np.float64) - np.asarray(computed, np.float64)
    if eps is not None:
        change = np.clip(change, -eps, eps)
    low = np.broadcast_to(space.low, original.shape)
    high = np.broadcast_to(space.high, original.shape)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if original.size and (np.min(original) < info.min or np.max(original) > info.max
                              or not np.all(np.asarray(original) == np.round(original))):
            raise ValueError(f"The observation must hold whole numbers that the observation "
                             f"space's dtype {dtype} can represent. Received values in "
                             f"[{np.min(original)}, {np.max(original)}]")
        wide = object if np.dtype(dtype).itemsize >= 8 else np.int64  # exact arithmetic
        base = original.astype(wide)
        out = base + np.trunc(change).astype(np.int64).astype(wide)
        out = np.minimum(np.maximum(out, np.minimum(low.astype(wide), base)),
                         np.maximum(high.astype(wide), base))
        return out.astype(dtype)
    base = original.astype(np.float64)
    if not np.all(np.isfinite(base)):
        raise ValueError(f"The observation must be finite. Received: {original.tolist()}")
    out = np.clip(base + change, np.minimum(low, base), np.maximum(high, base)).astype(dtype)
    if eps is not None:  # the cast may round one step past the budget: step back inside
        over = np.abs(out.astype(np.float64) - base) > eps
        while np.any(over):
            out = np.where(over, np.nextafter(out, base.astype(dtype)), out)
            over = np.abs(out.astype(np.float64) - base) > eps
    return out


def _into_space(values, space: gym.spaces.Box) -> np.ndarray:
    """``values`` (floats) as an observation of ``space``: rounded to the nearest integer for
    an integer ``dtype`` (a plain cast truncates toward zero, which biases zero-mean noise by
    about -0.5), clipped to the space's bounds and cast to its ``dtype``."""
    values = np.asarray(values, dtype=np.float64)
    if np.issubdtype(space.dtype, np.integer):
        values = np.rint(values)
    return np.clip(values, space.low, space.high).astype(space.dtype)


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
    with std ``eps`` (``"gaussian"``), drawn afresh each step. ``"bias"`` is a sensor offset
    instead: one vector drawn uniformly in the L-inf ``eps`` ball at each ``reset`` (with
    probability ``probability`` per episode, else no offset: ``bias`` is then None) and added
    to every observation of the episode. The result is clipped to the observation space's
    finite bounds. On an integer space (e.g. a ``uint8`` image) the L-inf, L2 and bias noise
    is rounded toward zero, so the perturbed observation stays inside the ball (an ``eps``
    below 1 then changes nothing) and the noise stays symmetric, hence unbiased; Gaussian noise,
    which has no ball, is rounded to the nearest integer. Also a
    defence-side tool: training with it is noise injection (``"bias"``: sensor-offset
    randomization, which on CartPole teaches the position feedback that PGD's sensor-bias
    attack defeats; see docs/rl.md).

    Args:
        env: an environment with a ``Box`` observation space.
        eps: radius (or std) in observation units, >= 0.
        kind: ``"linf"``, ``"l2"``, ``"gaussian"`` or ``"bias"``. Defaults to ``"linf"``.
        probability: per-step probability in [0, 1] (per-episode for ``"bias"``). Defaults
            to 1.0.

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
        self._bias = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._seed_rng(seed)
        if self.kind == "bias":  # drawn before the first observation of the episode
            on = self.rng.random() < self.probability
            offset = self.rng.uniform(-self.eps, self.eps, self.observation_space.shape)
            if np.issubdtype(self.observation_space.dtype, np.integer):
                offset = np.trunc(offset)  # the offset an integer observation can carry
            self._bias = offset if on and self.eps > 0 else None
        return super().reset(seed=seed, options=options)

    @property
    def bias(self) -> np.ndarray | None:
        """This episode's offset (``kind="bias"``; on an integer space, the whole-number offset
        actually added), or None when the episode has none (``probability`` not drawn, or
        ``eps == 0``). Clipping at the space's bounds can shorten it on a given step."""
        return None if self._bias is None else self._bias.copy()

    def observation(self, observation):
        if self.kind == "bias":
            if self._bias is None:
                return observation
            return _perturbed_into_space(observation, self._bias, self.observation_space,
                                         computed=np.zeros_like(self._bias), eps=self.eps)
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
        if self.kind == "gaussian":  # no ball to stay in: nearest integer on integer spaces
            return _into_space(obs + noise, self.observation_space)
        return _perturbed_into_space(observation, noise, self.observation_space,
                                     computed=np.zeros_like(noise),
                                     eps=self.eps if self.kind == "linf" else None)


def _check_potential(env, potential):
    """``potential`` must map one observation of ``env`` to a finite number (checked on a
    sample observation); returns it."""
    if not callable(potential):
        raise TypeError(f"`potential` must be callable. Received: potential={potential!r}")
    try:
        value = float(potential(env.observation_space.sample()))
    except Exception as err:  # noqa: BLE001 - report what the user's function did
        raise TypeError("`potential` must map one observation to a number; calling it on "
                        f"a sample observation raised {type(err).__name__}: {err}") from err
    if not math.isfinite(value):
        raise TypeError(f"`potential` must return a finite number. Received: {value!r} for "
                        "a sample observation")
    return potential


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
        RecordConstructorArgs.__init__(self, potential=potential, gamma=gamma,
                                       _disable_deepcopy=True)
        gym.Wrapper.__init__(self, env)
        self.potential = _check_potential(env, potential)
        self.gamma = check_number("gamma", gamma, low=0.0, high=1.0)
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


def _check_policy(env, policy_fn, name="policy_fn"):
    """Call ``policy_fn`` on one sample observation: it must return ``(1, n_actions)``."""
    import tensorflow as tf

    if not callable(policy_fn):
        raise TypeError(f"`{name}` must be callable. Received: {name}={policy_fn!r}")
    sample = np.asarray(env.observation_space.sample(), np.float32)[np.newaxis]
    try:
        out = policy_fn(tf.constant(sample))
    except Exception as err:  # noqa: BLE001 - report what the user's function did
        raise TypeError(f"`{name}` must map a batch of observations to action scores; calling "
                        f"it on a batch of one raised {type(err).__name__}: {err}") from err
    shape = tuple(np.shape(out))
    n = env.action_space.n
    if shape != (1, n):
        raise ValueError(f"`{name}` must return scores of shape (batch, {n}) (one per action). "
                         f"Received: shape {shape} for a batch of one observation")


class AdversarialObservation(_OwnRandom, gym.ObservationWrapper, RecordConstructorArgs):
    """Gradient attack on the agent's own network through its observations (Huang et al. 2017).

    With probability ``probability`` per step (seeded by ``reset(seed=...)``), the observation
    is replaced by ``attack(policy_fn, obs, greedy_action)``: a keras_secure
    evasion attack (FGSM, PGD, ...) that pushes the network's scores away from the action it
    would take, inside the attack's ``eps`` ball (observation units), clipped to the space's
    finite bounds (on an integer space the change is rounded toward zero, so the observation
    stays inside the ball: an ``eps`` below 1 cannot change it). ``policy_fn`` maps
    a batch of observations to action logits or Q-values: a Keras model, or a TF-Agents
    network via ``lambda obs: network(obs)[0]``. White-box: the attacker knows the network.

    Args:
        env: an environment with a ``Box`` observation space and ``Discrete`` actions.
        policy_fn: batch of observations -> scores ``(batch, n_actions)``.
        attack: an untargeted keras_secure attack (its ``value_range`` should be None unless
            the observations are bounded).
        probability: per-step probability in [0, 1] of attacking; below 1 it mixes clean and
            adversarial observations, as in adversarial training of the policy during
            collection (:mod:`keras_secure.rl.robust`). Defaults to 1.0.

    Raises:
        ValueError / TypeError: for other spaces, a targeted or non-keras_secure attack, or a
            ``policy_fn`` that does not return ``(batch, n_actions)`` scores (checked at
            construction on a sample observation).

    Example:
        >>> env = AdversarialObservation(gymnasium.make("CartPole-v1"), q_network,
        ...                              ks.attacks.FGSM(eps=0.05))

    References:
        Huang, Papernot, Goodfellow, Duan & Abbeel (2017), "Adversarial Attacks on Neural
        Network Policies".
    """

    _salt = 0xAD0

    def __init__(self, env: gym.Env, policy_fn: Callable, attack, probability: float = 1.0):
        # Models and attacks hold TensorFlow state that cannot be deep-copied: recorded as they are.
        RecordConstructorArgs.__init__(self, policy_fn=policy_fn, attack=attack,
                                       probability=probability, _disable_deepcopy=True)
        gym.ObservationWrapper.__init__(self, env)
        if not isinstance(env.observation_space, gym.spaces.Box):
            raise ValueError("`env` must have a Box observation space for AdversarialObservation "
                             f"(gradients need continuous observations). Received: "
                             f"observation_space={env.observation_space}")
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ValueError("`env` must have a Discrete action space for AdversarialObservation. "
                             f"Received: action_space={env.action_space}")
        _check_untargeted_attack(attack)
        self.probability = _check_probability("probability", probability)
        _check_policy(env, policy_fn)
        self.policy_fn, self.attack = policy_fn, attack
        self._rng = None
        self._perturb = _single_observation_attack(policy_fn, attack, env.observation_space)
        _check_differentiable(policy_fn, env.observation_space, "policy_fn")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._seed_rng(seed)
        return super().reset(seed=seed, options=options)

    def observation(self, observation):
        if self.probability < 1.0 and self.rng.random() >= self.probability:
            return observation
        space = self.observation_space
        x = np.asarray(observation, np.float32)[np.newaxis]
        if self.attack.value_range is not None:
            low, high = self.attack.value_range
            if x.min() < low or x.max() > high:
                raise ValueError(f"The observation must lie in `attack`'s value_range="
                                 f"{self.attack.value_range}. Received values in "
                                 f"[{x.min():g}, {x.max():g}]")
        eps = getattr(self.attack, "eps", None) if getattr(
            self.attack, "norm", None) == "linf" else None
        return _perturbed_into_space(observation, self._perturb(x).numpy()[0], space,
                                     computed=x[0], eps=eps)


def _check_untargeted_attack(attack, name: str = "attack"):
    """Raise a ``TypeError`` naming ``name`` unless ``attack`` is an untargeted keras_secure
    attack (observation attacks push away from the greedy action; they have no targets)."""
    from keras_secure.attacks.base import Attack

    if not isinstance(attack, Attack) or attack.targeted:
        raise TypeError(f"`{name}` must be an untargeted keras_secure attack. "
                        f"Received: {name}={attack!r}")
    return attack


def _check_differentiable(policy_fn, space, name: str) -> None:
    """TypeError naming ``name`` unless the gradient of ``policy_fn``'s scores with respect to
    a sample observation can be computed inside a ``tf.function`` (as the attacks do): a NumPy
    policy passes a shape check but cannot be traced. Draws no attack randomness."""
    import tensorflow as tf

    from keras_secure.classifier import as_classifier

    logits_fn = as_classifier(policy_fn, from_logits=True).logits

    @tf.function
    def probe(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            scores = logits_fn(x)
        return tape.gradient(tf.reduce_sum(scores), x)

    sample = np.asarray(space.sample(), np.float32)[np.newaxis]
    try:
        probe(tf.constant(sample))
    except Exception as err:  # noqa: BLE001 - say which argument and why
        raise TypeError(f"`{name}` must compute its scores with TensorFlow / Keras operations: "
                        "the attack differentiates it inside a tf.function (a NumPy function "
                        "cannot be used). Tracing it on a sample observation raised "
                        f"{type(err).__name__}: {str(err).splitlines()[0][:300]}") from err


def _single_observation_attack(policy_fn, attack, space):
    """``attack`` on one observation against ``policy_fn``'s greedy action, traced once into a
    graph for a ``(1, *space.shape)`` batch (the policy was checked at construction, so the
    per-call validation of ``Attack.__call__`` is not repeated on every step)."""
    import tensorflow as tf

    from keras_secure.classifier import as_classifier, labels_from_logits

    # Action scores (Q-values or logits), declared as such: scores that happen to lie in
    # [0, 1] are not class probabilities.
    logits_fn = as_classifier(policy_fn, from_logits=True).logits

    @tf.function(input_signature=[tf.TensorSpec((1, *space.shape), tf.float32)])
    def perturb(x):
        greedy = labels_from_logits(logits_fn(x))
        return attack.perturb(logits_fn, x, greedy)

    return perturb


class ActionPerturbation(_OwnRandom, gym.ActionWrapper, RecordConstructorArgs):
    """Action-perturbation attack: with probability ``probability`` the executed action is
    replaced - by a uniformly random action (``"random"``), or by the action a Q-function rates
    worst (``"adversarial"``, Discrete actions). ``info`` is unchanged; the agent never learns
    which actions were replaced.

    Args:
        env: the environment.
        probability: per-step replacement probability in [0, 1]. Defaults to 0.1.
        mode: ``"random"`` or ``"adversarial"``. Defaults to ``"random"``.
        q_fn: for ``"adversarial"``: batch of observations -> ``(batch, n_actions)`` values.

    Raises:
        ValueError / TypeError: for arguments out of range, ``"adversarial"`` without a valid
            ``q_fn`` or with non-Discrete actions.

    Example:
        >>> env = ActionPerturbation(gymnasium.make("CartPole-v1"), probability=0.1)

    References:
        Tessler, Efroni & Mannor (2019), "Action Robust Reinforcement Learning and Applications
        in Continuous Control", ICML.
    """

    _salt = 0xAC7

    def __init__(self, env: gym.Env, probability: float = 0.1, mode: str = "random",
                 q_fn: Callable | None = None):
        RecordConstructorArgs.__init__(self, probability=probability, mode=mode, q_fn=q_fn,
                                       _disable_deepcopy=True)
        gym.ActionWrapper.__init__(self, env)
        self.probability = _check_probability("probability", probability)
        self.mode = check_choice("mode", mode, ("random", "adversarial"))
        if mode == "adversarial":
            if not isinstance(env.action_space, gym.spaces.Discrete):
                raise ValueError("mode='adversarial' needs a Discrete action space. "
                                 f"Received: action_space={env.action_space}")
            _check_policy(env, q_fn, "q_fn")
        self.q_fn = q_fn
        self._rng = None
        self._obs = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._seed_rng(seed)
        self.action_space.seed(None if seed is None else int(self.rng.integers(2 ** 31)))
        self._obs, info = self.env.reset(seed=seed, options=options)
        return self._obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._obs = obs
        return obs, reward, terminated, truncated, info

    def action(self, action):
        if self.rng.random() >= self.probability:
            return action
        if self.mode == "random":
            return self.action_space.sample()
        scores = np.asarray(self.q_fn(np.asarray(self._obs, np.float32)[np.newaxis]))[0]
        return int(np.argmin(scores))


class _RobustRewardStats:
    """Running median / MAD of the last ``window`` accepted rewards, flagging outliers.

    The window is kept sorted (``bisect``), so the median is read off the middle and the MAD -
    the median of ``|r - median|`` - by merging the deviations outwards from the middle, about
    ``window / 2`` comparisons; both are cached until the next accepted reward. Equal to NumPy's
    ``median`` / ``median(abs(r - median))`` (tested)."""

    def __init__(self, window: int, threshold: float, min_scale: float):
        self.window, self.threshold, self.min_scale = window, threshold, min_scale
        self._arrivals: collections.deque[float] = collections.deque()
        self._sorted: list[float] = []
        self._cache: tuple[float, float] | None = None

    @property
    def history(self) -> list[float]:
        """The accepted rewards in the window, oldest first."""
        return list(self._arrivals)

    def _median_and_mad(self) -> tuple[float, float]:
        if self._cache is None:
            s, n = self._sorted, len(self._sorted)
            h = n // 2
            median = s[h] if n % 2 else (s[h - 1] + s[h]) / 2
            # deviations grow walking down from s[h - 1] and up from s[h]: merge h + 1 of them
            i, j, devs = h - 1, h, []
            for _ in range(h + 1):
                if j >= n or (i >= 0 and median - s[i] <= s[j] - median):
                    devs.append(median - s[i])
                    i -= 1
                else:
                    devs.append(s[j] - median)
                    j += 1
            mad = devs[h] if n % 2 else (devs[h - 1] + devs[h]) / 2
            self._cache = (median, mad)
        return self._cache

    def median(self) -> float | None:
        return self._median_and_mad()[0] if len(self._sorted) >= 3 else None

    def is_outlier(self, reward: float) -> bool:
        """True if ``reward`` is not finite, or more than ``threshold`` robust stds from the
        median (needs at least 3 accepted rewards)."""
        if not math.isfinite(reward):
            return True
        if len(self._sorted) < 3:
            return False
        median, mad = self._median_and_mad()
        scale = max(1.4826 * mad, self.min_scale)
        return abs(reward - median) > self.threshold * scale

    def accept(self, reward: float) -> None:
        bisect.insort(self._sorted, reward)
        self._arrivals.append(reward)
        if len(self._arrivals) > self.window:
            oldest = self._arrivals.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._cache = None


class RewardGuard(gym.Wrapper, RecordConstructorArgs):
    """Detects and repairs tampered rewards (a defence against :class:`RewardTampering`).

    A reward is flagged when it lies outside the known ``reward_range`` (if given), or when it
    deviates from the median of the last ``window`` accepted rewards by more than ``threshold``
    robust standard deviations (``1.4826 * MAD``, the median absolute deviation; floored at
    ``min_scale``), or when it is not finite (NaN or inf). A flagged reward is replaced by that
    running median (before enough history exists: clipped to ``reward_range``, and a
    non-finite reward becomes 0 clipped to ``reward_range``). ``info["reward_repaired"]``
    marks repairs.
    The statistics persist across episodes.

    Args:
        env: the environment.
        reward_range: ``(low, high)`` of the true rewards, or None. Defaults to None.
        window: rewards kept for the statistics, >= 3. Defaults to 100.
        threshold: robust z-score above which a reward is flagged, > 0. Defaults to 4.0.
        min_scale: lower bound of the robust std, > 0 (for constant rewards). Defaults to 1e-3.

    Raises:
        ValueError / TypeError: for arguments out of range.

    Example:
        >>> env = RewardGuard(RewardTampering(gymnasium.make("CartPole-v1")), reward_range=(0, 1))

    References:
        Huber (1964), robust statistics (median/MAD); reward-poisoning defences, e.g. Banihashem
        et al. (2021), "Defense Against Reward Poisoning Attacks in Reinforcement Learning".
    """

    def __init__(self, env: gym.Env, reward_range: tuple[float, float] | None = None,
                 window: int = 100, threshold: float = 4.0, min_scale: float = 1e-3):
        from keras_secure.validation import check_value_range

        RecordConstructorArgs.__init__(self, reward_range=reward_range, window=window,
                                       threshold=threshold, min_scale=min_scale)
        gym.Wrapper.__init__(self, env)
        if reward_range is not None:
            low, high = reward_range
            if low == high:
                self.guard_range = (float(low), float(high))
            else:
                self.guard_range = check_value_range(reward_range)
        else:
            self.guard_range = None
        self.window = check_number("window", window, low=3, integer=True)
        self.threshold = check_number("threshold", threshold, low=0.0, low_inclusive=False)
        self.min_scale = check_number("min_scale", min_scale, low=0.0, low_inclusive=False)
        self._stats = _RobustRewardStats(self.window, self.threshold, self.min_scale)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward = float(reward)
        flagged, repaired = False, reward
        if self.guard_range is not None:
            flagged = not (self.guard_range[0] <= reward <= self.guard_range[1])
            repaired = float(np.clip(reward, *self.guard_range))
        if not math.isfinite(reward):  # NaN / inf: tampered whatever the range says
            flagged = True
            repaired = 0.0 if self.guard_range is None else float(np.clip(0.0, *self.guard_range))
        median = self._stats.median()
        if median is not None and (flagged or self._stats.is_outlier(reward)):
            flagged, repaired = True, median
        if not flagged:
            self._stats.accept(reward)
        info = dict(info)
        info["reward_repaired"] = bool(flagged)
        return obs, (repaired if flagged else reward), terminated, truncated, info


class ObservationDenoising(gym.ObservationWrapper, RecordConstructorArgs):
    """Applies a denoiser to every observation (a defence against observation perturbations).

    ``denoiser`` is a keras_secure denoising layer or any callable mapping a batch of
    observations to a batch of the same shape - e.g. ``BitDepthReduction`` with the
    observations' range, or a :class:`~keras_secure.layers.LearnedDenoiser` trained on noisy
    observations. The result is clipped to the observation space (and rounded to the nearest
    integer on an integer space).

    Args:
        env: an environment with a ``Box`` observation space.
        denoiser: batch -> batch of the same shape (checked at construction on a sample).

    Raises:
        ValueError / TypeError: for a non-Box space or a denoiser that changes the shape.

    Example:
        >>> env = ObservationDenoising(env, ks.layers.BitDepthReduction(6, value_range=(-5, 5)))

    References:
        Xu et al. (2018) (squeezing inputs) applied to states, as in Zhang et al. (2020), "Robust
        Deep Reinforcement Learning against Adversarial Perturbations on State Observations".
    """

    def __init__(self, env: gym.Env, denoiser: Callable):
        RecordConstructorArgs.__init__(self, denoiser=denoiser, _disable_deepcopy=True)
        gym.ObservationWrapper.__init__(self, env)
        if not isinstance(env.observation_space, gym.spaces.Box):
            raise ValueError("`env` must have a Box observation space for ObservationDenoising. "
                             f"Received: observation_space={env.observation_space}")
        if not callable(denoiser):
            raise TypeError(f"`denoiser` must be callable. Received: denoiser={denoiser!r}")
        sample = np.asarray(env.observation_space.sample(), np.float32)[np.newaxis]
        out_shape = tuple(np.shape(denoiser(sample)))
        if out_shape != sample.shape:
            raise ValueError(f"`denoiser` must keep the shape {sample.shape} of a batch of "
                             f"observations. Received: {out_shape}")
        self.denoiser = denoiser

    def observation(self, observation):
        out = np.asarray(self.denoiser(np.asarray(observation, np.float32)[np.newaxis]))[0]
        return _into_space(out, self.observation_space)


class DynamicRewardShaping(gym.Wrapper, RecordConstructorArgs):
    """Potential-based shaping whose weight grows with the rate of detected reward anomalies.

    Definition. With a potential ``Phi`` and a weight ``w_t``, the shaped reward is
    ``r_t + gamma * w_{t+1} * Phi(s_{t+1}) - w_t * Phi(s_t)`` (``Phi = 0`` after termination):
    dynamic potential-based shaping with the time-varying potential ``w_t * Phi``, which keeps
    the optimal policies of the original MDP (Devlin & Kudenko 2012). The weight is
    ``w_t = base_weight + gain * a_t``, where ``a_t`` is an exponential moving average (rate
    ``1 - decay``) of anomaly flags: a reward is anomalous when it lies more than ``threshold``
    robust standard deviations (1.4826 MAD) from the median of the last ``window`` non-anomalous
    rewards. Under reward tampering the anomaly rate rises, the shaping term - which the
    attacker does not control - weighs more, and the learning signal stays informative; with
    clean rewards ``w_t`` stays near ``base_weight``. Rewards are not repaired here (compose
    with :class:`RewardGuard` for that). ``info`` gets ``shaping``, ``shaping_weight`` and
    ``reward_anomaly``.

    Args:
        env: the environment.
        potential: ``Phi``: observation -> finite number.
        gamma: discount in [0, 1]. Defaults to 0.99.
        base_weight: weight without anomalies, >= 0. Defaults to 1.0.
        gain: weight added at an anomaly rate of 1, >= 0. Defaults to 4.0.
        decay: EMA decay of the anomaly rate in [0, 1). Defaults to 0.95.
        window, threshold, min_scale: the detector's, as in :class:`RewardGuard`.

    Raises:
        ValueError / TypeError: for arguments out of range or an invalid ``potential``.

    Example:
        >>> env = DynamicRewardShaping(RewardTampering(gymnasium.make("CartPole-v1")),
        ...                            potential=lambda s: -abs(float(s[2])))

    References:
        Ng, Harada & Russell (1999); Devlin & Kudenko (2012), "Dynamic Potential-Based Reward
        Shaping", AAMAS.
    """

    def __init__(self, env: gym.Env, potential: Callable[[Any], SupportsFloat],
                 gamma: float = 0.99, base_weight: float = 1.0, gain: float = 4.0,
                 decay: float = 0.95, window: int = 100, threshold: float = 4.0,
                 min_scale: float = 1e-3):
        RecordConstructorArgs.__init__(self, potential=potential, gamma=gamma,
                                       base_weight=base_weight, gain=gain, decay=decay,
                                       window=window, threshold=threshold, min_scale=min_scale,
                                       _disable_deepcopy=True)
        gym.Wrapper.__init__(self, env)
        self.potential = _check_potential(env, potential)
        self.gamma = check_number("gamma", gamma, low=0.0, high=1.0)
        self.base_weight = check_number("base_weight", base_weight, low=0.0)
        self.gain = check_number("gain", gain, low=0.0)
        self.decay = check_number("decay", decay, low=0.0, high=1.0, high_inclusive=False)
        self._stats = _RobustRewardStats(
            check_number("window", window, low=3, integer=True),
            check_number("threshold", threshold, low=0.0, low_inclusive=False),
            check_number("min_scale", min_scale, low=0.0, low_inclusive=False))
        self.anomaly_rate = 0.0
        self._weighted_phi = 0.0

    @property
    def weight(self) -> float:
        """The current shaping weight ``w_t``."""
        return self.base_weight + self.gain * self.anomaly_rate

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._weighted_phi = self.weight * float(self.potential(obs))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward = float(reward)
        anomaly = self._stats.is_outlier(reward)
        if not anomaly:
            self._stats.accept(reward)
        self.anomaly_rate = self.decay * self.anomaly_rate + (1.0 - self.decay) * float(anomaly)
        phi_next = 0.0 if terminated else self.weight * float(self.potential(obs))
        shaping = self.gamma * phi_next - self._weighted_phi
        self._weighted_phi = phi_next
        info = dict(info)
        info.update(shaping=shaping, shaping_weight=self.weight, reward_anomaly=bool(anomaly))
        return obs, reward + shaping, terminated, truncated, info
