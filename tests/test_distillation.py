"""Distillation callback and defensive distillation."""

import keras
import numpy as np
import tensorflow as tf
import pytest

import keras_secure as ks
from keras_secure import attacks as A
from keras_secure.callbacks import AdversarialTraining, Distillation, defensive_distillation

from conftest import VALUE_RANGE, accuracy


def linear(weights, classes=3):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(classes)])
    model.layers[-1].set_weights([np.asarray(weights, np.float32), np.zeros(classes, np.float32)])
    return model


@pytest.mark.parametrize("l2", [0.0, 0.05])
@pytest.mark.parametrize("labelled", [True, False])
def test_distillation_loss_matches_hand_computation(l2, labelled):
    """(1 - alpha) * hard + alpha * soft, plus the student's regularization loss in full (not
    scaled by 1 - alpha), with and without labels."""
    teacher = linear([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]])
    student = keras.Sequential([keras.Input((2,)), keras.layers.Dense(
        3, kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)])
    student.layers[-1].set_weights([np.array([[0.2, 0.1, -0.3], [0.4, -0.2, 0.0]], np.float32),
                                    np.zeros(3, np.float32)])
    student.compile(keras.optimizers.SGD(0.0),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.array([[1.0, 0.5], [-0.5, 2.0], [0.3, -1.0]], np.float32)
    y = np.array([0, 1, 2])
    t, alpha = 3.0, 0.7
    history = student.fit(x, y if labelled else None, batch_size=3, epochs=1, verbose=0,
                          callbacks=[Distillation(teacher, temperature=t, alpha=alpha)])
    reg = l2 * (student.get_weights()[0] ** 2).sum()

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    zt, zs = x @ teacher.get_weights()[0], x @ student.get_weights()[0]
    hard = -np.log(softmax(zs)[np.arange(3), y]).mean()
    p, q = softmax(zt / t), softmax(zs / t)
    soft = (p * np.log(p / q)).sum(1).mean() * t ** 2
    assert history.history["distillation_loss"][0] == pytest.approx(soft, rel=1e-5)
    expected = ((1 - alpha) * hard + alpha * soft) if labelled else soft
    assert history.history["loss"][0] == pytest.approx(expected + reg, rel=1e-5)


def test_distillation_trains_a_student(digits, cnn, eval_set):
    x, y, _, _ = digits
    keras.utils.set_random_seed(1)
    student = ks.models.small_cnn(width=16, seed=1)
    student.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = student.fit(x, y, epochs=4, verbose=0,
                          callbacks=[Distillation(cnn, temperature=4.0, alpha=0.9)])
    assert history.history["distillation_loss"][-1] < history.history["distillation_loss"][0]
    assert accuracy(student, *eval_set) > 0.9
    # without labels the soft targets are the whole loss
    unlabeled = ks.models.small_cnn(width=16, seed=1)
    unlabeled.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = unlabeled.fit(x, epochs=4, verbose=0, callbacks=[Distillation(cnn)])
    assert accuracy(unlabeled, *eval_set) > 0.85


def test_adversarial_training_composes_with_distillation(digits, cnn):
    x, y, _, _ = digits
    student = ks.models.small_cnn(seed=2)
    student.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = student.fit(x[:512], y[:512], epochs=2, verbose=0, callbacks=[
        AdversarialTraining(A.PGD(0.1, steps=3, value_range=VALUE_RANGE, seed=0)),
        Distillation(cnn, temperature=2.0, alpha=0.5)])
    assert {"adv_loss", "distillation_loss", "loss"} <= set(history.history)
    assert np.all(np.isfinite(history.history["distillation_loss"]))


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


STUDENT_W = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
STUDENT_B = np.array([0.1, -0.2, 0.0])
TEACHER_W = np.array([[0.3, -0.5, 1.0], [1.5, 0.2, -0.4], [-0.7, 0.9, 0.1], [0.2, -1.2, 0.6]])
TEACHER_B = np.array([0.0, 0.3, -0.1])


def dense(w, b, lr=None):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.layers[-1].set_weights([w.astype(np.float32), b.astype(np.float32)])
    if lr is not None:
        model.compile(keras.optimizers.SGD(lr),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def hand_soft(x, t):
    """T^2 KL(softmax(z_teacher / T) || softmax(z_student / T)) per example."""
    p = softmax((x @ TEACHER_W + TEACHER_B) / t)
    q = softmax((x @ STUDENT_W + STUDENT_B) / t)
    return (p * np.log(p / q)).sum(1) * t ** 2


def hand_ce(x, y):
    return -np.log(softmax(x @ STUDENT_W + STUDENT_B)[np.arange(len(y)), y])


@pytest.mark.parametrize("mode, ratio", [("madry", 0.5), ("mixed", 0.3), ("mixed", 1.0)])
@pytest.mark.parametrize("order", ["adversarial_first", "distillation_first"])
def test_distillation_loss_on_the_adversarial_batch_by_hand(mode, ratio, order):
    # With a zero learning rate the logs of one full batch are the objective at the given
    # weights. The attack (FGSM, in closed form for a linear student) runs on the student; the
    # teacher then sees the batch the student trains on, so the soft term is computed on x_adv
    # (madry), or on both halves weighted (1 - r) and r like the hard term (mixed).
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (12, 4)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    t, alpha, eps = 3.0, 0.6, 0.1
    callbacks = [AdversarialTraining(A.FGSM(eps, value_range=VALUE_RANGE), mode=mode,
                                     ratio=ratio),
                 Distillation(dense(TEACHER_W, TEACHER_B), temperature=t, alpha=alpha)]
    if order == "distillation_first":
        callbacks = callbacks[::-1]
    student = dense(STUDENT_W, STUDENT_B, lr=0.0)
    history = student.fit(x, y, batch_size=12, epochs=1, verbose=0, shuffle=False,
                          callbacks=callbacks)
    grad = (softmax(x @ STUDENT_W + STUDENT_B) - np.eye(3)[y]) @ STUDENT_W.T
    x_adv = np.clip(x + eps * np.sign(grad), 0.0, 1.0)
    if mode == "madry":
        hard, soft = hand_ce(x_adv, y).mean(), hand_soft(x_adv, t).mean()
    else:
        hard = (1 - ratio) * hand_ce(x, y).mean() + ratio * hand_ce(x_adv, y).mean()
        soft = (1 - ratio) * hand_soft(x, t).mean() + ratio * hand_soft(x_adv, t).mean()
    logs = {k: v[0] for k, v in history.history.items()}
    assert logs["distillation_loss"] == pytest.approx(soft, rel=1e-5)
    assert logs["loss"] == pytest.approx((1 - alpha) * hard + alpha * soft, rel=1e-5)
    assert logs["adv_loss"] == pytest.approx(hand_ce(x_adv, y).mean(), rel=1e-5)
    # the soft term on the clean batch is a different number: the check can tell them apart
    assert abs(hand_soft(x, t).mean() - hand_soft(x_adv, t).mean()) > 0.02


def test_distillation_weights_the_soft_term_like_the_compiled_loss():
    # sample weights (and class weights, which Keras turns into sample weights) weight both
    # terms per example: mean of w * CE and mean of w * T^2 KL over the batch
    rng = np.random.default_rng(1)
    x = rng.uniform(0.0, 1.0, (10, 4)).astype(np.float32)
    y = rng.integers(0, 3, 10)
    sw = rng.uniform(0.2, 3.0, 10)
    t, alpha = 2.0, 0.7
    for weights, kwargs in ((sw, {"sample_weight": sw}),
                            (np.where(y == 1, 4.0, 1.0), {"class_weight": {0: 1.0, 1: 4.0,
                                                                           2: 1.0}})):
        student = dense(STUDENT_W, STUDENT_B, lr=0.0)
        history = student.fit(x, y, batch_size=10, epochs=1, verbose=0, shuffle=False,
                              callbacks=[Distillation(dense(TEACHER_W, TEACHER_B),
                                                      temperature=t, alpha=alpha)], **kwargs)
        soft = np.mean(weights * hand_soft(x, t))
        hard = np.mean(weights * hand_ce(x, y))
        assert history.history["distillation_loss"][0] == pytest.approx(soft, rel=1e-5)
        assert history.history["loss"][0] == pytest.approx((1 - alpha) * hard + alpha * soft,
                                                           rel=1e-5)


def _naive_pgd_ce(model, x, y, eps=0.1, steps=20):
    """PGD on the cross-entropy with its plain float32 gradient, as a naive attacker writes
    it (no random start): the gradient that defensive distillation's saturated softmax zeroes."""
    x = tf.constant(x)
    x_adv = x
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x_adv),
                                                                   from_logits=True)
        x_adv = x_adv + 2.5 * eps / steps * tf.sign(tape.gradient(loss, x_adv))
        x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
    return x_adv.numpy()


