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
    seed = int(check_number("seed", seed, low=0, integer=True))
    _check_env("env", env)
    _check_callables(policy=policy)
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
            :class:`~keras_secure.rl.ObservationNoise` wrapper's ``observation`` method; that
            wrapper draws from its own generator, which only its own ``reset(seed=...)``
            seeds - reset it first for a reproducible figure. A ``kind="bias"`` wrapper's
            offset is drawn at that reset and stays the same over all ``episodes`` here;
            evaluate on the wrapped environment itself to get one offset per episode).
        episodes: >= 1. Defaults to 5.
        seed: seed of the first episode. Defaults to 0.

    Returns:
        The fraction in [0, 1].

    Example:
        >>> noise = ObservationNoise(env, eps=0.1)
        >>> noise.reset(seed=0)  # seeds the wrapper's own generator
        >>> policy_deviation(env, policy, noise.observation)
    """
    episodes = check_number("episodes", episodes, low=1, integer=True)
    seed = int(check_number("seed", seed, low=0, integer=True))
    _check_env("env", env)
    _check_callables(policy=policy, perturb=perturb)
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


def _check_callables(**named) -> None:
    """TypeError naming the first argument that is not callable (None allowed)."""
    for name, fn in named.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"`{name}` must be callable. Received: {name}={fn!r}")


def _check_env(name: str, env) -> None:
    if not isinstance(env, gym.Env):
        raise TypeError(f"`{name}` must be a gymnasium environment instance (e.g. "
                        f"gymnasium.make('CartPole-v1')). Received: {name}={env!r}")


def _valid_action(space: gym.Space, action) -> bool:
    """Whether ``action`` is an action of ``space`` (a whole number in range for Discrete)."""
    a = np.asarray(action)
    if isinstance(space, gym.spaces.Discrete):
        return (a.ndim == 0 and np.issubdtype(a.dtype, np.number) and bool(np.isfinite(a))
                and a == np.round(a) and space.contains(np.int64(a)))
    try:
        return bool(space.contains(a.astype(space.dtype)))
    except (TypeError, ValueError):
        return False


def evaluate_batched(make_env: Callable[[], gym.Env], policy: Callable[[Any], Any],
                     episodes: int = 10, seed: int = 0, observe: Callable | None = None,
                     max_steps: int | None = None,
                     true_reward: bool = True) -> tuple[EpisodeStats, float | None]:
    """:func:`evaluate_policy` for ``episodes`` environments run side by side, the policy (and
    the attack) called once per step on the batch of still-running episodes.

    Episode ``i`` runs in its own environment ``make_env()`` reset with seed ``seed + i``, so
    the returns equal :func:`evaluate_policy`'s for a deterministic policy and attack (tested).
    With ``observe``, the policy acts on ``observe(obs_batch)`` and the policy deviation -
    the fraction of visited states where that action differs from the action on the true
    observation, as :func:`policy_deviation` - is returned too.

    Args:
        make_env: returns one (possibly wrapped) environment.
        policy: batch of observations -> batch of actions.
        episodes: >= 1. Defaults to 10.
        seed: seed of the first episode. Defaults to 0.
        observe: batch -> batch of observations the policy sees (an attack), or None.
        max_steps: cut episodes after this many steps, or None.
        true_reward: sum ``info["true_reward"]`` where a tampering wrapper provides it.

    Returns:
        ``(EpisodeStats, deviation)``; ``deviation`` is None without ``observe``.

    Raises:
        ValueError / TypeError: for arguments out of range, a ``make_env`` that is not a
            factory of new environments, or a ``policy`` that does not return one valid
            action per observation.

    Example:
        >>> stats, deviation = evaluate_batched(make, greedy, 10, observe=pgd_batch)
    """
    episodes = check_number("episodes", episodes, low=1, integer=True)
    max_steps = check_number("max_steps", max_steps, low=1, integer=True, allow_none=True)
    seed = int(check_number("seed", seed, low=0, integer=True))
    _check_callables(policy=policy, observe=observe)
    if not callable(make_env) or isinstance(make_env, gym.Env):
        raise TypeError("`make_env` must be a function returning a new environment (e.g. "
                        "`lambda: gymnasium.make('CartPole-v1')`), called once per episode. "
                        f"Received: make_env={make_env!r}")
    envs = [make_env() for _ in range(episodes)]
    for env in envs:
        if not isinstance(env, gym.Env):
            raise TypeError("`make_env` must return a gymnasium environment. Received: "
                            f"{env!r}")
    if len({id(env) for env in envs}) != episodes:
        raise ValueError("`make_env` must return a new environment on each call (the episodes "
                         "run side by side); it returned the same object twice")
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    totals, lengths = np.zeros(episodes), np.zeros(episodes, int)
    active = list(range(episodes))
    changed = visited = 0
    while active:
        batch = np.stack([np.asarray(obs[i]) for i in active])
        seen = batch if observe is None else observe(batch)
        actions = np.asarray(policy(seen))
        if actions.dtype == bool:  # e.g. `obs[:, 2] > 0` for a two-action space
            actions = actions.astype(np.int64)
        if actions.ndim == 0 or len(actions) != len(active):
            raise ValueError(f"`policy` must return one action per observation: "
                             f"{len(active)} for this batch. Received: shape {actions.shape}")
        bad = [a for i, a in zip(active, actions) if not _valid_action(envs[i].action_space, a)]
        if bad:
            raise ValueError(f"`policy` returned actions outside the action space "
                             f"{envs[active[0]].action_space}: {np.asarray(bad).tolist()[:5]}")
        if observe is not None:
            changed += int(np.sum(actions != np.asarray(policy(batch))))
            visited += len(active)
        still = []
        for i, action in zip(active, actions):
            if isinstance(envs[i].action_space, gym.spaces.Discrete):
                action = int(action)  # a whole-number float is the same action
            obs[i], reward, terminated, truncated, info = envs[i].step(action)
            totals[i] += float(info.get("true_reward", reward)) if true_reward else float(reward)
            lengths[i] += 1
            if not (terminated or truncated or (max_steps is not None
                                                and lengths[i] >= max_steps)):
                still.append(i)
        active = still
    for env in envs:
        env.close()
    stats = EpisodeStats(float(totals.mean()), float(totals.std()), tuple(totals.tolist()),
                         tuple(int(n) for n in lengths))
    return stats, (changed / visited if observe is not None else None)


@dataclasses.dataclass(frozen=True)
class MeanCI:
    """Mean of per-seed values with a two-sided Student-t confidence interval:
    ``mean +- t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` (sd with ``n - 1``)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def half_width(self) -> float:
        """``(high - low) / 2``."""
        return (self.high - self.low) / 2

    def overlaps(self, other: "MeanCI") -> bool:
        """Whether the two intervals share a point."""
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        # one decimal for returns; three significant digits for small values (fractions)
        scale = max(abs(self.mean), abs(self.low), abs(self.high))
        fmt = (lambda v: f"{v:.1f}") if scale >= 10 else (lambda v: f"{v:.3g}")
        return f"{fmt(self.mean)} [{fmt(self.low)}, {fmt(self.high)}]"


def mean_confidence_interval(values, confidence: float = 0.95) -> MeanCI:
    """Mean and Student-t confidence interval of independent per-seed values (e.g. one
    evaluation return per training seed).

    Args:
        values: at least 2 finite numbers, one per independent seed (1-D; any iterable).
        confidence: in (0, 1). Defaults to 0.95.

    Returns:
        :class:`MeanCI`.

    Raises:
        ValueError: for fewer than 2 values, values that are not one-dimensional (one per
            seed), non-finite values or a non-finite result, or ``confidence`` outside (0, 1).
        TypeError: for values that are not real numbers (strings, booleans).

    Example:
        >>> ci = mean_confidence_interval([1, 2, 3, 4, 5])   # 3.0 [1.04, 4.96]
    """
    from scipy import stats as scipy_stats

    confidence = check_number("confidence", confidence, low=0.0, high=1.0,
                              low_inclusive=False, high_inclusive=False)

    def refuse():
        return TypeError("`values` must be an iterable of real numbers, one per seed. "
                         f"Received: values={values!r:.200}")

    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise refuse()
    items = values if isinstance(values, np.ndarray) else list(values)
    if not isinstance(items, np.ndarray) and any(
            isinstance(v, (bool, np.bool_, str, bytes)) for v in items):
        raise refuse()
    try:
        raw = np.asarray(items)
        if raw.dtype == object:
            raw = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise refuse() from None
    if raw.dtype == bool or not (np.issubdtype(raw.dtype, np.integer)
                                 or np.issubdtype(raw.dtype, np.floating)):
        raise refuse()
    if raw.ndim != 1:
        raise ValueError("`values` must be one-dimensional: one number per independent seed "
                         "(average each seed's episodes first; flattening seeds x episodes "
                         "would count episodes as independent seeds). Received: shape "
                         f"{raw.shape}")
    v = raw.astype(np.float64)
    if v.size < 2 or not np.all(np.isfinite(v)):
        raise ValueError("`values` must hold at least 2 finite numbers (one per seed) for a "
                         f"confidence interval. Received: values={raw.tolist()}")
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(v.mean())
        half = float(scipy_stats.t.ppf((1 + confidence) / 2, v.size - 1)
                     * v.std(ddof=1) / np.sqrt(v.size))
    if not (np.isfinite(mean) and np.isfinite(half)):
        raise ValueError("`values` are too large for a finite mean and interval in float64. "
                         f"Received: values={raw.tolist()[:5]}")
    return MeanCI(mean, mean - half, mean + half, int(v.size), confidence)
