"""Callbacks that change or watch ``model.fit``: adversarial training, robustness monitoring."""

from keras_secure.callbacks.adversarial import AdversarialTraining
from keras_secure.callbacks.monitor import RobustnessMonitor

__all__ = ["AdversarialTraining", "RobustnessMonitor"]
