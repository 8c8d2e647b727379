"""A learned optimal adversary on observations (Zhang et al. 2021, ATLA; Sun et al. 2022, PA-AD).

Attacking a policy with PGD on its own network finds the observation that changes the current
action most; it does not look ahead. The optimal attack on a fixed victim policy is itself the
solution of an MDP (Zhang et al. 2021's SA-MDP result): the adversary observes the true state,
chooses a perturbation inside the L-inf ball, the victim acts on the perturbed observation, and
the adversary is rewarded with the victim's reward negated. Any RL algorithm trained on that MDP
learns an attack that plans over the episode.

Two parameterizations of the adversary's action, both inside the ``eps`` ball:

- ``"director"`` (PA-AD, Sun et al. 2022, the efficient form for discrete actions): the
  adversary picks the action it wants the victim to take; a targeted PGD on the victim's scores
  (the "actor" of PA-AD) finds the observation in the ball that makes that action the victim's
  greedy choice, if one exists. The adversary's action space is ``Discrete(n_actions)``, small
  whatever the observation's dimension, which is what makes PA-AD cheap to learn.
- ``"state"`` (ATLA, Zhang et al. 2021): the adversary outputs the perturbation itself, an action
  in ``Box(-1, 1, observation_shape)`` scaled by ``eps``.

:class:`ObservationPerturber` turns an adversary's actions into perturbed observations (batched,
one graph call); :class:`AdversaryEnv` is the adversary's MDP as a gymnasium environment (train
any agent on it: :func:`keras_secure.rl.ppo.train_adversary` trains a TF-Agents PPO agent);
:class:`LearnedAdversaryObservation` is the evaluation attack, a gymnasium wrapper next to
:class:`~keras_secure.rl.AdversarialObservation`.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium.utils import RecordConstructorArgs

from keras_secure.rl.wrappers import (_check_differentiable, _check_policy,
                                       _perturbed_into_space)
from keras_secure.validation import check_choice, check_number

ADVERSARY_MODES = ("director", "state")


def _victim_scores(victim) -> Callable:
    """``victim`` as an ``observations -> scores`` callable: a TF-Agents ``DqnAgent`` /
    ``PPOAgent`` through :func:`keras_secure.rl.robust.agent_scores`, any other callable as is."""
    try:
        from tf_agents.agents import tf_agent
    except ImportError:  # pragma: no cover - TF-Agents is part of the stack
        tf_agent = None
    if tf_agent is not None and isinstance(victim, tf_agent.TFAgent):
        from keras_secure.rl.robust import agent_scores

        return agent_scores(victim)
    return victim


def _spec_actions(spec) -> int | None:
    """Number of actions of a scalar bounded integer TF-Agents spec, None for other specs."""
    minimum = getattr(spec, "minimum", None)
    maximum = getattr(spec, "maximum", None)
    if minimum is None or maximum is None or tuple(getattr(spec, "shape", ())) != ():
        return None
    return int(np.asarray(maximum)) - int(np.asarray(minimum)) + 1


def check_adversary_setup(env: gym.Env, victim, eps) -> tuple[Callable, float]:
    """Validate an adversary's environment, victim and budget; returns ``(scores_fn, eps)``.

    Raises:
        ValueError: for ``eps <= 0``, a non-Box (e.g. discrete) observation space, a
            non-Discrete action space, or a victim whose action spec or scores do not match
            the environment's actions.
        TypeError: for a victim that is not callable or fails on a sample observation.
    """
    eps = check_number("eps", eps, low=0.0, low_inclusive=False)
    if not isinstance(env.observation_space, gym.spaces.Box):
        raise ValueError("The adversary perturbs observations inside an L-inf ball, so `env` "
                         "must have a continuous (Box) observation space; a discrete one cannot "
                         f"be perturbed. Received: observation_space={env.observation_space}")
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise ValueError("`env` must have a Discrete action space (the victim acts greedily on "
                         f"its action scores). Received: action_space={env.action_space}")
    n = int(env.action_space.n)
    spec = getattr(victim, "action_spec", None)
    if callable(spec) and not hasattr(spec, "shape"):
        spec = spec()
    if spec is not None:
        victim_n = _spec_actions(spec)
        if victim_n != n:
            raise ValueError(f"`victim`'s action spec must match the environment's {n} "
                             f"discrete actions. Received: action_spec={spec}")
    scores = _victim_scores(victim)
    _check_policy(env, scores, "victim")
    return scores, eps


class ObservationPerturber:
    """Maps an adversary's actions to perturbed observations inside the L-inf ``eps`` ball,
    batched, in one graph call.

    ``"director"`` mode (PA-AD): action ``k`` in ``0..n_actions-1`` is the action the adversary
    wants the victim to take; a targeted PGD (``steps`` steps, margin loss, no random start,
    so it is deterministic) on the victim's scores looks for the observation in the ball where
    ``k`` is the victim's greedy action. ``"state"`` mode (ATLA): action ``a`` in
    ``[-1, 1]^d`` gives ``obs + eps * a``. The result is clipped to the observation space; on
    an integer space the change is rounded toward zero, so it stays inside the ball (an ``eps``
    below 1 cannot change an integer observation).

    Args:
        victim_fn: batch of observations ``(batch, *obs_shape)`` -> scores ``(batch, n)``,
            written with TensorFlow / Keras operations: the director differentiates it inside
            a ``tf.function`` (a NumPy function is refused at construction).
        observation_space: the environment's ``Box`` observation space.
        eps: L-inf radius in observation units, > 0.
        mode: ``"director"`` or ``"state"``. Defaults to ``"director"``.
        steps: PGD steps of the director's actor, >= 1. Defaults to 10.

    Raises:
        ValueError / TypeError: for arguments out of range, a non-Box observation space, or a
            victim that cannot be run (and differentiated) by TensorFlow on a sample
            observation; :meth:`perturb` raises them for actions outside the adversary's
            action space.

    Example:
        >>> perturber = ObservationPerturber(q_net, env.observation_space, eps=0.1)
        >>> x_adv = perturber.perturb(obs_batch, np.zeros(len(obs_batch), int))  # force 0

    References:
        Sun, Zhang, Xie, Ma, Zheng, Chen & Huang (2022), "Who Is the Strongest Enemy? Towards
        Optimal and Efficient Evasion Attacks in Deep RL", ICLR (PA-AD); Zhang, Chen, Boning &
        Hsieh (2021), "Robust Reinforcement Learning on State Observations with Learned
        Optimal Adversary", ICLR (ATLA).
    """

    def __init__(self, victim_fn: Callable, observation_space: gym.spaces.Box, eps: float,
                 mode: str = "director", steps: int = 10):
        import tensorflow as tf

        from keras_secure.attacks.pgd import PGD
        from keras_secure.classifier import as_classifier

        self.eps = check_number("eps", eps, low=0.0, low_inclusive=False)
        self.mode = check_choice("mode", mode, ADVERSARY_MODES)
        self.steps = check_number("steps", steps, low=1, integer=True)
        if not callable(victim_fn):
            raise TypeError(f"`victim_fn` must be callable (a batch of observations -> action "
                            f"scores). Received: victim_fn={victim_fn!r}")
        if not isinstance(observation_space, gym.spaces.Box):
            raise ValueError("`observation_space` must be a Box (the adversary perturbs "
                             "observations inside an L-inf ball; a discrete one cannot be "
                             f"perturbed). Received: observation_space={observation_space}")
        self.space = observation_space
        shape = tuple(observation_space.shape)
        logits_fn = as_classifier(victim_fn, from_logits=True).logits
        self._logits_fn = logits_fn
        attack = PGD(self.eps, steps=self.steps, loss="margin", targeted=True,
                     random_init=False, step_size=2.5 * self.eps / self.steps)

        @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32),
                                      tf.TensorSpec((None,), tf.int64)])
        def director(x, target):
            return attack.perturb(logits_fn, x, target)

        @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
        def greedy(x):
            return tf.argmax(logits_fn(x), axis=-1)

        self._director, self._greedy = director, greedy
        # the director differentiates the victim inside a tf.function: refuse what cannot be
        _check_differentiable(victim_fn, observation_space, "victim_fn")
        sample = np.asarray(observation_space.sample(), np.float32)[np.newaxis]
        scores_shape = tuple(logits_fn(sample).shape)
        if len(scores_shape) != 2 or scores_shape[0] != 1:
            raise ValueError("`victim_fn` must map a batch of observations to scores of shape "
                             f"(batch, n_actions). Received: shape {scores_shape} for a batch "
                             "of one")
        self.n_actions = int(scores_shape[-1])

    def check_actions(self, actions, batch: int, name: str = "actions") -> np.ndarray:
        """The adversary's ``actions`` for a batch of ``batch`` observations, validated:
        ``(batch,)`` whole numbers in ``[0, n_actions)`` (director) or ``(batch, *obs_shape)``
        finite numbers (state; clipped to [-1, 1] by :meth:`perturb`).

        Raises:
            ValueError: naming ``actions``, for a wrong shape or values outside that space.

        Example:
            >>> perturber.check_actions([1, 0], batch=2)      # director: array([1, 0])
            >>> perturber.check_actions([0.5, 0], batch=2)    # ValueError: whole numbers
        """
        a = np.asarray(actions)
        if self.mode == "director":
            a = a.reshape(-1) if a.ndim else a.reshape(1)
            numeric = (a.dtype != bool and np.issubdtype(a.dtype, np.number)
                       and not np.issubdtype(a.dtype, np.complexfloating))
            if a.shape != (batch,) or not numeric or not np.all(np.isfinite(a)) \
                    or not np.all(a == np.round(a)) or a.min() < 0 or a.max() >= self.n_actions:
                raise ValueError(f"`{name}` must be {batch} whole number{'s' * (batch > 1)} "
                                 f"in [0, {self.n_actions}) (one target action per observation, "
                                 f"director mode). Received: shape {np.shape(actions)}, "
                                 f"values {np.asarray(actions).ravel()[:8].tolist()}")
            return a.astype(np.int64)
        expected = (batch, *self.space.shape)
        if a.shape != expected or a.dtype == bool or not np.issubdtype(a.dtype, np.number) \
                or not np.all(np.isfinite(a)):
            raise ValueError(f"`{name}` must be an array of shape {expected} of finite "
                             "numbers (the perturbation divided by eps, state mode; values "
                             f"outside [-1, 1] are clipped). Received: shape {np.shape(actions)}")
        return a.astype(np.float32)

    def perturb(self, observations, actions) -> np.ndarray:
        """Perturbed observations ``(batch, *obs_shape)`` for the adversary's ``actions``
        (``(batch,)`` integers in director mode, ``(batch, *obs_shape)`` in [-1, 1] in state
        mode), each within ``eps`` of its observation in L-inf.

        Raises:
            ValueError: for actions outside the adversary's action space (:meth:`check_actions`).
        """
        original = np.asarray(observations)
        if original.ndim != len(self.space.shape) + 1 or \
                original.shape[1:] != tuple(self.space.shape) or len(original) == 0:
            raise ValueError(f"`observations` must be a non-empty batch of shape (batch, "
                             f"{', '.join(map(str, self.space.shape))}). Received: shape "
                             f"{original.shape}")
        x = original.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("`observations` must be finite. Received a batch with NaN or inf")
        actions = self.check_actions(actions, len(x))
        if self.mode == "director":
            out = self._director(x, actions).numpy()
        else:
            out = x + self.eps * np.clip(actions, -1.0, 1.0)
        # the change is applied to the original observations (exact in their own dtype),
        # clipped to the eps ball (also after the cast) and to the space
        return _perturbed_into_space(original, out, self.space, computed=x, eps=self.eps)

    def victim_actions(self, observations) -> np.ndarray:
        """The victim's greedy actions ``(batch,)`` on a batch of observations."""
        return self._greedy(np.asarray(observations, np.float32)).numpy()

    def action_space(self, n_actions: int) -> gym.Space:
        """The adversary's action space: ``Discrete(n_actions)`` (director) or
        ``Box(-1, 1, obs_shape)`` (state)."""
        if self.mode == "director":
            return gym.spaces.Discrete(n_actions)
        return gym.spaces.Box(-1.0, 1.0, self.space.shape, np.float32)


