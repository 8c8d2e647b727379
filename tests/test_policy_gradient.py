"""PolicyGradientTraining: the REINFORCE objective by hand, exploration statistics, learning,
argument checks, refused compositions and RL-adv (policy gradient on adversarial examples)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_secure as ks
from keras_secure import attacks as A
from keras_secure.callbacks.adversarial import AdversarialTraining
from keras_secure.callbacks.distillation import Distillation
from keras_secure.callbacks.policy_gradient import (
    PolicyGradientTraining,
    behaviour_probabilities,
    epsilon_greedy_actions,
    policy_gradient_loss,
    rewards_of,
)
from keras_secure.callbacks.privacy import DPSGD

from conftest import VALUE_RANGE

W = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
B = np.array([0.1, -0.2, 0.0])


def linear_classifier(lr=0.0, l2=0.0, softmax_output=False):
    """A 3-class linear model with the known weights W, B, compiled with SGD(lr)."""
    dense = keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)
    layers = [keras.Input((4,)), dense]
    if softmax_output:
        layers.append(keras.layers.Softmax())
    model = keras.Sequential(layers)
    dense.set_weights([W.astype(np.float32), B.astype(np.float32)])
    model.compile(keras.optimizers.SGD(lr), keras.losses.SparseCategoricalCrossentropy(
        from_logits=not softmax_output))
    return model


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_surrogate(x, actions, adv, w, b, sw=None, beta=0.0):
    """The surrogate in float64 NumPy, and its gradient w.r.t. (w, b) in closed form:
    d/dz [-A log p_a] = -A (e_a - p);  d/dz [-beta H] = beta p (log p + H)."""
    sw = np.ones(len(x)) if sw is None else sw
    p = softmax(x @ w + b)
    logp = np.log(p)
    entropy = -(p * logp).sum(1)
    values = sw * (-adv * logp[np.arange(len(x)), actions] - beta * entropy)
    onehot = np.eye(w.shape[1])[actions]
    dz = sw[:, None] * (-adv[:, None] * (onehot - p) + beta * p * (logp + entropy[:, None]))
    n = len(x)
    return values.sum() / n, x.T @ dz / n, dz.sum(0) / n


def data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, (n, 4)).astype(np.float32), rng.integers(0, 3, n)


# -- the estimator ---------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_surrogate_gradient_by_hand_and_finite_differences(beta):
    x, _ = data()
    rng = np.random.default_rng(1)
    actions = rng.integers(0, 3, len(x))
    adv = rng.normal(size=len(x))
    sw = rng.uniform(0.5, 2.0, len(x))
    w = tf.Variable(W, dtype=tf.float64)
    b = tf.Variable(B, dtype=tf.float64)
    with tf.GradientTape() as tape:
        value = policy_gradient_loss(tf.nn.log_softmax(x.astype(np.float64) @ w + b), actions,
                                     adv, sw, entropy_weight=beta)
    gw, gb = tape.gradient(value, [w, b])
    expected, ew, eb = hand_surrogate(x.astype(np.float64), actions, adv, W, B, sw, beta)
    assert float(value) == pytest.approx(expected, rel=1e-5)  # float32 inside
    np.testing.assert_allclose(gw.numpy(), ew, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gb.numpy(), eb, rtol=1e-4, atol=1e-6)
    # the closed form against central finite differences of the float64 surrogate
    h = 1e-6
    for i, j in [(0, 0), (1, 2), (3, 1)]:
        plus, minus = W.copy(), W.copy()
        plus[i, j] += h
        minus[i, j] -= h
        fd = (hand_surrogate(x, actions, adv, plus, B, sw, beta)[0]
              - hand_surrogate(x, actions, adv, minus, B, sw, beta)[0]) / (2 * h)
        assert ew[i, j] == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_advantages_carry_no_gradient():
    logits = tf.Variable([[0.2, -0.1, 0.4]])
    with tf.GradientTape() as tape:
        logp = tf.nn.log_softmax(logits)
        value = policy_gradient_loss(logp, tf.constant([0]), tf.exp(logp[:, 1]))
    p = softmax(np.array([[0.2, -0.1, 0.4]]))
    expected = -p[0, 1] * (np.eye(3)[0] - p[0])  # advantage p_1 held constant
    np.testing.assert_allclose(tape.gradient(value, logits).numpy()[0], expected, rtol=1e-5)


def test_rewards_and_behaviour_probabilities():
    np.testing.assert_array_equal(rewards_of([0, 1, 2], [0, 2, 2], -1.0).numpy(), [1, -1, 1])
    np.testing.assert_array_equal(rewards_of([0, 1], [1, 1], 0.0).numpy(), [0, 1])
    logp = tf.math.log([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    mu = behaviour_probabilities(logp, tf.constant([0, 0]), 0.3, "greedy").numpy()
    np.testing.assert_allclose(mu, [0.1 + 0.7, 0.1], rtol=1e-6)
    mu = behaviour_probabilities(logp, tf.constant([1, 2]), 0.3, "sample").numpy()
    np.testing.assert_allclose(mu, [0.1 + 0.7 * 0.3, 0.1 + 0.7 * 0.6], rtol=1e-6)


def tolerance(p, n):
    return 5.0 * np.sqrt(p * (1 - p) / n)  # 5 standard deviations of a frequency


@pytest.mark.parametrize("exploit", ["greedy", "sample"])
def test_epsilon_one_samples_uniform_actions(exploit):
    n, k = 20000, 10
    logp = tf.nn.log_softmax(tf.random.stateless_normal([n, k], [1, 2]) * 3.0)
    actions = epsilon_greedy_actions(logp, 1.0, keras.random.SeedGenerator(0), exploit).numpy()
    freq = np.bincount(actions, minlength=k) / n
    assert np.abs(freq - 1 / k).max() < tolerance(1 / k, n)


def test_epsilon_greedy_frequencies():
    n, k, eps = 20000, 4, 0.3
    logp = tf.math.log(tf.tile([[0.1, 0.6, 0.2, 0.1]], [n, 1]))
    greedy = epsilon_greedy_actions(logp, eps, keras.random.SeedGenerator(1)).numpy()
    expected = np.full(k, eps / k)
    expected[1] += 1 - eps
    np.testing.assert_array_less(np.abs(np.bincount(greedy, minlength=k) / n - expected),
                                 tolerance(expected, n))
    sampled = epsilon_greedy_actions(logp, eps, keras.random.SeedGenerator(1), "sample").numpy()
    expected = eps / k + (1 - eps) * np.array([0.1, 0.6, 0.2, 0.1])
    np.testing.assert_array_less(np.abs(np.bincount(sampled, minlength=k) / n - expected),
                                 tolerance(expected, n))


# -- the stage's step ------------------------------------------------------------------------
@pytest.mark.parametrize("l2", [0.0, 0.05])
@pytest.mark.parametrize("baseline, weighted, importance", [
    ("mean", False, False), ("mean", True, False), ("none", True, False),
    ("mean", True, True)])
def test_one_step_is_the_hand_computed_update(l2, baseline, weighted, importance):
    # One full batch, SGD(lr): the new weights are W - lr * (grad of the surrogate + grad of
    # the regularization); the compiled cross-entropy contributes nothing.
    x, y = data()
    sw = np.random.default_rng(2).uniform(0.5, 2.0, len(x)) if weighted else None
    lr, eps, seed, wrong = 0.5, 0.5, 3, -1.0
    model = linear_classifier(lr, l2)
    history = model.fit(x, y, sample_weight=sw, batch_size=len(x), epochs=1, shuffle=False,
                        verbose=0, callbacks=[PolicyGradientTraining(
                            epsilon=eps, wrong_reward=wrong, baseline=baseline,
                            importance_weighting=importance, seed=seed)])
    logp = tf.nn.log_softmax(x @ W.astype(np.float32) + B.astype(np.float32))
    actions = epsilon_greedy_actions(logp, eps, keras.random.SeedGenerator(seed)).numpy()
    assert 0 < np.sum(actions != np.argmax(logp, 1)) < len(x)  # some explored, some greedy
    rewards = np.where(actions == y, 1.0, wrong)
    w8 = np.ones(len(x)) if sw is None else sw
    b = 0.0 if baseline == "none" else np.sum(w8 * rewards) / np.sum(w8)
    adv = rewards - b
    if importance:  # truncated importance weights min(1, pi(a) / mu(a)), mu epsilon-greedy
        pi = np.exp(logp.numpy())[np.arange(len(x)), actions]
        mu = eps / 3 + (1 - eps) * (actions == np.argmax(logp, 1))
        adv = adv * np.minimum(1.0, pi / mu)
        assert np.any(pi / mu < 1) and np.any(pi / mu > 1)
    value, gw, gb = hand_surrogate(x.astype(np.float64), actions, adv, W, B, sw)
    new_w, new_b = model.layers[-1].get_weights()
    np.testing.assert_allclose(new_w, W - lr * (gw + 2 * l2 * W), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_b, B - lr * gb, rtol=1e-5, atol=1e-6)
    logs = history.history
    assert logs["pg_loss"][0] == pytest.approx(value, rel=1e-5, abs=1e-7)
    assert logs["pg_reward"][0] == pytest.approx(rewards.mean(), rel=1e-6)
    assert logs["pg_epsilon"][0] == pytest.approx(eps)
    # Keras's loss log is the training objective: the surrogate plus the regularization
    assert logs["loss"][0] == pytest.approx(value + l2 * np.sum(W ** 2), rel=1e-5, abs=1e-6)


def test_softmax_output_model_steps_like_its_logits_model():
    x, y = data()
    steps = []
    for softmax_output in (False, True):
        model = linear_classifier(0.5, softmax_output=softmax_output)
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0,
                  callbacks=[PolicyGradientTraining(epsilon=0.5, seed=3)])
        steps.append(model.layers[0].get_weights())
    for a, b in zip(*steps):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_running_baseline_is_a_moving_average():
    x, y = data(16)
    callback = PolicyGradientTraining(epsilon=0.4, baseline="running", baseline_momentum=0.5,
                                      seed=0)
    model = linear_classifier(0.0)  # frozen: the rewards can be reproduced
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    gen = keras.random.SeedGenerator(0)
    logp = tf.nn.log_softmax(x @ W.astype(np.float32) + B.astype(np.float32))
    means = [np.mean(epsilon_greedy_actions(logp[i:i + 8], 0.4, gen).numpy() == y[i:i + 8])
             for i in (0, 8)]
    expected = 0.5 * means[0] + 0.5 * means[0]            # first step starts at its own mean
    expected = 0.5 * expected + 0.5 * means[1]
    assert float(callback.stage.running_baseline.numpy()) == pytest.approx(expected)


def test_epsilon_decays_linearly_over_steps():
    x, y = data(10)
    callback = PolicyGradientTraining(epsilon=0.5, epsilon_end=0.1, decay_steps=4, seed=0)
    history = linear_classifier(0.0).fit(x, y, batch_size=2, epochs=2, verbose=0,
                                         callbacks=[callback])
    # steps 0..4 of epoch 1: 0.5, 0.4, 0.3, 0.2, 0.1; epoch 2 stays at 0.1
    np.testing.assert_allclose(history.history["pg_epsilon"], [0.3, 0.1], rtol=1e-6)
    assert int(callback.stage.step.numpy()) == 10


def test_epsilon_one_through_fit_rewards_chance(digits):
    x, y, _, _ = digits
    model = ks.models.small_cnn(seed=0)
    model.compile(keras.optimizers.SGD(0.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=256, epochs=1, verbose=0,
                        callbacks=[PolicyGradientTraining(epsilon=1.0, seed=0)])
    # uniform actions: the mean reward is the chance of hitting the label, 1/10
    assert history.history["pg_reward"][0] == pytest.approx(0.1, abs=tolerance(0.1, len(x)))


def seeded_cnn():
    keras.utils.set_random_seed(0)
    model = ks.models.small_cnn(seed=0)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def test_the_cnn_learns_the_digits(digits):
    x, y, x_test, y_test = digits
    model = seeded_cnn()
    history = model.fit(x, y, batch_size=64, epochs=8, verbose=0, callbacks=[
        PolicyGradientTraining(epsilon=0.1, epsilon_end=0.0, decay_steps=100, seed=0)])
    accuracy = np.mean(ks.classifier.as_classifier(model).predict_labels(x_test) == y_test)
    assert accuracy > 0.8  # chance is 0.1
    assert history.history["pg_reward"][-1] > history.history["pg_reward"][0] + 0.3
    assert {"pg_reward", "pg_epsilon", "pg_loss", "loss", "accuracy"} <= set(history.history)


# -- RL-adv ----------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["adversarial_first", "policy_first"])
def test_policy_acts_on_the_adversarial_batch(order):
    # Frozen model, greedy actions without exploration, reward 1/0: the mean reward is the
    # accuracy on the batch the policy sees. With AdversarialTraining(FGSM) it is the accuracy
    # on FGSM's examples (FGSM is deterministic), whichever order the callbacks are given in.
    x, y = data(64)
    model = linear_classifier(0.0)
    fgsm = A.FGSM(0.3, value_range=VALUE_RANGE)
    x_adv = fgsm(model, x, y)
    clf = ks.classifier.as_classifier(model)
    clean_acc = np.mean(clf.predict_labels(x) == y)
    adv_acc = np.mean(clf.predict_labels(x_adv) == y)
    assert clean_acc - adv_acc > 0.2
    callbacks = [AdversarialTraining(fgsm), PolicyGradientTraining(epsilon=0.0, seed=0)]
    if order == "policy_first":
        callbacks.reverse()
    history = model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=callbacks)
    assert history.history["pg_reward"][0] == pytest.approx(adv_acc)
    logp = tf.nn.log_softmax(np.asarray(x_adv) @ W + B).numpy()
    actions = logp.argmax(1)
    rewards = (actions == y).astype(float)
    expected, _, _ = hand_surrogate(np.asarray(x_adv, np.float64), actions,
                                    rewards - rewards.mean(), W, B)
    assert history.history["pg_loss"][0] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert "adv_loss" in history.history


def test_rl_adv_trains_on_pgd_examples(digits):
    x, y, _, _ = digits
    model = seeded_cnn()
    pgd = A.PGD(0.1, steps=3, value_range=VALUE_RANGE, seed=0)
    history = model.fit(x[:512], y[:512], batch_size=64, epochs=3, verbose=0, callbacks=[
        AdversarialTraining(pgd), PolicyGradientTraining(epsilon=0.1, seed=0)])
    assert np.all(np.isfinite(history.history["pg_loss"]))
    assert history.history["pg_reward"][-1] > history.history["pg_reward"][0]


# -- set-ups that are refused ----------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({"epsilon": 1.5}, ValueError, "`epsilon` must be a number >= 0 and <= 1"),
    ({"epsilon": "0.1"}, TypeError, "`epsilon` must be a number"),
    ({"epsilon_end": -0.1, "decay_steps": 10}, ValueError, "`epsilon_end`"),
    ({"epsilon_end": 0.01}, ValueError, "`decay_steps` is required"),
    ({"decay_steps": 10}, ValueError, "`decay_steps` needs `epsilon_end`"),
    ({"epsilon_end": 0.0, "decay_steps": 0}, ValueError, "`decay_steps` must be an integer"),
    ({"wrong_reward": 0.5}, ValueError, "`wrong_reward` must be a number >= -1 and <= 0"),
    ({"baseline": "median"}, ValueError, "`baseline` must be one of"),
    ({"baseline_momentum": 1.0}, ValueError, "`baseline_momentum`"),
    ({"entropy_weight": -0.1}, ValueError, "`entropy_weight`"),
    ({"exploit": "boltzmann"}, ValueError, "`exploit` must be one of"),
    ({"importance_weighting": 1}, TypeError, "`importance_weighting` must be a bool"),
    ({"seed": 1.5}, TypeError, "`seed` must be an integer"),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PolicyGradientTraining(**kwargs)


def test_get_config_round_trip():
    callback = PolicyGradientTraining(epsilon=0.3, epsilon_end=0.05, decay_steps=50,
                                      wrong_reward=-1.0, baseline="running",
                                      baseline_momentum=0.8, entropy_weight=0.01,
                                      exploit="sample", importance_weighting=True, seed=7)
    config = callback.get_config()
    assert PolicyGradientTraining(**config).get_config() == config
    assert config["wrong_reward"] == -1.0 and config["exploit"] == "sample"


def test_refused_setups():
    x, y = data()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="compiled with its supervised loss"):
        model.fit(x, y, verbose=0, callbacks=[PolicyGradientTraining()])
    with pytest.raises(ValueError, match="needs? labels"):
        linear_classifier().fit(x, verbose=0, callbacks=[PolicyGradientTraining()])
    with pytest.raises(ValueError, match="another PolicyGradientTraining"):
        linear_classifier().fit(x, y, verbose=0, callbacks=[PolicyGradientTraining(),
                                                             PolicyGradientTraining()])
    with pytest.raises(ValueError, match="Distillation mixes the compiled loss"):
        linear_classifier().fit(x, y, verbose=0, callbacks=[
            Distillation(linear_classifier()), PolicyGradientTraining()])
    with pytest.raises(ValueError, match="gradient stage"):
        linear_classifier().fit(x, y, batch_size=4, verbose=0, callbacks=[
            DPSGD(1.0, 1.0, num_examples=len(x), batch_size=4, delta=1e-5,
                  sampling="shuffle"), PolicyGradientTraining()])


def test_non_finite_compiled_loss_stops_the_step():
    x, y = data()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1), lambda y_true, y_pred: tf.fill(
        [tf.shape(y_pred)[0]], np.float32(np.inf)))
    before = model.layers[0].get_weights()[0].copy()
    with pytest.raises(tf.errors.InvalidArgumentError, match="compiled loss of this batch"):
        model.fit(x, y, verbose=0, callbacks=[PolicyGradientTraining()])
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], before)
