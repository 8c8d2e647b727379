"""Reinforcement learning: attack and defence wrappers for gymnasium environments, RL metrics,
and (in ``keras_secure.rl.tf_agents``, imported explicitly) the TF-Agents adapter."""

from keras_secure.rl.metrics import (
    EpisodeStats,
    evaluate_policy,
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

__all__ = ["ActionPerturbation", "AdversarialObservation", "DynamicRewardShaping", "EpisodeStats",
           "ObservationDenoising", "ObservationNoise", "RewardGuard", "RewardShaping",
           "RewardTampering",
           "evaluate_policy", "policy_deviation", "reward_restoration", "reward_retention"]
