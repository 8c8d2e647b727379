"""On-the-fly adversarial training: PGD (Madry), mixed clean/adversarial, TRADES, fast FGSM."""

from __future__ import annotations

import copy

import keras
import tensorflow as tf

from keras_secure.attacks.base import Attack, objective_and_gradient, project_and_clip
from keras_secure.classifier import as_classifier
from keras_secure.distributed import replica_attack
from keras_secure.training.hook import Stage, StageCallback
from keras_secure.training.losses import kl_adversary, kl_divergence
from keras_secure.validation import check_choice, check_number

MODES = ("madry", "mixed", "trades", "fast")


class _AdversarialStage(Stage):
    transforms_batch = True
    adds_loss = True

    def __init__(self, attack, mode, ratio, beta, warmup_epochs):
        super().__init__()
        self.mode, self.ratio, self.beta, self.warmup_epochs = mode, ratio, beta, warmup_epochs
        self.eps = float(attack.eps)
        self.eps_var = tf.Variable(self.eps if warmup_epochs == 0 else 0.0, trainable=False,
                                   dtype=tf.float32, name="adversarial_eps")
        # The attack runs in-graph with its budget read from a variable (for the warm-up).
        self.attack = copy.copy(attack)
        self.attack.eps = self.eps_var
        self.log_names = ("adv_loss", "trades_kl") if mode == "trades" else ("adv_loss",)
        self._model = None

    def check_model(self, model):
        self._model = model

    @property
    def _clf(self):
        # The classifier contract reads the model's outputs (logits, softmax, one sigmoid unit
        # or one logit) and the batch's labels; looked up when the step is traced, after fit
        # has built the model.
        return as_classifier(self._model)

    def _logits_fn(self, x):
        return self._clf.logits(x)

    def on_epoch_begin(self, epoch):
        if self.warmup_epochs:
            self.eps_var.assign(self.eps * min(1.0, (epoch + 1) / self.warmup_epochs))

    # -- batch --------------------------------------------------------------------------------
    def transform(self, model, x, y, sample_weight):
        x = tf.cast(x, tf.float32)
        labels = self._labels(y)
        if self.mode == "trades":
            self.context()["x_adv"] = self._trades_example(x)
            return x, y, sample_weight
        if self.mode == "fast":
            x_adv = self._fast_example(x, labels)
        else:
            x_adv = tf.stop_gradient(
                replica_attack(self.attack).perturb(self._logits_fn, x, labels))
        if self.mode == "madry":
            return x_adv, y, sample_weight
        # mixed: both halves, weighted (1 - ratio) and ratio; with Keras' mean over the doubled
        # batch, the loss is (1 - ratio) * clean + ratio * adversarial.
        n = tf.shape(x)[0]
        w = tf.ones([n]) if sample_weight is None else tf.cast(
            tf.reshape(sample_weight, [-1]), tf.float32)
        weights = tf.concat([2.0 * (1.0 - self.ratio) * w, 2.0 * self.ratio * w], axis=0)
        self.context()["clean_size"] = n
        return (tf.concat([x, x_adv], 0), tf.concat([y, y], 0), weights)

    def _labels(self, y):
        return self._clf.labels_tensor(y)

    def _fast_example(self, x, labels):
        # Wong, Rice & Kolter (2020): uniform start in the ball, one FGSM step of 1.25 eps.
        a = replica_attack(self.attack)  # under tf.distribute: one random stream per replica
        delta = keras.random.uniform(tf.shape(x), -1.0, 1.0, seed=a._seed_generator) * self.eps_var
        x0 = project_and_clip(x + delta, x, self.eps_var, "linf", a.value_range)
        _, grad, _ = objective_and_gradient(self._logits_fn, x0, labels, "ce", False)
        x_adv = x0 + 1.25 * self.eps_var * tf.sign(grad)
        return tf.stop_gradient(project_and_clip(x_adv, x, self.eps_var, "linf", a.value_range))

    def _trades_example(self, x):
        # Zhang et al. (2019): maximise KL(f(x) || f(x')) from x + 0.001 N(0, 1).
        a = replica_attack(self.attack)
        step = a.step_size if getattr(a, "step_size", None) else 2.5 * self.eps_var / a.steps
        return kl_adversary(self._logits_fn, x, self.eps_var, a.steps, step, a.norm,
                            a.value_range, a._seed_generator)

    # -- loss ---------------------------------------------------------------------------------
    def loss(self, model, x, y, y_pred, sample_weight, base_loss):
        if self.mode == "madry" or self.mode == "fast":
            self.record("adv_loss", base_loss)
            return tf.constant(0.0)
        if self.mode == "mixed":
            n = self.context()["clean_size"]
            labels = self._labels(y[n:])
            logp = self._clf.log_probabilities(y_pred[n:])
            self.record("adv_loss", -tf.gather(logp, labels, batch_dims=1))
            return tf.constant(0.0)
        # trades: CE(f(x), y) (the compiled loss) + beta * KL(f(x) || f(x_adv))
        x_adv = self.context()["x_adv"]
        adv_pred = model(x_adv, training=True)
        clean_logp = self._clf.log_probabilities(y_pred)
        adv_logp = self._clf.log_probabilities(adv_pred)
        kl = kl_divergence(clean_logp, adv_logp)
        self.record("trades_kl", kl)
        self.record("adv_loss", -tf.gather(adv_logp, self._labels(y), batch_dims=1))
        return self.beta * tf.reduce_mean(kl)


