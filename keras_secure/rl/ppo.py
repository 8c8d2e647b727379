"""PPO training on vectorized environments, the learned adversary's training, and ATLA.

TF-Agents' PPO agents train on ``[batch, time]`` trajectories; this module collects them from
``num_envs`` gymnasium environments stepped together (``gymnasium.vector``), so the policy (and
any observation attack) runs once per vector step on a batch instead of once per environment
step. With ``asynchronous=True`` the environments step in worker processes
(``AsyncVectorEnv``), on the other CPU core while the policy runs here.

- :class:`VectorRollout` collects PPO trajectories, optionally through an observation attack
  (the victim sees perturbed observations: adversarial collection, ATLA) or an action mapping
  (the learner is an adversary whose action becomes the victim's perturbation).
- :func:`make_ppo_agent` builds a ``PPOClipAgent`` (or :class:`~keras_secure.rl.robust.SAPPOAgent`)
  with keras_secure's categorical head.
- :func:`train_ppo` trains a victim; :func:`train_adversary` trains a learned optimal adversary
  (Zhang et al. 2021; Sun et al. 2022's PA-AD director) against a fixed victim;
  :func:`atla_train` alternates the two (ATLA, Zhang et al. 2021).
- :func:`logits_fn`, :func:`greedy_action_fn` give batched ``observations -> logits / actions``
  callables of a trained agent.

Needs ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported, as every TF-Agents agent
(:mod:`keras_secure.rl.robust` raises a clear ``ImportError`` otherwise).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import gymnasium as gym
import numpy as np
import tensorflow as tf

from keras_secure.rl.robust import SAPPOAgent, categorical_projection_net  # noqa: F401 (checks legacy keras)
from keras_secure.validation import check_number

from tf_agents.agents.ppo import ppo_clip_agent  # noqa: E402
from tf_agents.networks import actor_distribution_network, value_network  # noqa: E402
from tf_agents.specs import tensor_spec  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402
from tf_agents.trajectories import trajectory as trajectory_lib  # noqa: E402
from tf_agents.utils import common  # noqa: E402

from keras_secure.rl.adversary import AdversaryEnv, ObservationPerturber  # noqa: E402
from keras_secure.rl.tf_agents import to_tf_agents  # noqa: E402

FIRST, MID, LAST = int(ts.StepType.FIRST), int(ts.StepType.MID), int(ts.StepType.LAST)


def make_ppo_agent(env: gym.Env, seed: int = 0, *, learning_rate: float = 1e-3,
                   num_epochs: int = 10, hidden: tuple[int, ...] = (64, 64),
                   entropy_regularization: float = 0.0, sa_eps: float | None = None,
                   sa_weight: float = 0.1, sa_steps: int = 5, **kwargs):
    """A TF-Agents ``PPOClipAgent`` (or ``SAPPOAgent`` when ``sa_eps`` is given) for ``env``'s
    spaces, with keras_secure's categorical head, GAE, clipping 0.2, discount 0.99 and no
    observation normalizer (attacks then act in the units the actor sees).

    Args:
        env: a gymnasium environment (Box observations, Discrete actions); only its spaces are
            used.
        seed: seeds Python, NumPy and TensorFlow (the networks' initial weights).
        learning_rate: Adam's, > 0. Defaults to 1e-3.
        num_epochs: PPO epochs per training batch, >= 1. Defaults to 10.
        hidden: hidden layer sizes of the actor and value networks. Defaults to (64, 64).
        entropy_regularization: >= 0. Defaults to 0.
        sa_eps, sa_weight, sa_steps: SA-PPO's (:class:`~keras_secure.rl.robust.SAPPOAgent`);
            ``sa_eps=None`` gives plain PPO.
        **kwargs: any other ``PPOClipAgent`` argument.

    Returns:
        The initialized agent.

    Raises:
        ValueError / TypeError: for arguments out of range.

    Example:
        >>> agent = make_ppo_agent(gymnasium.make("CartPole-v1"), seed=0)
    """
    learning_rate = check_number("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    num_epochs = check_number("num_epochs", num_epochs, low=1, integer=True)
    entropy_regularization = check_number("entropy_regularization", entropy_regularization,
                                          low=0.0)
    tf.keras.utils.set_random_seed(seed)
    py_env = to_tf_agents(env)
    time_step_spec = tensor_spec.from_spec(py_env.time_step_spec())
    action_spec = tensor_spec.from_spec(py_env.action_spec())
    actor = actor_distribution_network.ActorDistributionNetwork(
        time_step_spec.observation, action_spec, fc_layer_params=tuple(hidden),
        discrete_projection_net=categorical_projection_net)
    value = value_network.ValueNetwork(time_step_spec.observation, fc_layer_params=tuple(hidden))
    args = dict(optimizer=tf.keras.optimizers.Adam(learning_rate), actor_net=actor,
                value_net=value, num_epochs=num_epochs, importance_ratio_clipping=0.2,
                use_gae=True, discount_factor=0.99, normalize_observations=False,
                entropy_regularization=entropy_regularization,
                train_step_counter=tf.Variable(0, dtype=tf.int64))
    args.update(kwargs)
    if sa_eps is None:
        agent = ppo_clip_agent.PPOClipAgent(time_step_spec, action_spec, **args)
    else:
        agent = SAPPOAgent(time_step_spec, action_spec, sa_eps=sa_eps, sa_weight=sa_weight,
                           sa_steps=sa_steps, seed=seed, **args)
    agent.initialize()
    return agent


def logits_fn(agent) -> Callable:
    """``observations (batch, *obs_shape) -> logits (batch, n_actions)`` of a PPO agent's
    actor (after its observation normalizer, if any), as one graph.

    Example:
        >>> scores = logits_fn(agent); scores(np.zeros((3, 4), np.float32)).shape
        TensorShape([3, 2])
    """
    from keras_secure.rl.robust import agent_scores

    scores = agent_scores(agent)
    shape = tuple(agent.time_step_spec.observation.shape)
    return tf.function(scores, input_signature=[tf.TensorSpec((None, *shape), tf.float32)])


def greedy_action_fn(agent) -> Callable[[np.ndarray], np.ndarray]:
    """``observations (batch, *obs_shape) -> greedy actions (batch,)`` (NumPy) of a PPO agent:
    the adversary argument of :class:`~keras_secure.rl.adversary.LearnedAdversaryObservation`,
    or a victim's evaluation policy.

    Example:
        >>> act = greedy_action_fn(agent); act(obs_batch)
    """
    scores = logits_fn(agent)
    return lambda obs: tf.argmax(scores(np.asarray(obs, np.float32)), axis=-1).numpy()


@dataclasses.dataclass
class RolloutStats:
    """What a :meth:`VectorRollout.collect` call saw: ``steps`` environment steps, the
    ``returns`` (environment rewards, before ``reward_scale``) of the episodes that ended, and
    ``seconds`` of wall time."""

    steps: int
    returns: list
    seconds: float


class VectorRollout:
    """Collects ``[num_envs, steps]`` TF-Agents trajectories for PPO from ``num_envs``
    gymnasium environments stepped together.

    Time steps follow TF-Agents' conventions: FIRST after a reset, LAST with discount 0 on
    termination and discount 1 on truncation, and the step after a LAST is the next episode's
    FIRST (gymnasium's ``NEXT_STEP`` autoreset, which ignores that step's action: TF-Agents
    agents mask such boundary transitions). Episodes continue across ``collect`` calls.

    Args:
        make_env: a function returning one gymnasium environment (Box observations, Discrete
            actions); called ``num_envs`` times.
        num_envs: environments stepped together, >= 1. Defaults to 8.
        seed: environment ``i`` is reset with seed ``seed + i``; also seeds action sampling.
        asynchronous: step the environments in worker processes (``AsyncVectorEnv``) instead
            of in this process (``SyncVectorEnv``). Defaults to False.

    Raises:
        ValueError / TypeError: for arguments out of range.

    Example:
        >>> rollout = VectorRollout(lambda: gymnasium.make("CartPole-v1"), num_envs=8, seed=0)
        >>> experience, stats = rollout.collect(agent, 128)
        >>> agent.train(experience)
    """

    def __init__(self, make_env: Callable[[], gym.Env], num_envs: int = 8, seed: int = 0,
                 asynchronous: bool = False):
        self.num_envs = check_number("num_envs", num_envs, low=1, integer=True)
        seed = check_number("seed", seed, integer=True)
        fns = [make_env] * self.num_envs
        self.envs = (gym.vector.AsyncVectorEnv(fns) if asynchronous
                     else gym.vector.SyncVectorEnv(fns))
        self.obs, _ = self.envs.reset(seed=[seed + i for i in range(self.num_envs)])
        self.step_type = np.full(self.num_envs, FIRST, np.int32)
        self.reward = np.zeros(self.num_envs, np.float32)
        self.discount = np.ones(self.num_envs, np.float32)
        self.running = np.zeros(self.num_envs)
        self.rng = np.random.default_rng([seed, 0x9B0])

    def close(self) -> None:
        """Close the environments (and worker processes)."""
        self.envs.close()

    def collect(self, agent, steps: int, observe: Callable | None = None,
                env_action: Callable | None = None, reward_scale: float = 1.0):
        """Run ``steps`` vector steps with the agent's stochastic policy.

        Args:
            agent: a PPO agent (its actor's logits give the action distribution).
            steps: vector steps, >= 2 (``num_envs * steps`` environment steps).
            observe: ``obs_batch -> obs_batch`` the agent sees (and that is stored), e.g. an
                attack; None for the true observations.
            env_action: ``(true obs_batch, agent actions) -> environment actions``, e.g. the
                victim's action under the adversary's perturbation; None for the agent's.
            reward_scale: stored reward = ``reward_scale * reward`` (-1 for an adversary).

        Returns:
            ``(experience, stats)``: a ``Trajectory`` of ``[num_envs, steps]`` tensors for
            ``agent.train``, and :class:`RolloutStats`.
        """
        import time

        steps = check_number("steps", steps, low=2, integer=True)
        scores = getattr(agent, "_ks_logits", None)
        if scores is None:
            scores = agent._ks_logits = logits_fn(agent)
        n = self.num_envs
        shape = self.obs.shape[1:]
        record = {k: [] for k in ("step_type", "observation", "action", "logits",
                                  "next_step_type", "reward", "discount")}
        finished = []
        start = time.perf_counter()
        for _ in range(steps):
            seen = np.asarray(self.obs if observe is None else observe(self.obs), np.float32)
            logits = scores(seen).numpy()
            # sample a ~ softmax(logits) with the rollout's own generator (Gumbel-max)
            actions = np.argmax(logits + self.rng.gumbel(size=logits.shape), axis=-1)
            act = actions if env_action is None else env_action(self.obs, actions)
            obs, reward, terminated, truncated, _ = self.envs.step(act)
            boundary = self.step_type == LAST
            next_type = np.where(boundary, FIRST,
                                 np.where(terminated | truncated, LAST, MID)).astype(np.int32)
            reward = np.where(boundary, 0.0, reward).astype(np.float32)
            discount = np.where(terminated & ~boundary, 0.0, 1.0).astype(np.float32)
            for name, value in (("step_type", self.step_type), ("observation", seen),
                                ("action", actions.astype(np.int64)), ("logits", logits),
                                ("next_step_type", next_type),
                                ("reward", reward_scale * reward), ("discount", discount)):
                record[name].append(value)
            self.running = np.where(boundary, 0.0, self.running + reward)
            for i in np.flatnonzero(next_type == LAST):
                finished.append(float(self.running[i]))
            self.obs, self.step_type = obs, next_type
        seconds = time.perf_counter() - start
        stacked = {k: np.stack(v, axis=1) for k, v in record.items()}  # [n, steps, ...]
        experience = trajectory_lib.Trajectory(
            step_type=tf.constant(stacked["step_type"]),
            observation=tf.constant(stacked["observation"].reshape(n, steps, *shape)),
            action=tf.constant(stacked["action"]),
            policy_info={"dist_params": {"logits": tf.constant(stacked["logits"])}},
            next_step_type=tf.constant(stacked["next_step_type"]),
            reward=tf.constant(stacked["reward"].astype(np.float32)),
            discount=tf.constant(stacked["discount"]))
        return experience, RolloutStats(n * steps, finished, seconds)


def _train_fn(agent, compiled: bool = True):
    """``agent.train`` in one graph (traced once per agent; TF-Agents' PPO unrolls its epochs,
    so tracing costs about a second per epoch), or eager when ``compiled`` is False (cheaper
    for a handful of iterations)."""
    if not compiled:
        return agent.train
    fn = getattr(agent, "_ks_train", None)
    if fn is None:
        fn = agent._ks_train = common.function(agent.train)
    return fn


def train_ppo(agent, rollout: VectorRollout, iterations: int, steps: int = 128,
              observe: Callable | None = None, log: Callable | None = None,
              compiled: bool = True) -> list[float]:
    """Train a PPO agent for ``iterations`` rounds of ``rollout.num_envs * steps`` environment
    steps.

    Args:
        agent: a PPO agent (e.g. from :func:`make_ppo_agent`).
        rollout: the :class:`VectorRollout` it collects from (its environments carry any
            reward attack or defence wrappers).
        iterations: >= 1.
        steps: vector steps per iteration, >= 2. Defaults to 128.
        observe: an observation attack applied during collection (batch -> batch), e.g. PGD
            against the live agent (adversarial collection) or a learned adversary (ATLA);
            None for clean collection.
        log: called with a progress line per iteration, or None.
        compiled: run ``agent.train`` as one traced graph (True) or eagerly. Defaults to True.

    Returns:
        Mean return of the episodes finished in each iteration (NaN when none finished).

    Example:
        >>> history = train_ppo(agent, VectorRollout(make, 8, seed=0), iterations=30)
    """
    return _iterate(agent, rollout, iterations, steps, compiled, log, "iteration",
                    "mean return", observe=observe)


def _iterate(agent, rollout, iterations, steps, compiled, log, label, measure, **collect):
    """``iterations`` rounds of collect + train; the mean return of finished episodes each."""
    iterations = check_number("iterations", iterations, low=1, integer=True)
    train = _train_fn(agent, compiled)
    history = []
    for i in range(iterations):
        experience, stats = rollout.collect(agent, steps, **collect)
        train(experience)
        mean = float(np.mean(stats.returns)) if stats.returns else float("nan")
        history.append(mean)
        if log is not None:
            log(f"{label} {i + 1}/{iterations}: {measure} {mean:.1f}")
    return history


def make_adversary(env: gym.Env, victim, eps: float, seed: int = 0, mode: str = "director",
                   attack_steps: int = 10, **agent_kwargs):
    """A PPO adversary agent and its :class:`~keras_secure.rl.adversary.ObservationPerturber`
    against ``victim`` (validated through :class:`~keras_secure.rl.adversary.AdversaryEnv`:
    ``eps > 0``, a Box observation space, a victim matching the environment's actions).

    Only the director mode (PA-AD, ``Discrete(n_actions)`` actions) is trained by PPO here:
    keras_secure's PPO agents have categorical heads.

    Returns:
        ``(adversary_agent, perturber)``.

    Raises:
        ValueError / TypeError: as :class:`~keras_secure.rl.adversary.AdversaryEnv`, and for
            ``mode="state"``.

    Example:
        >>> adversary, perturber = make_adversary(gymnasium.make("CartPole-v1"), victim, 0.1)
    """
    if mode != "director":
        raise ValueError("make_adversary trains the director form (PA-AD) with a categorical "
                         "PPO head; `mode` must be 'director'. Received: mode="
                         f"{mode!r} (train an agent with a continuous head on AdversaryEnv("
                         "..., mode='state') for the other form)")
    adv_env = AdversaryEnv(env, victim, eps, mode=mode, steps=attack_steps)
    agent = make_ppo_agent(adv_env, seed=seed, **agent_kwargs)
    return agent, adv_env.perturber


def train_adversary(adversary, perturber: ObservationPerturber, rollout: VectorRollout,
                    iterations: int, steps: int = 128, log: Callable | None = None,
                    compiled: bool = True) -> list[float]:
    """Train a learned adversary (PA-AD director) against the victim of ``perturber``: the
    adversary sees the true states, picks the action it wants the victim to take, the victim
    acts greedily on the perturbed observation, and the adversary's reward is the victim's
    reward negated (Zhang et al. 2021's SA-MDP).

    Args:
        adversary, perturber: from :func:`make_adversary`.
        rollout: a :class:`VectorRollout` over the clean environment.
        iterations, steps, log, compiled: as :func:`train_ppo`.

    Returns:
        The victim's mean return per iteration (lower is a stronger adversary).

    Example:
        >>> adversary, perturber = make_adversary(make(), victim_scores, eps=0.1)
        >>> train_adversary(adversary, perturber, VectorRollout(make, 8), iterations=20)
    """
    def victim_action(obs, adversary_actions):
        return perturber.victim_actions(perturber.perturb(obs, adversary_actions))

    return _iterate(adversary, rollout, iterations, steps, compiled, log,
                    "adversary iteration", "victim return", env_action=victim_action,
                    reward_scale=-1.0)


def learned_attack(adversary, perturber: ObservationPerturber,
                   probability: float = 1.0, seed: int = 0) -> Callable:
    """The batched observation attack of a trained adversary: ``obs_batch ->
    perturber.perturb(obs_batch, greedy adversary actions)``, applied to each observation
    with ``probability`` (seeded). For :func:`train_ppo`'s ``observe`` (ATLA) and
    :func:`keras_secure.rl.metrics.evaluate_batched`.

    Example:
        >>> attack = learned_attack(adversary, perturber)
    """
    probability = check_number("probability", probability, low=0.0, high=1.0)
    act = greedy_action_fn(adversary)
    rng = np.random.default_rng([seed, 0xA7A])

    def attack(obs):
        obs = np.asarray(obs, np.float32)
        perturbed = perturber.perturb(obs, act(obs))
        if probability >= 1.0:
            return perturbed
        keep = rng.random(len(obs)) >= probability
        return np.where(keep.reshape(-1, *([1] * (obs.ndim - 1))), obs, perturbed)

    return attack


def atla_train(victim, make_env: Callable[[], gym.Env], eps: float, rounds: int,
               victim_iterations: int, adversary_iterations: int, seed: int = 0,
               num_envs: int = 8, steps: int = 128, probability: float = 0.5,
               attack_steps: int = 10, warmup_iterations: int = 0,
               log: Callable | None = None, compiled: bool = True, **adversary_kwargs):
    """ATLA (Zhang et al. 2021): alternating training of a PPO victim against a learned
    adversary (here PA-AD's director form, Sun et al. 2022).

    After ``warmup_iterations`` of clean PPO, each of ``rounds`` rounds trains the adversary
    for ``adversary_iterations`` against the current victim (the adversary persists across
    rounds, as in the paper), then the victim for ``victim_iterations`` on observations
    perturbed by the adversary with ``probability`` per step (a mix of clean and attacked
    steps keeps the clean return; 1.0 trains only under attack).

    Args:
        victim: a PPO agent (:func:`make_ppo_agent`).
        make_env: returns one clean training environment.
        eps: L-inf budget of the adversary, > 0.
        rounds, victim_iterations, adversary_iterations: >= 1.
        seed: seeds the environments and the adversary's network.
        num_envs, steps: of each :class:`VectorRollout` (see :func:`train_ppo`).
        probability: per-step probability that the victim sees the adversary's observation.
        attack_steps: PGD steps of the director's targeted attack.
        warmup_iterations: clean PPO iterations first, >= 0. Defaults to 0.
        log: progress callback, or None.
        compiled: as :func:`train_ppo`. Defaults to True.
        **adversary_kwargs: :func:`make_ppo_agent` arguments of the adversary (e.g.
            ``num_epochs``).

    Returns:
        ``(adversary, perturber)``: the final adversary (trained against the victim before its
        last victim phase).

    Raises:
        ValueError / TypeError: for arguments out of range (before any training).

    Example:
        >>> victim = make_ppo_agent(make(), seed=0)
        >>> atla_train(victim, make, eps=0.1, rounds=5, victim_iterations=6,
        ...            adversary_iterations=4)

    References:
        Zhang, Chen, Boning & Hsieh (2021), "Robust Reinforcement Learning on State
        Observations with Learned Optimal Adversary", ICLR; Sun et al. (2022), PA-AD, ICLR.
    """
    rounds = check_number("rounds", rounds, low=1, integer=True)
    victim_iterations = check_number("victim_iterations", victim_iterations, low=1,
                                     integer=True)
    adversary_iterations = check_number("adversary_iterations", adversary_iterations, low=1,
                                        integer=True)
    warmup_iterations = check_number("warmup_iterations", warmup_iterations, low=0,
                                     integer=True)
    probability = check_number("probability", probability, low=0.0, high=1.0)
    scores = logits_fn(victim)
    adversary, perturber = make_adversary(make_env(), scores, eps, seed=seed + 7919,
                                          attack_steps=attack_steps, **adversary_kwargs)
    victim_rollout = VectorRollout(make_env, num_envs, seed=seed)
    adversary_rollout = VectorRollout(make_env, num_envs, seed=seed + 104729)
    try:
        if warmup_iterations:
            train_ppo(victim, victim_rollout, warmup_iterations, steps, compiled=compiled)
        for r in range(rounds):
            train_adversary(adversary, perturber, adversary_rollout, adversary_iterations, steps,
                            compiled=compiled)
            attack = learned_attack(adversary, perturber, probability, seed=seed + r)
            history = train_ppo(victim, victim_rollout, victim_iterations, steps, observe=attack,
                                compiled=compiled)
            if log is not None:
                log(f"ATLA round {r + 1}/{rounds}: victim return under training mix "
                    f"{np.nanmean(history):.1f}")
    finally:
        victim_rollout.close()
        adversary_rollout.close()
    return adversary, perturber
