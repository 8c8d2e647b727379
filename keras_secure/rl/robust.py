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
- **State-adversarial PPO** (:class:`SAPPOAgent`, Zhang et al. 2020): a ``PPOClipAgent`` whose
  loss gets ``weight * mean(max_{s' in B(s)} KL(pi(s) || pi(s')))``, the maximum found by PGD
  on the KL (as in TRADES).
- **Noise injection** (:func:`noisy_collection_env`): collection under random observation
  noise (``ObservationNoise``).

PPO on discrete actions needs a categorical projection network; TF-Agents' own fails under
NumPy 2 (``int()`` of a 1-element array), so :class:`CategoricalProjectionNetwork` /
:func:`categorical_projection_net` provide one for ``ActorDistributionNetwork``.

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

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
from tf_agents.agents import tf_agent  # noqa: E402
from tf_agents.agents.dqn import dqn_agent  # noqa: E402
from tf_agents.agents.ppo import ppo_agent, ppo_clip_agent  # noqa: E402
from tf_agents.networks import network  # noqa: E402
from tf_agents.networks import utils as network_utils  # noqa: E402
from tf_agents.specs import distribution_spec, tensor_spec  # noqa: E402

from keras_secure.attacks.base import margin  # noqa: E402
from keras_secure.attacks.pgd import PGD  # noqa: E402
from keras_secure.classifier import labels_from_logits  # noqa: E402
from keras_secure.training.losses import kl_adversary, kl_divergence  # noqa: E402
from keras_secure.validation import check_choice, check_number  # noqa: E402
from keras_secure.rl.tf_agents import network_scores, to_tf_agents  # noqa: E402
from keras_secure.rl.wrappers import AdversarialObservation, ObservationNoise  # noqa: E402


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

        greedy = tf.stop_gradient(labels_from_logits(scores(observations)))
        adversarial = tf.stop_gradient(self._sa_attack.perturb(scores, observations, greedy))
        # attacks.base.margin is Q(s_adv, a*) - max_{a != a*} Q(s_adv, a): the SA margin negated
        q = scores(adversarial, training=training)
        return tf.reduce_mean(tf.maximum(-margin(q, greedy), -self.sa_hinge))

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


def agent_scores(agent) -> Callable[[tf.Tensor], tf.Tensor]:
    """``observations -> the action scores a TF-Agents agent acts on``, in raw observation
    units: a ``DqnAgent``'s Q-values, or a ``PPOAgent``'s actor logits after the agent's own
    observation normalizer (``normalize_observations=True``, PPO's default). Attacking the bare
    actor network of such an agent would attack a function the agent does not use.

    Args:
        agent: a ``DqnAgent`` (or subclass) or ``PPOAgent`` (or subclass) with a categorical,
            feed-forward actor.

    Returns:
        A callable for keras_secure's attacks, ``AdversarialObservation`` and the metrics.

    Raises:
        TypeError: for other agents.

    Example:
        >>> env = AdversarialObservation(gym_env, agent_scores(ppo), ks.attacks.PGD(0.1))
    """
    if isinstance(agent, dqn_agent.DqnAgent):
        return network_scores(agent._q_network)
    if isinstance(agent, ppo_agent.PPOAgent):
        return network_scores(agent.actor_net, agent._observation_normalizer)
    raise TypeError("`agent` must be a TF-Agents DqnAgent or PPOAgent. "
                    f"Received: {type(agent).__name__}")


def _scores_of(network_or_agent):
    if isinstance(network_or_agent, tf_agent.TFAgent):
        return agent_scores(network_or_agent)
    return network_scores(network_or_agent)


