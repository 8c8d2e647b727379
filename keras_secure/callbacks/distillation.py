"""Knowledge distillation as a ``fit`` callback, and Papernot et al.'s defensive distillation."""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_secure.classifier import as_classifier
from keras_secure.training.hook import Stage, StageCallback
from keras_secure.validation import check_number


class _DistillationStage(Stage):
    adds_loss = True
    needs_labels = False
    log_names = ("distillation_loss",)

    def __init__(self, teacher, temperature, alpha):
        super().__init__()
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha
        # The soft-target loss KL(softmax(t/T) || softmax(s/T)) * T^2 (Hinton et al.), with
        # Keras' KLDivergence weighted per example like the compiled loss (mean of w * KL over
        # the batch). keras.distillation.LogitsDistillation cannot take sample weights: it
        # ignored class/sample weights and the clean/adversarial weights of
        # AdversarialTraining(mode="mixed"). Per example (reduction=None), averaged here: a
        # Keras Loss reduced by itself under tf.distribute is already divided by the number of
        # replicas, and the hook divides stage terms by it once more.
        self.kl = keras.losses.KLDivergence(reduction=None)
        self._model = None

    def check_model(self, model):
        # Teacher and student are read through the classifier contract: logits, softmax, one
        # sigmoid unit or one logit (two classes) all give class distributions to compare.
        counts = []
        for clf in (as_classifier(model), as_classifier(self.teacher)):
            try:
                counts.append(clf.num_classes)
            except RuntimeError:  # a subclassed model: known after its first batch
                counts.append(None)
        if None not in counts and counts[0] != counts[1]:
            raise ValueError(
                f"`teacher` must predict as many classes as the trained model: the teacher has "
                f"{counts[1]} classes, the model {counts[0]}. Received: "
                f"teacher={getattr(self.teacher, 'name', self.teacher)}")
        self._model = model

    def loss(self, model, x, y, y_pred, sample_weight, base_loss):
        t = self.temperature
        teacher_logits = tf.stop_gradient(as_classifier(self.teacher).logits(x))
        student_logp = as_classifier(self._model).log_probabilities(y_pred, temperature=t)
        per_example = self.kl(tf.nn.softmax(teacher_logits / t), tf.exp(student_logp))
        if sample_weight is not None:
            per_example = per_example * tf.cast(tf.reshape(sample_weight, [-1]),
                                                per_example.dtype)
        # the mean of w * KL over the batch (Keras's "sum_over_batch_size"), times T^2
        soft = tf.math.divide_no_nan(
            tf.reduce_sum(per_example),
            tf.cast(tf.shape(per_example)[0], per_example.dtype)) * (t * t)
        self.record("distillation_loss", soft)
        if y is None:  # no labels: the soft targets are the whole loss
            return soft
        return self.alpha * (soft - base_loss)


class Distillation(StageCallback):
    """Knowledge distillation from ``teacher`` while ``fit`` trains the model (the student).

    The training loss becomes ``(1 - alpha) * L_hard + alpha * T^2 * KL(softmax(z_t / T) ||
    softmax(z_s / T))``, where ``L_hard`` is the model's compiled loss on the labels, ``z_t``
    the teacher's logits and ``z_s`` the student's (Hinton, Vinyals & Dean 2015). The soft term
    is Keras' ``KLDivergence``, weighted per example like the compiled loss (sample and class
    weights, and the clean/adversarial weights of ``AdversarialTraining(mode="mixed")``). The
    teacher is evaluated in inference mode on the batch the student trains on - after any batch
    stage, so combined with :class:`AdversarialTraining` the student matches the teacher on
    adversarial inputs (robust distillation, Goldblum et al. 2020). Logs ``distillation_loss``
    (the soft term). Data without labels train on the soft targets alone.

    Args:
        teacher: a trained Keras model with logits output (a final softmax is undone).
        temperature: softmax temperature ``T`` > 0. Defaults to 4.0.
        alpha: weight of the soft targets in [0, 1]. Defaults to 0.9.

    Raises:
        TypeError: if ``teacher`` is not a Keras model.
        ValueError: for ``temperature <= 0``, ``alpha`` outside [0, 1], or (at ``fit``) a
            teacher with a different number of classes than the model.

    Example:
        >>> student.fit(x, y, epochs=5, callbacks=[Distillation(teacher, temperature=4.0)])

    References:
        Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network";
        Goldblum, Fowl, Feizi & Goldstein (2020), "Adversarially Robust Distillation", AAAI.
    """

    def __init__(self, teacher: keras.Model, temperature: float = 4.0, alpha: float = 0.9):
        if not isinstance(teacher, keras.Model):
            raise TypeError(f"`teacher` must be a Keras model. Received: teacher={teacher!r}")
        temperature = check_number("temperature", temperature, low=0.0, low_inclusive=False)
        alpha = check_number("alpha", alpha, low=0.0, high=1.0)
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha
        super().__init__(_DistillationStage(teacher, temperature, alpha))


