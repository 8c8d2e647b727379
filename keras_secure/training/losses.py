"""Loss terms used by training stages: TRADES' KL and the distillation KL."""

from __future__ import annotations

import tensorflow as tf


def log_probabilities(outputs, from_logits: bool = True, temperature: float = 1.0):
    """Log class probabilities of model ``outputs`` at ``temperature``.

    Args:
        outputs: logits, or probabilities if ``from_logits=False``, shape ``(batch, classes)``.
        from_logits: whether ``outputs`` are logits. Defaults to True.
        temperature: logits are divided by it (> 0). Defaults to 1.0.

    Returns:
        float32 log-probabilities, same shape.

    Example:
        >>> log_probabilities(tf.constant([[2.0, 0.0]]), temperature=2.0)
    """
    outputs = tf.cast(outputs, tf.float32)
    if from_logits:
        return tf.nn.log_softmax(outputs / temperature, axis=-1)
    logp = tf.math.log(tf.clip_by_value(outputs, 1e-12, 1.0))
    if temperature == 1.0:
        return logp
    return tf.nn.log_softmax(logp / temperature, axis=-1)


def kl_divergence(log_p, log_q):
    """Per-example ``KL(p || q) = sum_c p_c (log p_c - log q_c)`` from log-probabilities
    (the TRADES regulariser, Zhang et al. 2019).

    Args:
        log_p: log-probabilities of ``p``, shape ``(batch, classes)``.
        log_q: log-probabilities of ``q``, same shape.

    Returns:
        KL divergences, shape ``(batch,)``.

    Example:
        >>> kl_divergence(log_probabilities(clean_logits), log_probabilities(adv_logits))
    """
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)
