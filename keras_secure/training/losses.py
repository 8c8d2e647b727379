"""Loss terms used by training stages: TRADES' KL and the distillation KL, and the KL
adversary shared by TRADES and SA-PPO."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_secure.attacks.base import project_and_clip, steepest_direction


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


def kl_adversary(logits_fn, x, eps, steps: int, step_size, norm: str = "linf",
                 value_range=None, seed_generator=None):
    """The point of the ``eps`` ball around ``x`` that maximizes ``KL(f(x) || f(x'))``, by
    projected steepest ascent from ``x + 0.001 * N(0, 1)``.

    This is TRADES' inner maximization (Zhang et al. 2019) and the PGD solver of SA-PPO's
    state-adversarial regularizer (Zhang et al. 2020). It needs no labels: the clean output
    distribution is the reference. Runs in a TensorFlow graph (``tf.while_loop``).

    Args:
        logits_fn: maps a batch of inputs to logits, ``(batch, classes)``.
        x: the clean batch (float32).
        eps: radius of the ball (a float or a scalar tensor, e.g. a warm-up variable).
        steps: number of ascent steps (Python int >= 1).
        step_size: length of each step, in the ball's norm.
        norm: ``"linf"`` or ``"l2"``. Defaults to ``"linf"``.
        value_range: ``(low, high)`` to clip inputs to, or None. Defaults to None.
        seed_generator: a ``keras.random.SeedGenerator`` for the random start, or None.

    Returns:
        The perturbed batch, with gradients stopped.

    Example:
        >>> x_adv = kl_adversary(lambda z: model(z), x, eps=0.1, steps=5, step_size=0.05)

    References:
        Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan (2019), "Theoretically Principled Trade-off
        between Robustness and Accuracy", ICML. Zhang, Chen, Xiao, Li, Liu, Boning & Hsieh
        (2020), "Robust Deep Reinforcement Learning against Adversarial Perturbations on State
        Observations", NeurIPS.
    """
    x = tf.cast(x, tf.float32)
    clean = tf.stop_gradient(log_probabilities(logits_fn(x)))
    start = x + 0.001 * keras.random.normal(tf.shape(x), seed=seed_generator)

    def body(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            kl = kl_divergence(clean, log_probabilities(logits_fn(x_adv)))
        grad = tape.gradient(kl, x_adv)
        x_adv = project_and_clip(x_adv + step_size * steepest_direction(grad, norm), x, eps,
                                 norm, value_range)
        return i + 1, x_adv

    _, x_adv = tf.while_loop(lambda i, _: i < steps, body, [tf.constant(0), start])
    return tf.stop_gradient(x_adv)
