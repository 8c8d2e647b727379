"""Differential privacy: accounting (dp_accounting) and Poisson-sampled batches."""

from keras_secure.privacy.accounting import (
    compute_epsilon,
    dp_sgd_event,
    make_accountant,
    max_steps_within,
    noise_multiplier_for,
)
from keras_secure.privacy.data import poisson_batches

__all__ = ["compute_epsilon", "dp_sgd_event", "make_accountant", "max_steps_within",
           "noise_multiplier_for", "poisson_batches"]
