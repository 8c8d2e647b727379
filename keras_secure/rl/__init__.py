"""Reinforcement learning: attack and defence wrappers for gymnasium environments, the learned
optimal adversary (``keras_secure.rl.adversary``), RL metrics and confidence intervals, and
(imported explicitly) the TF-Agents adapter (``keras_secure.rl.tf_agents``), robust agents
(``keras_secure.rl.robust``) and PPO / ATLA training on vector envs (``keras_secure.rl.ppo``)."""

from keras_secure.rl.adversary import (
    AdversaryEnv,
    LearnedAdversaryObservation,
    ObservationPerturber,
)
from keras_secure.rl.metrics import (
    EpisodeStats,
    MeanCI,
    evaluate_batched,
    evaluate_policy,
    mean_confidence_interval,
    policy_deviation,
    reward_restoration,
    reward_retention,
)
from keras_secure.rl.wrappers import (
    ActionPerturbation,
    AdversarialObservation,
    DynamicRewardShaping,
    ObservationDenoising,
    ObservationNoise,
    RewardGuard,
    RewardShaping,
    RewardTampering,
)

__all__ = ["ActionPerturbation", "AdversarialObservation", "AdversaryEnv", "DynamicRewardShaping",
           "EpisodeStats", "LearnedAdversaryObservation", "MeanCI", "ObservationDenoising",
           "ObservationNoise", "ObservationPerturber", "RewardGuard", "RewardShaping",
           "RewardTampering", "evaluate_batched", "evaluate_policy", "mean_confidence_interval",
           "policy_deviation", "reward_restoration", "reward_retention"]
