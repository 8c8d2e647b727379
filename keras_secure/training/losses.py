"""Loss terms used by training stages: TRADES' KL and the distillation KL."""

from __future__ import annotations

import tensorflow as tf


def log_probabilities(outputs, from_logits: bool = True, temperature: float = 1.0):
    """Log class probabilities of model ``outputs`` (logits, or probabilities if
    ``from_logits=False``), at ``temperature`` (logits are divided by it)."""
    outputs = tf.cast(outputs, tf.float32)
    if from_logits:
        return tf.nn.log_softmax(outputs / temperature, axis=-1)
    logp = tf.math.log(tf.clip_by_value(outputs, 1e-12, 1.0))
    if temperature == 1.0:
        return logp
    return tf.nn.log_softmax(logp / temperature, axis=-1)


def kl_divergence(log_p, log_q):
    """Per-example ``KL(p || q) = sum_c p_c (log p_c - log q_c)`` from log-probabilities."""
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)