def adversarial_collection_env(env: gym.Env, network, attack, probability: float = 0.5,
                               seed: int | None = None):
    """A TF-Agents ``PyEnvironment`` for collecting experience under observations perturbed
    against the current network (adversarial training of the policy).

    With probability ``probability`` per step the agent sees ``attack(network, obs)`` instead
    of ``obs``; the network is the live one, so the adversary follows training. The stored
    transitions hold the observations the agent saw.

    Args:
        env: a gymnasium environment (Box observations, Discrete actions).
        network: the agent (``DqnAgent`` / ``PPOAgent``: see :func:`agent_scores`, which also
            applies a PPO agent's observation normalizer) or its TF-Agents network
            (``QNetwork`` or categorical actor network).
        attack: an untargeted keras_secure attack, e.g. ``PGD(0.05, steps=5)``.
        probability: per-step probability of attacking, in [0, 1]. Defaults to 0.5 (mixed).
        seed: seed of the first reset (and of the attack schedule). Defaults to None.

    Returns:
        A ``GymnasiumEnvironment`` (TF-Agents ``PyEnvironment``).

    Raises:
        ValueError / TypeError: as :class:`~keras_secure.rl.AdversarialObservation`.

    Example:
        >>> py_env = adversarial_collection_env(gym.make("CartPole-v1"), agent,
        ...                                     ks.attacks.PGD(0.05, steps=5), 0.5, seed=0)
    """
    return to_tf_agents(AdversarialObservation(env, _scores_of(network), attack,
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


class CategoricalProjectionNetwork(network.DistributionNetwork):
    """Projects hidden features to a ``tfp.distributions.Categorical`` over discrete actions:
    the discrete head of a TF-Agents ``ActorDistributionNetwork`` (PPO, REINFORCE).

    A drop-in for TF-Agents' network of the same name, which fails to construct under NumPy 2
    (it calls ``int()`` on a 1-element array). One linear layer gives the logits, shaped
    ``action_spec.shape + (n_actions,)``; invalid actions under a ``mask`` get the most
    negative float as logit (not ``-inf``, which makes tfp return NaNs).

    Args:
        sample_spec: a bounded, discrete (integer) ``BoundedTensorSpec`` of actions, with the
            same number of actions in every dimension and minimum 0.
        logits_init_output_factor: scale of the variance-scaling initializer of the logits'
            kernel, > 0. Small values start the policy close to uniform. Defaults to 0.1.
        name: the network's name.

    Raises:
        TypeError: if ``sample_spec`` is not a bounded integer spec.
        ValueError: if its dimensions have different numbers of actions, fewer than 1, or a
            non-zero minimum (a categorical samples 0..n-1), or ``logits_init_output_factor``
            is not positive.

    Example:
        >>> actor = actor_distribution_network.ActorDistributionNetwork(
        ...     obs_spec, action_spec, fc_layer_params=(64, 64),
        ...     discrete_projection_net=categorical_projection_net)
    """

    def __init__(self, sample_spec, logits_init_output_factor: float = 0.1,
                 name: str = "CategoricalProjectionNetwork"):
        if not (tensor_spec.is_bounded(sample_spec) and tensor_spec.is_discrete(sample_spec)):
            raise TypeError("`sample_spec` must be a bounded integer (discrete) action spec. "
                            f"Received: {sample_spec!r}")
        minimum = np.asarray(sample_spec.minimum)
        counts = np.unique(np.asarray(sample_spec.maximum) - minimum + 1)
        if counts.size != 1 or counts[0] < 1:
            raise ValueError("`sample_spec` must have the same number (>= 1) of actions in every "
                             f"dimension. Received: {counts.tolist()} actions")
        if np.any(minimum != 0):
            raise ValueError("`sample_spec` must have minimum 0 (a categorical samples "
                             f"0..n-1). Received: minimum={minimum.tolist()}")
        factor = check_number("logits_init_output_factor", logits_init_output_factor, low=0.0,
                              low_inclusive=False)
        n_actions = int(counts[0])
        self._logits_shape = tf.TensorShape(sample_spec.shape).concatenate([n_actions])
        logits_spec = tensor_spec.TensorSpec(self._logits_shape, tf.float32, name=name + "_logits")
        output_spec = distribution_spec.DistributionSpec(
            tfp.distributions.Categorical, {"logits": logits_spec}, sample_spec=sample_spec,
            dtype=sample_spec.dtype)
        super().__init__(input_tensor_spec=None, state_spec=(), output_spec=output_spec,
                         name=name)
        self._logits_layer = tf.keras.layers.Dense(
            self._logits_shape.num_elements(),
            kernel_initializer=tf.keras.initializers.VarianceScaling(scale=factor),
            bias_initializer="zeros", name="logits")

    def call(self, inputs, outer_rank, training=False, mask=None):
        # The outer (batch, time) dimensions are flattened for the Dense layer and restored.
        squash = network_utils.BatchSquash(outer_rank)
        features = tf.cast(squash.flatten(inputs), tf.float32)
        logits = self._logits_layer(features, training=training)
        logits = squash.unflatten(tf.reshape(logits, [-1] + self._logits_shape.as_list()))
        if mask is not None:
            mask = tf.cast(mask, tf.bool)
            if mask.shape.rank < logits.shape.rank:
                mask = tf.expand_dims(mask, -2)
            logits = tf.where(mask, logits, tf.constant(logits.dtype.min, logits.dtype))
        return self.output_spec.build_distribution(logits=logits), ()


def categorical_projection_net(action_spec, logits_init_output_factor: float = 0.1):
    """The ``discrete_projection_net`` argument of TF-Agents' ``ActorDistributionNetwork``:
    builds a :class:`CategoricalProjectionNetwork` for ``action_spec``.

    Args:
        action_spec: the discrete action spec.
        logits_init_output_factor: as :class:`CategoricalProjectionNetwork`.

    Returns:
        A :class:`CategoricalProjectionNetwork`.

    Raises:
        TypeError / ValueError: as :class:`CategoricalProjectionNetwork`.

    Example:
        >>> actor = actor_distribution_network.ActorDistributionNetwork(
        ...     obs_spec, action_spec, discrete_projection_net=categorical_projection_net)
    """
    return CategoricalProjectionNetwork(action_spec, logits_init_output_factor)


class SAPPOAgent(ppo_clip_agent.PPOClipAgent):
    """A TF-Agents ``PPOClipAgent`` with the state-adversarial regularizer of SA-PPO (Zhang et
    al. 2020, PGD solver).

    For each state ``s`` of a training minibatch, ``s_adv`` in the ``sa_norm`` ball of radius
    ``sa_eps`` (raw observation units; the agent's observation normalizer, if any, is applied
    after the perturbation, as in the policy) maximizes ``KL(pi(.|s) || pi(.|s_adv))``
    (``sa_steps`` steps of projected ascent from a tiny random start,
    :func:`keras_secure.training.kl_adversary`); the loss adds
    ``sa_weight * mean(weights * KL)``, so the policy's action distribution stays stable inside
    the ball. Gradients flow through both ``pi(s)`` and ``pi(s_adv)``, as in the paper. The
    regularizer is logged as ``Losses/sa_regularizer``. Categorical (discrete-action) actors
    only; all other arguments are ``PPOClipAgent``'s.

    Args:
        time_step_spec, action_spec: as for ``PPOClipAgent``.
        sa_eps: radius of the ball in observation units, > 0.
        sa_weight: weight of the regularizer (``kappa`` in the paper), >= 0; 0 gives plain
            PPO. Defaults to 0.1.
        sa_steps: ascent steps, >= 1. Defaults to 5.
        sa_norm: ``"linf"`` or ``"l2"``. Defaults to ``"linf"``.
        seed: seed of the random start. Defaults to None.
        **kwargs: any other ``PPOClipAgent`` argument (``optimizer``, ``actor_net``,
            ``value_net``, ...).

    Raises:
        ValueError / TypeError: for SA arguments out of range (before any training), or an
            actor network that is not a feed-forward categorical one.
        ImportError: at import, if ``TF_USE_LEGACY_KERAS=1`` was not set.

    Example:
        >>> agent = SAPPOAgent(tf_env.time_step_spec(), tf_env.action_spec(), sa_eps=0.05,
        ...                    optimizer=tf.keras.optimizers.Adam(1e-3), actor_net=actor,
        ...                    value_net=value_net, num_epochs=10)

    References:
        Zhang, Chen, Xiao, Li, Liu, Boning & Hsieh (2020), "Robust Deep Reinforcement Learning
        against Adversarial Perturbations on State Observations", NeurIPS.
    """

    def __init__(self, time_step_spec, action_spec, *, sa_eps: float, sa_weight: float = 0.1,
                 sa_steps: int = 5, sa_norm: str = "linf", seed: int | None = None, **kwargs):
        self.sa_eps = check_number("sa_eps", sa_eps, low=0.0, low_inclusive=False)
        self.sa_weight = check_number("sa_weight", sa_weight, low=0.0)
        self.sa_steps = check_number("sa_steps", sa_steps, low=1, integer=True)
        self.sa_norm = check_choice("sa_norm", sa_norm, ("linf", "l2"))
        self._sa_seed = keras.random.SeedGenerator(seed)
        super().__init__(time_step_spec, action_spec, **kwargs)
        if not isinstance(self._actor_net, network.DistributionNetwork) or \
                self._actor_net.output_spec.builder is not tfp.distributions.Categorical:
            raise TypeError("SAPPOAgent needs an actor network with a categorical output "
                            "(e.g. ActorDistributionNetwork with discrete_projection_net="
                            f"categorical_projection_net). Received: {self._actor_net!r}")
        if self._actor_net.state_spec:
            raise TypeError("SAPPOAgent supports feed-forward actor networks only; the actor "
                            f"has a recurrent state. Received: {self._actor_net!r}")

    def sa_regularizer(self, observations, weights=None, training: bool = False):
        """``mean(weights * KL(pi(s) || pi(s_adv)))`` for a batch of observations."""
        observations = tf.cast(observations, tf.float32)

        def logits(obs):  # what the policy computes: the agent's normalizer, then the actor
            if self._observation_normalizer is not None:
                obs = self._observation_normalizer.normalize(obs)
            return self._actor_net(obs, step_type=None, network_state=(),
                                   training=training)[0].logits_parameter()

        adversarial = kl_adversary(logits, observations, self.sa_eps, self.sa_steps,
                                   2.5 * self.sa_eps / self.sa_steps, self.sa_norm,
                                   seed_generator=self._sa_seed)
        kl = kl_divergence(tf.nn.log_softmax(logits(observations)),
                           tf.nn.log_softmax(logits(adversarial)))
        if weights is not None:
            kl = kl * tf.cast(weights, kl.dtype)
        return tf.reduce_mean(kl)

    def get_loss(self, time_steps, actions, act_log_probs, returns, normalized_advantages,
                 action_distribution_parameters, weights, train_step, debug_summaries,
                 old_value_predictions=None, training=False):
        info = super().get_loss(time_steps, actions, act_log_probs, returns,
                                normalized_advantages, action_distribution_parameters, weights,
                                train_step, debug_summaries,
                                old_value_predictions=old_value_predictions, training=training)
        if self.sa_weight == 0:
            return info
        regularizer = self.sa_regularizer(time_steps.observation, weights, training=training)
        tf.compat.v2.summary.scalar("Losses/sa_regularizer", regularizer,
                                    step=self.train_step_counter)
        return tf_agent.LossInfo(info.loss + self.sa_weight * regularizer, info.extra)
