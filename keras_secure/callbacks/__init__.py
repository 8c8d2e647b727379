"""Callbacks that change or watch ``model.fit``: adversarial training, distillation, DP-SGD,
policy-gradient training, robustness monitoring."""

from keras_secure.callbacks.adversarial import AdversarialTraining
from keras_secure.callbacks.distillation import Distillation, defensive_distillation
from keras_secure.callbacks.monitor import RobustnessMonitor
from keras_secure.callbacks.policy_gradient import PolicyGradientTraining
from keras_secure.callbacks.privacy import DPSGD

__all__ = ["AdversarialTraining", "DPSGD", "Distillation", "PolicyGradientTraining",
           "RobustnessMonitor", "defensive_distillation"]