class AdversaryEnv(gym.Wrapper, RecordConstructorArgs):
    """The adversary's MDP against a fixed victim (Zhang et al. 2021's SA-MDP, PA-AD's
    director form): train an RL agent on it to obtain a learned optimal adversary.

    Observation: the environment's true state (unchanged space). Action: the
    :class:`ObservationPerturber`'s (``Discrete(n_actions)`` in ``"director"`` mode,
    ``Box(-1, 1, obs_shape)`` in ``"state"`` mode). Each step, the victim's greedy action on the
    perturbed observation is executed in ``env``; the adversary's reward is the victim's reward
    negated (``info["true_reward"]`` of a tampering wrapper if present, so the adversary
    minimises the victim's real return). ``info`` gets ``victim_action``, ``victim_reward`` and
    ``perturbed_observation``.

    Args:
        env: an environment with a ``Box`` observation space and ``Discrete`` actions.
        victim: the attacked policy: a callable mapping a batch of observations to action
            scores ``(batch, n_actions)`` (a Keras model,
            :func:`keras_secure.rl.tf_agents.network_scores`), or a TF-Agents ``DqnAgent`` /
            ``PPOAgent`` (through :func:`keras_secure.rl.robust.agent_scores`).
        eps: L-inf budget in observation units, > 0.
        mode: ``"director"`` or ``"state"``. Defaults to ``"director"``.
        steps: PGD steps of the director's targeted attack, >= 1. Defaults to 10.

    Raises:
        ValueError: for ``eps <= 0``, a discrete (non-Box) observation space, non-Discrete
            actions, or a victim whose action spec / scores do not match the environment.
        TypeError: for a victim that is not callable or fails on a sample observation.

    Example:
        >>> adv_env = AdversaryEnv(gymnasium.make("CartPole-v1"), victim_scores, eps=0.1)
        >>> gymnasium.utils.env_checker.check_env(adv_env)

    References:
        Zhang, Chen, Boning & Hsieh (2021), "Robust Reinforcement Learning on State
        Observations with Learned Optimal Adversary", ICLR; Sun et al. (2022), "Who Is the
        Strongest Enemy? Towards Optimal and Efficient Evasion Attacks in Deep RL", ICLR.
    """

    def __init__(self, env: gym.Env, victim, eps: float, mode: str = "director",
                 steps: int = 10):
        RecordConstructorArgs.__init__(self, victim=victim, eps=eps, mode=mode, steps=steps,
                                       _disable_deepcopy=True)
        gym.Wrapper.__init__(self, env)
        scores, eps = check_adversary_setup(env, victim, eps)
        self.perturber = ObservationPerturber(scores, env.observation_space, eps, mode, steps)
        self.action_space = self.perturber.action_space(int(env.action_space.n))
        self._obs = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.action_space.seed(seed)
        self._obs, info = self.env.reset(seed=seed, options=options)
        return self._obs, info

    def step(self, action):
        raw = np.asarray(action) if action is not None else np.asarray(np.nan)
        if self.perturber.mode == "director":
            if raw.shape != () or raw.dtype == bool or not np.issubdtype(raw.dtype, np.number):
                raise ValueError(f"`action` must be one whole number in [0, "
                                 f"{self.perturber.n_actions}) (the target action). Received: "
                                 f"action={action!r}")
            action = raw.reshape(1)  # check_actions refuses fractional or out-of-range values
        else:
            action = raw[np.newaxis] if raw.dtype != object else raw
        action = self.perturber.check_actions(action, 1, name="action")
        perturbed = self.perturber.perturb(np.asarray(self._obs)[np.newaxis], action)
        victim_action = int(self.perturber.victim_actions(perturbed)[0])
        obs, reward, terminated, truncated, info = self.env.step(victim_action)
        self._obs = obs
        info = dict(info)
        victim_reward = float(info.get("true_reward", reward))
        info.update(victim_action=victim_action, victim_reward=victim_reward,
                    perturbed_observation=perturbed[0])
        return obs, -victim_reward, terminated, truncated, info