def test_defensive_distillation_masks_naive_gradients_not_keras_secure_attacks(digits,
                                                                               eval_set):
    x, y, _, _ = digits
    xe, ye = eval_set
    _, student = defensive_distillation(lambda: ks.models.small_cnn(seed=0), x, y,
                                        temperature=50.0, epochs=10)
    assert accuracy(student, xe, ye) > 0.85
    naive = accuracy(student, _naive_pgd_ce(student, xe, ye), ye)
    pgd_ce = accuracy(student, A.PGD(0.1, steps=20, value_range=VALUE_RANGE, seed=0)(
        student, xe, ye), ye)
    pgd_margin = accuracy(student, A.PGD(0.1, steps=20, loss="margin", value_range=VALUE_RANGE,
                                         seed=0)(student, xe, ye), ye)
    cw = accuracy(student, A.CarliniWagnerL2(value_range=VALUE_RANGE, eps=1.0,
                                             learning_rate=0.1, initial_const=0.1, steps=50,
                                             binary_search_steps=5)(student, xe, ye), ye)
    # The masking is real for a naive attacker: the float32 cross-entropy gradient vanishes
    # on the student's saturated softmax. keras_secure's cross-entropy attacks step along the
    # log-sum-exp margin and are not fooled: PGD-CE lands with PGD-margin.
    # measured: naive PGD-CE 77.5%, PGD-CE 39.5%, PGD-margin 39.5%, C&W (L2 <= 1) 34%
    assert naive >= pgd_margin + 0.2 and naive >= cw + 0.2, (naive, pgd_margin, cw)
    assert abs(pgd_ce - pgd_margin) <= 0.05, (pgd_ce, pgd_margin)


def test_distillation_rejects_bad_input(digits, cnn):
    x, y, _, _ = digits
    with pytest.raises(ValueError, match="`temperature`"):
        Distillation(cnn, temperature=0.0)
    with pytest.raises(ValueError, match="`alpha`"):
        Distillation(cnn, alpha=1.5)
    with pytest.raises(TypeError, match="`teacher`"):
        Distillation("teacher")
    three = ks.models.small_cnn(num_classes=3, seed=0)
    three.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="as many classes"):
        three.fit(x[:8], y[:8] % 3, verbose=0, callbacks=[Distillation(cnn)])
    with pytest.raises(ValueError, match="`temperature`"):
        defensive_distillation(lambda: ks.models.small_cnn(), x, y, temperature=-1)
    with pytest.raises(TypeError, match="`model_fn`"):
        defensive_distillation(lambda: "model", x[:8], y[:8], epochs=1)
