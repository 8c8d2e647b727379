"""Robust policy training recipes for TF-Agents agents (DQN, PPO).

Three recipes, each a piece a TF-Agents user drops into an existing training loop:

- **State-adversarial DQN** (:class:`SADqnAgent`, Zhang et al. 2020): a ``DqnAgent`` whose loss
  gets ``weight * mean(max(margin(Q(s_adv)), -hinge))``, where ``s_adv`` is a PGD point in the
  L-inf ``eps`` ball around each replayed state that makes another action look best, and
  ``margin = max_{a != a*} Q(s_adv, a) - Q(s_adv, a*)`` with ``a*`` the greedy action at the
  clean state. It keeps the greedy action stable inside the ball.
- **Adversarial collection** (:func:`adversarial_collection_env`, in the spirit of Pinto et al.
  2017 and Zhang et al. 2021's ATLA with a gradient adversary): experience is collected from an
  environment whose observations are, with some probability per step, perturbed against the
  *current* network (the wrapper holds the live network, so the adversary follows training).
- **Noise injection** (:func:`noisy_collection_env`): collection under random observation
  noise (``ObservationNoise``).

TF-Agents agents are built on Keras 2 (tf-keras): ``TF_USE_LEGACY_KERAS=1`` must be set before
TensorFlow is first imported (``TF_USE_LEGACY_KERAS=1 python train.py``, or
``os.environ["TF_USE_LEGACY_KERAS"] = "1"`` at the very top of the script). Importing this
module without it raises an ``ImportError`` that says so; keras_secure never sets it for you.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import tensorflow as tf


def require_legacy_keras(what: str = "keras_secure.rl.robust") -> None:
    """Raise a clear ``ImportError`` unless ``tf.keras`` is tf-keras (Keras 2), as TF-Agents
    agents need.

    Args:
        what: the name shown in the message.

    Raises:
        ImportError: if ``TF_USE_LEGACY_KERAS=1`` was not set before ``tf.keras`` was loaded.

    Example:
        >>> require_legacy_keras("my DQN script")
    """
    name = tf.keras.layers.Layer.__module__
    if not name.startswith("tf_keras"):
        raise ImportError(
            f"{what} uses TF-Agents agents, which need Keras 2 (tf-keras), but tf.keras is "
            f"Keras 3 (its layers come from {name}). Set TF_USE_LEGACY_KERAS=1 before "
            "TensorFlow is imported: run "
            "`TF_USE_LEGACY_KERAS=1 python your_script.py`, or put `import os; "
            "os.environ['TF_USE_LEGACY_KERAS'] = '1'` at the very top of the script, before any "
            "import of tensorflow, keras_secure or tf_agents. (keras_secure's layers, attacks "
            "and environment wrappers keep using Keras 3 either way.)")


require_legacy_keras()

from tf_agents.agents import tf_agent  # noqa: E402
from tf_agents.agents.dqn import dqn_agent  # noqa: E402

from keras_secure.attacks.base import check_number  # noqa: E402
from keras_secure.attacks.pgd import PGD  # noqa: E402
from keras_secure.rl.tf_agents import to_tf_agents  # noqa: E402
from keras_secure.rl.wrappers import AdversarialObservation, ObservationNoise  # noqa: E402


def network_scores(network) -> Callable[[tf.Tensor], tf.Tensor]:
    """``observations -> action scores`` for a TF-Agents network: Q-values of a ``QNetwork``,
    or the logits of an actor network's categorical distribution (PPO, REINFORCE).

    Args:
        network: a TF-Agents ``Network`` called as ``network(observations)``.

    Returns:
        A callable mapping a float batch of observations to ``(batch, n_actions)`` scores, for
        keras_secure's attacks and :class:`~keras_secure.rl.AdversarialObservation`.

    Raises:
        TypeError: if ``network`` is not callable.

    Example:
        >>> env = AdversarialObservation(gym_env, network_scores(agent._q_network), FGSM(0.05))
    """
    if not callable(network):
        raise TypeError(f"`network` must be a TF-Agents network. Received: {network!r}")

    def scores(observations):
        out, _ = network(observations, training=False)
        if hasattr(out, "logits_parameter"):
            return out.logits_parameter()
        return out

    return scores


class SADqnAgent(dqn_agent.DqnAgent):
    """A TF-Agents ``DqnAgent`` with the state-adversarial smoothness regulariser of SA-DQN
    (Zhang et al. 2020, PGD variant).

    For each replayed state ``s`` with greedy action ``a*``, keras_secure's PGD (margin loss,
    ``sa_steps`` steps, random start) finds ``s_adv`` in the L-inf ball of radius ``sa_eps``
    maximizing ``margin = max_{a != a*} Q(s_adv, a) - Q(s_adv, a*)``; the loss adds
    ``sa_weight * mean(max(margin, -sa_hinge))``. All other arguments are ``DqnAgent``'s; the
    regulariser is logged as ``Losses/sa_regularizer``.

    Args:
        time_step_spec, action_spec, q_network, optimizer: as for ``DqnAgent``.
        sa_eps: radius of the L-inf ball in observation units, > 0.
        sa_weight: weight of the regulariser, >= 0 (0 gives plain DQN). Defaults to 0.1.
        sa_steps: PGD steps, >= 1. Defaults to 5.
        sa_hinge: the margin below which a state counts as robust (``c`` in the paper), >= 0;
            0 penalizes only perturbations that flip the greedy action. Defaults to 0.0.
            In exploratory CartPole runs (12k steps, sa_eps 0.1) weight 0.5 stopped DQN from
            learning with either hinge, weight 0.1 with hinge 0 did not; demo chapter 5
            measures the defaults.
        seed: seed of PGD's random start. Defaults to None.
        **kwargs: any other ``DqnAgent`` argument.

    Raises:
        ValueError / TypeError: for SA arguments out of range (before any training).
        ImportError: at import, if ``TF_USE_LEGACY_KERAS=1`` was not set.

    Example:
        >>> agent = SADqnAgent(tf_env.time_step_spec(), tf_env.action_spec(), q_net,
        ...                    tf.keras.optimizers.Adam(1e-3), sa_eps=0.05,
        ...                    train_step_counter=tf.Variable(0, dtype=tf.int64))

    References:
        Zhang, Chen, Xiao, Li, Liu, Boning & Hsieh (2020), "Robust Deep Reinforcement Learning
        against Adversarial Perturbations on State Observations", NeurIPS.
    """

    def __init__(self, time_step_spec, action_spec, q_network, optimizer, *, sa_eps: float,
                 sa_weight: float = 0.1, sa_steps: int = 5, sa_hinge: float = 0.0,
                 seed: int | None = None, **kwargs):
        self.sa_eps = check_number("sa_eps", sa_eps, low=0.0, low_inclusive=False)
        self.sa_weight = check_number("sa_weight", sa_weight, low=0.0)
        self.sa_steps = check_number("sa_steps", sa_steps, low=1, integer=True)
        self.sa_hinge = check_number("sa_hinge", sa_hinge, low=0.0)
        self._sa_attack = PGD(self.sa_eps, steps=self.sa_steps, loss="margin",
                              step_size=2.5 * self.sa_eps / self.sa_steps, seed=seed)
        super().__init__(time_step_spec, action_spec, q_network, optimizer, **kwargs)

    def sa_regularizer(self, observations, training: bool = False):
        """``mean(max(margin(Q(s_adv)), -sa_hinge))`` for a batch of observations."""
        observations = tf.cast(observations, tf.float32)

        def scores(obs, training=False):
            return self._q_network(obs, training=training)[0]

        greedy = tf.stop_gradient(tf.argmax(scores(observations), axis=-1, output_type=tf.int32))
        adversarial = tf.stop_gradient(self._sa_attack.perturb(scores, observations, greedy))
        q = scores(adversarial, training=training)
        mask = tf.cast(tf.one_hot(greedy, tf.shape(q)[-1]), tf.bool)
        q_star = tf.reduce_sum(tf.where(mask, q, 0.0), axis=-1)
        q_other = tf.reduce_max(tf.where(mask, tf.float32.min, q), axis=-1)
        return tf.reduce_mean(tf.maximum(q_other - q_star, -self.sa_hinge))

    def _loss(self, experience, td_errors_loss_fn=None, gamma=1.0, reward_scale_factor=1.0,
              weights=None, training=False):
        info = super()._loss(experience, td_errors_loss_fn=td_errors_loss_fn, gamma=gamma,
                             reward_scale_factor=reward_scale_factor, weights=weights,
                             training=training)
        if self.sa_weight == 0:
            return info
        time_steps = self._as_transition(experience)[0]
        regularizer = self.sa_regularizer(time_steps.observation, training=training)
        tf.compat.v2.summary.scalar("Losses/sa_regularizer", regularizer,
                                    step=self.train_step_counter)
        return tf_agent.LossInfo(info.loss + self.sa_weight * regularizer, info.extra)


def adversarial_collection_env(env: gym.Env, network, attack, probability: float = 0.5,
                               seed: int | None = None):
    """A TF-Agents ``PyEnvironment`` for collecting experience under observations perturbed
    against the current network (adversarial training of the policy).

    With probability ``probability`` per step the agent sees ``attack(network, obs)`` instead
    of ``obs``; the network is the live one, so the adversary follows training. The stored
    transitions hold the observations the agent saw.

    Args:
        env: a gymnasium environment (Box observations, Discrete actions).
        network: the agent's TF-Agents network (``QNetwork`` or categorical actor network).
        attack: an untargeted keras_secure attack, e.g. ``PGD(0.05, steps=5)``.
        probability: per-step probability of attacking, in [0, 1]. Defaults to 0.5 (mixed).
        seed: seed of the first reset (and of the attack schedule). Defaults to None.

    Returns:
        A ``GymnasiumEnvironment`` (TF-Agents ``PyEnvironment``).

    Raises:
        ValueError / TypeError: as :class:`~keras_secure.rl.AdversarialObservation`.

    Example:
        >>> py_env = adversarial_collection_env(gym.make("CartPole-v1"), agent._q_network,
        ...                                     ks.attacks.PGD(0.05, steps=5), 0.5, seed=0)
    """
    return to_tf_agents(AdversarialObservation(env, network_scores(network), attack,
                                               probability=probability), seed=seed)


def noisy_collection_env(env: gym.Env, eps: float, kind: str = "linf",
                         probability: float = 1.0, seed: int | None = None):
    """A TF-Agents ``PyEnvironment`` for collecting experience under random observation noise
    (noise injection, the baseline robust-training recipe).

    Args:
        env: a gymnasium environment with Box observations.
        eps, kind, probability: as :class:`~keras_secure.rl.ObservationNoise`.
        seed: seed of the first reset and of the noise. Defaults to None.

    Returns:
        A ``GymnasiumEnvironment`` (TF-Agents ``PyEnvironment``).

    Raises:
        ValueError / TypeError: as :class:`~keras_secure.rl.ObservationNoise`.

    Example:
        >>> py_env = noisy_collection_env(gym.make("CartPole-v1"), eps=0.05, seed=0)
    """
    return to_tf_agents(ObservationNoise(env, eps, kind=kind, probability=probability),
                        seed=seed)