class LearnedAdversaryObservation(gym.ObservationWrapper, RecordConstructorArgs):
    """Evaluation attack with a learned adversary (ATLA / PA-AD): each observation the agent
    sees is the :class:`ObservationPerturber`'s result for the adversary's action at the true
    state, inside the L-inf ``eps`` ball. The counterpart of
    :class:`~keras_secure.rl.AdversarialObservation` (one-step PGD) with an attacker that plans
    over the episode.

    Args:
        env: an environment with a ``Box`` observation space and ``Discrete`` actions.
        victim: the attacked agent's scores (as :class:`AdversaryEnv`); the director's targeted
            PGD runs on them.
        adversary: a callable mapping a batch of true observations to the adversary's actions
            (``(batch,)`` integers in director mode, ``(batch, *obs_shape)`` in state mode), e.g.
            :func:`keras_secure.rl.ppo.greedy_action_fn` of an agent trained on
            :class:`AdversaryEnv`.
        eps: L-inf budget, > 0.
        mode: ``"director"`` or ``"state"``. Defaults to ``"director"``.
        steps: PGD steps of the director, >= 1. Defaults to 10.

    Raises:
        ValueError / TypeError: as :class:`AdversaryEnv`, and for an ``adversary`` that does not
            return valid actions for a sample observation.

    Example:
        >>> env = LearnedAdversaryObservation(gymnasium.make("CartPole-v1"), victim_scores,
        ...                                   greedy_action_fn(adversary_agent), eps=0.1)

    References:
        Zhang et al. (2021), ATLA, ICLR; Sun et al. (2022), PA-AD, ICLR.
    """

    def __init__(self, env: gym.Env, victim, adversary: Callable, eps: float,
                 mode: str = "director", steps: int = 10):
        RecordConstructorArgs.__init__(self, victim=victim, adversary=adversary, eps=eps,
                                       mode=mode, steps=steps, _disable_deepcopy=True)
        gym.ObservationWrapper.__init__(self, env)
        scores, eps = check_adversary_setup(env, victim, eps)
        self.perturber = ObservationPerturber(scores, env.observation_space, eps, mode, steps)
        if not callable(adversary):
            raise TypeError(f"`adversary` must be callable. Received: adversary={adversary!r}")
        adv_space = self.perturber.action_space(int(env.action_space.n))
        sample = np.asarray(env.observation_space.sample(), np.float32)[np.newaxis]
        out = np.asarray(adversary(sample))
        expected = (1,) if mode == "director" else (1, *env.observation_space.shape)
        try:
            self.perturber.check_actions(out, 1)
            valid = out.shape == expected and (mode == "director" or all(
                adv_space.contains(np.asarray(a, adv_space.dtype)) for a in out))
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"`adversary` must map a batch of observations to actions of "
                             f"{adv_space} with shape (batch, ...) = {expected} for a batch of "
                             f"one. Received: shape {out.shape}, values {out.tolist()}")
        self.adversary = adversary

    def observation(self, observation):
        x = np.asarray(observation, np.float32)[np.newaxis]
        return self.perturber.perturb(x, np.asarray(self.adversary(x)))[0]
