"""The training-step hook (docs/architecture.md, "The training-step hook") and training losses."""

from keras_secure.training.hook import Stage, StageCallback, TrainingHook, attach, hook_of
from keras_secure.training.losses import kl_adversary, kl_divergence, log_probabilities

__all__ = ["Stage", "StageCallback", "TrainingHook", "attach", "hook_of", "kl_adversary",
           "kl_divergence", "log_probabilities"]
