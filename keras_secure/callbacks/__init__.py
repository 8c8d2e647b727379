"""Callbacks that change or watch ``model.fit``: adversarial training, distillation,
robustness monitoring."""

from keras_secure.callbacks.adversarial import AdversarialTraining
from keras_secure.callbacks.distillation import Distillation, defensive_distillation
from keras_secure.callbacks.monitor import RobustnessMonitor

__all__ = ["AdversarialTraining", "Distillation", "RobustnessMonitor", "defensive_distillation"]
