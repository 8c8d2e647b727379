"""Differential privacy: accounting (dp_accounting), Poisson-sampled batches and the
membership-inference audit (TensorFlow Privacy's attacks)."""

from keras_secure.privacy.accounting import (
    compute_epsilon,
    dp_sgd_event,
    make_accountant,
    max_steps_within,
    noise_multiplier_for,
)
from keras_secure.privacy.audit import MembershipAudit, advantage_bound, audit_membership
from keras_secure.privacy.data import PoissonSampling, poisson_batches, poisson_sampling_of

__all__ = ["MembershipAudit", "PoissonSampling", "advantage_bound", "audit_membership",
           "compute_epsilon", "dp_sgd_event", "make_accountant", "max_steps_within",
           "noise_multiplier_for", "poisson_batches", "poisson_sampling_of"]