class AdversarialTraining(StageCallback):
    """Adversarial training as a ``fit`` callback: adversarial examples are generated on the
    fly, inside the training step's graph, for every batch.

    Modes:

    - ``"madry"``: train on ``attack``'s adversarial examples only (Madry et al. 2018).
    - ``"mixed"``: ``(1 - ratio) * loss(x) + ratio * loss(x_adv)`` (Goodfellow et al. 2015); the
      compiled metrics see both halves.
    - ``"trades"``: ``loss(x) + beta * KL(f(x) || f(x_adv))`` with ``x_adv`` maximising the KL
      by projected gradient ascent using ``attack``'s ``eps``, ``steps``, ``step_size``, ``norm``
      (Zhang et al. 2019); logs ``trades_kl``. Larger ``beta`` trades clean accuracy for
      robustness.
    - ``"fast"``: one FGSM step of ``1.25 * eps`` from a uniformly random start (Wong, Rice &
      Kolter 2020); ``attack`` gives ``eps`` and ``value_range`` (L-inf only). Watch for
      catastrophic overfitting with a :class:`RobustnessMonitor` running PGD: its robust
      accuracy collapsing while FGSM accuracy rises is the symptom.

    Logs the running mean ``adv_loss`` (cross-entropy on the adversarial examples) each epoch,
    and ``trades_kl`` in TRADES mode. ``warmup_epochs`` ramps ``eps`` linearly from
    ``eps / warmup_epochs`` to ``eps`` over the first epochs. The model is attacked in
    inference mode (``training=False``).

    Args:
        attack: a keras_secure attack (e.g. ``PGD(eps, steps, value_range=...)``), whose
            configuration is fixed at construction.
        mode: ``"madry"``, ``"mixed"``, ``"trades"`` or ``"fast"``. Defaults to ``"madry"``.
        ratio: weight of the adversarial loss in ``"mixed"`` mode, in [0, 1]. Defaults to 0.5.
        beta: TRADES weight of the KL term, >= 0. Defaults to 6.0 (the paper's value).
        warmup_epochs: epochs of the linear eps ramp, >= 0 (0: full eps from the start).
            Defaults to 0.

    Raises:
        TypeError: if ``attack`` is not a keras_secure attack.
        ValueError: for an unknown ``mode``, ``ratio`` outside [0, 1], ``beta < 0``, an attack
            without ``eps`` or a targeted one, ``"fast"`` with an L2 attack; at ``fit``: an
            uncompiled model or data without labels.

    Example:
        >>> pgd = ks.attacks.PGD(eps=0.1, steps=7, value_range=(0, 1))
        >>> model.fit(x, y, epochs=10, callbacks=[ks.callbacks.AdversarialTraining(pgd)])

    References:
        Madry et al. (2018), "Towards Deep Learning Models Resistant to Adversarial Attacks";
        Goodfellow, Shlens & Szegedy (2015); Zhang et al. (2019), "Theoretically Principled
        Trade-off between Robustness and Accuracy" (TRADES); Wong, Rice & Kolter (2020), "Fast
        is better than free: Revisiting adversarial training".
    """

    def __init__(self, attack: Attack, mode: str = "madry", ratio: float = 0.5,
                 beta: float = 6.0, warmup_epochs: int = 0):
        if not isinstance(attack, Attack):
            raise TypeError("`attack` must be a keras_secure.attacks.Attack (e.g. "
                            f"ks.attacks.PGD(eps=...)). Received: attack={attack!r}")
        check_choice("mode", mode, MODES)
        ratio = check_number("ratio", ratio, low=0.0, high=1.0)
        beta = check_number("beta", beta, low=0.0)
        warmup_epochs = check_number("warmup_epochs", warmup_epochs, low=0, integer=True)
        if attack.eps is None:
            raise ValueError("`attack` must have an `eps` budget for adversarial training. "
                             f"Received: attack={attack!r}")
        if attack.targeted:
            raise ValueError(f"`attack` must be untargeted. Received: attack={attack!r}")
        if mode == "fast" and attack.norm != "linf":
            raise ValueError(f"mode='fast' is L-inf only. Received: attack={attack!r}")
        if mode == "trades" and not hasattr(attack, "steps"):
            raise ValueError("mode='trades' needs an iterative attack (with `steps`), e.g. PGD. "
                             f"Received: attack={attack!r}")
        self.attack, self.mode, self.ratio, self.beta = attack, mode, ratio, beta
        self.warmup_epochs = warmup_epochs
        super().__init__(_AdversarialStage(attack, mode, ratio, beta, warmup_epochs))