def defensive_distillation(
    model_fn: Callable[[], keras.Model],
    x,
    y,
    temperature: float = 20.0,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int | None = 0,
    verbose: int = 0,
) -> tuple[keras.Model, keras.Model]:
    """Papernot et al.'s defensive distillation: teacher and student trained at temperature T.

    1. The teacher (``model_fn()``) is trained on the labels with ``softmax(z / T)``.
    2. Its soft labels ``softmax(z_teacher(x) / T)`` are computed on the training data.
    3. The student (a fresh ``model_fn()``) is trained on the soft labels, also at ``T``.
    4. The student is deployed at ``T = 1``: its logits are used as they are, compiled with the
       ordinary cross-entropy on logits.

    Its logits grow roughly ``T`` times larger, so the softmax saturates and the float32 gradient
    of the cross-entropy vanishes: a naive gradient attack on the cross-entropy reports high
    robustness. That is gradient masking, not robustness: attacks on the logits' margin (C&W,
    PGD with ``loss="margin"``, APGD-DLR) break it (Carlini & Wagner 2016, 2017), and so do
    keras_secure's cross-entropy attacks, which step along the log-sum-exp margin. Use it to
    demonstrate masking, not as a defence.

    Args:
        model_fn: builds a fresh, uncompiled model with logits output (called twice).
        x: training inputs.
        y: integer labels.
        temperature: ``T`` > 0. Defaults to 20.0 (the paper used 20-100).
        epochs: epochs for each of the two trainings, >= 1. Defaults to 10.
        batch_size: >= 1. Defaults to 64.
        learning_rate: Adam learning rate > 0. Defaults to 1e-3.
        seed: seed of both trainings. Defaults to 0.
        verbose: passed to ``fit``. Defaults to 0.

    Returns:
        ``(teacher, student)``; the student is compiled for deployment at ``T = 1``.

    Raises:
        ValueError / TypeError: for invalid arguments or a ``model_fn`` that does not build a
            Keras model.

    Example:
        >>> teacher, student = defensive_distillation(lambda: ks.models.small_cnn(), x, y)

    References:
        Papernot, McDaniel, Wu, Jha & Swami (2016), "Distillation as a Defense to Adversarial
        Perturbations against Deep Neural Networks", IEEE S&P. Carlini & Wagner (2016),
        "Defensive Distillation is Not Robust to Adversarial Examples".
    """
    temperature = check_number("temperature", temperature, low=0.0, low_inclusive=False)
    check_number("epochs", epochs, low=1, integer=True)
    check_number("batch_size", batch_size, low=1, integer=True)
    check_number("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    x = np.asarray(x, np.float32)
    y = np.asarray(y)

    def scaled(model):
        return keras.Sequential([keras.Input(x.shape[1:]), model,
                                 keras.layers.Rescaling(1.0 / temperature)])

    teacher = model_fn()
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"`model_fn` must return a Keras model. Received: {teacher!r}")
    contract = as_classifier(teacher)
    x, _ = contract.check(x)
    if contract.kind != "logits":
        raise ValueError(
            "`model_fn` must build a model whose outputs are logits over k >= 2 classes: "
            "defensive distillation divides them by the temperature. Received: a model whose "
            f"output is {contract.describe()['output']}")
    y = contract.check_labels(y, x.shape[0])
    hot = scaled(teacher)
    hot.compile(keras.optimizers.Adam(learning_rate),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hot.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose)
    soft_labels = tf.nn.softmax(hot.predict(x, batch_size=512, verbose=0)).numpy()

    student = model_fn()
    hot_student = scaled(student)
    hot_student.compile(keras.optimizers.Adam(learning_rate),
                        keras.losses.CategoricalCrossentropy(from_logits=True))
    hot_student.fit(x, soft_labels, epochs=epochs, batch_size=batch_size, verbose=verbose)
    for model in (teacher, student):
        model.compile(keras.optimizers.Adam(learning_rate),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    return teacher, student
