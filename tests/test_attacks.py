"""Guarantees of the attack suite: feasibility, strength, determinism, validation."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from keras_secure import attacks as A
from keras_secure.attacks.apgd import checkpoint_lengths
from keras_secure.attacks.base import project, random_start
from keras_secure.attacks.square import square_fraction

from conftest import VALUE_RANGE, accuracy

VR = VALUE_RANGE


def all_attacks(eps=0.1, seed=0):
    """One configured instance of every attack (small budgets)."""
    return [
        A.FGSM(eps, value_range=VR),
        A.FGSM(eps * 5, norm="l2", value_range=VR),
        A.PGD(eps, steps=10, value_range=VR, seed=seed),
        A.PGD(eps * 5, steps=10, norm="l2", value_range=VR, seed=seed),
        A.MIFGSM(eps, steps=5, value_range=VR),
        A.APGD(eps, steps=20, value_range=VR, seed=seed),
        A.APGD(eps * 5, steps=20, norm="l2", loss="dlr", value_range=VR, seed=seed),
        A.CarliniWagnerL2(value_range=VR, steps=20, binary_search_steps=3, learning_rate=0.1),
        A.DeepFool(value_range=VR, steps=20),
        A.Square(eps, queries=100, value_range=VR, seed=seed),
    ]


def norms(delta, norm):
    flat = delta.reshape(len(delta), -1)
    return np.abs(flat).max(1) if norm == "linf" else np.sqrt((flat ** 2).sum(1))


@pytest.mark.parametrize("attack", all_attacks(), ids=lambda a: a.label)
def test_adversarial_inputs_stay_in_ball_and_range(attack, cnn, eval_set):
    x, y = eval_set
    x_adv = attack(cnn, x[:64], y[:64])
    assert isinstance(x_adv, np.ndarray) and x_adv.shape == x[:64].shape
    assert x_adv.dtype == np.float32
    assert x_adv.min() >= VR[0] and x_adv.max() <= VR[1]
    if attack.eps is not None:
        assert norms(x_adv - x[:64], attack.norm).max() <= attack.eps * (1 + 1e-5) + 1e-6
    # every attack changes something on a standard (non-robust) model
    assert np.abs(x_adv - x[:64]).max() > 0


@pytest.mark.parametrize("make", [
    lambda e: A.FGSM(e, value_range=VR),
    lambda e: A.PGD(e, steps=10, value_range=VR, seed=0),
    lambda e: A.MIFGSM(e, steps=10, value_range=VR),
    lambda e: A.APGD(e, steps=20, value_range=VR, seed=0),
    lambda e: A.Square(e, queries=150, value_range=VR, seed=0),
], ids=["FGSM", "PGD", "MI-FGSM", "APGD", "Square"])
def test_success_is_monotone_in_eps(make, cnn, eval_set):
    x, y = eval_set
    accs = [accuracy(cnn, make(eps)(cnn, x, y), y) for eps in (0.02, 0.05, 0.1, 0.2, 0.3)]
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < accs[0] - 0.3, accs


@pytest.mark.parametrize("attack", [
    A.PGD(0.5, steps=20, value_range=VR, seed=0),
    A.APGD(0.5, steps=20, value_range=VR, seed=0),
], ids=["PGD", "APGD"])
def test_large_eps_drives_accuracy_to_zero(attack, cnn, eval_set):
    x, y = eval_set
    assert accuracy(cnn, attack(cnn, x, y), y) <= 0.01


def test_pgd_and_apgd_beat_fgsm(cnn, eval_set):
    x, y = eval_set
    fgsm = accuracy(cnn, A.FGSM(0.1, value_range=VR)(cnn, x, y), y)
    pgd = accuracy(cnn, A.PGD(0.1, steps=20, value_range=VR, seed=0)(cnn, x, y), y)
    apgd = accuracy(cnn, A.APGD(0.1, steps=50, value_range=VR, seed=0)(cnn, x, y), y)
    assert pgd <= fgsm and apgd <= fgsm + 0.005


def test_minimal_norm_attacks_need_less_than_pgd(cnn, eval_set):
    """C&W and DeepFool find perturbations smaller than the L2 budget PGD needs for the same
    success rate."""
    x, y = eval_set
    clean = np.argmax(cnn.predict(x, verbose=0), 1) == y
    x, y = x[clean][:100], y[clean][:100]
    pgd_success = {}
    for eps in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0):
        x_adv = A.PGD(eps, norm="l2", steps=20, value_range=VR, seed=0)(cnn, x, y)
        pgd_success[eps] = 1 - accuracy(cnn, x_adv, y)
    for attack in (A.CarliniWagnerL2(value_range=VR, learning_rate=0.1, steps=100,
                                     binary_search_steps=6, initial_const=0.1),
                   A.DeepFool(value_range=VR)):
        x_adv = attack(cnn, x, y)
        fooled = np.argmax(cnn.predict(x_adv, verbose=0), 1) != y
        success = fooled.mean()
        assert success >= 0.95, (attack, success)
        needed = min(e for e, s in pgd_success.items() if s >= success - 1e-9)
        median = np.median(norms(x_adv[fooled] - x[fooled], "l2"))
        assert median < needed, (attack.label, median, needed, pgd_success)


def test_cw_returns_input_where_it_fails_and_respects_budget(cnn, eval_set):
    x, y = eval_set
    attack = A.CarliniWagnerL2(value_range=VR, eps=0.2, learning_rate=0.1, steps=30,
                               binary_search_steps=3, initial_const=0.1)
    x_adv = attack(cnn, x[:50], y[:50])
    d = norms(x_adv - x[:50], "l2")
    assert d.max() <= 0.2 + 1e-5
    unchanged = d == 0
    assert unchanged.any() and (~unchanged).any()


def test_targeted_pgd_reaches_targets(cnn, eval_set):
    x, y = eval_set
    targets = (y + 1) % 10
    x_adv = A.PGD(0.3, steps=30, targeted=True, value_range=VR, seed=0)(cnn, x, targets)
    hit = np.mean(np.argmax(cnn.predict(x_adv, verbose=0), 1) == targets)
    assert hit >= 0.9


def test_targeted_square_and_cw(cnn, eval_set):
    x, y = eval_set
    x, y = x[:40], y[:40]
    targets = (y + 3) % 10
    for attack in (A.Square(0.3, queries=300, targeted=True, value_range=VR, seed=0),
                   A.CarliniWagnerL2(value_range=VR, targeted=True, learning_rate=0.1,
                                     steps=50, binary_search_steps=4, initial_const=1.0)):
        hit = np.mean(np.argmax(cnn.predict(attack(cnn, x, targets), verbose=0), 1) == targets)
        assert hit >= 0.7, (attack.label, hit)


@pytest.mark.parametrize("make", [
    lambda: A.PGD(0.1, steps=5, value_range=VR, seed=7),
    lambda: A.APGD(0.1, steps=10, value_range=VR, seed=7),
    lambda: A.Square(0.1, queries=50, value_range=VR, seed=7),
], ids=["PGD", "APGD", "Square"])
def test_attacks_are_deterministic_under_a_seed(make, cnn, eval_set):
    x, y = eval_set
    a, b = make()(cnn, x[:50], y[:50]), make()(cnn, x[:50], y[:50])
    np.testing.assert_array_equal(a, b)
    other = type(make())(**{**make().get_config(), "seed": 8})(cnn, x[:50], y[:50])
    assert not np.array_equal(a, other)


def test_fgsm_matches_hand_computed_step(linear_model):
    x = np.array([[0.2, 0.4, 0.6, 0.8]], np.float32)
    y = np.array([1])
    w, b = (v for v in linear_model.layers[-1].get_weights())
    z = x @ w + b
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    grad = (p - np.eye(3)[y]) @ w.T  # d CE / dx for a linear model
    expected = np.clip(x + 0.05 * np.sign(grad), 0, 1)
    np.testing.assert_allclose(A.FGSM(0.05, value_range=VR)(linear_model, x, y), expected,
                               atol=1e-6)
    l2 = np.clip(x + 0.05 * grad / np.linalg.norm(grad), 0, 1)
    np.testing.assert_allclose(A.FGSM(0.05, norm="l2", value_range=VR)(linear_model, x, y), l2,
                               atol=1e-6)


def test_projection_and_random_start():
    delta = tf.constant([[3.0, 4.0], [0.3, -0.4]])
    np.testing.assert_allclose(project(delta, 1.0, "l2"), [[0.6, 0.8], [0.3, -0.4]], atol=1e-6)
    np.testing.assert_allclose(project(delta, 0.35, "linf"), [[0.35, 0.35], [0.3, -0.35]])
    x = tf.zeros([2000, 3])
    gen = keras.random.SeedGenerator(0)
    start = random_start(x, 0.5, "l2", gen).numpy()
    r = np.linalg.norm(start, axis=1)
    assert r.max() <= 0.5 + 1e-6
    # uniform in a 3-d ball: P(r <= eps/2) = 1/8; 2000 draws -> std 0.0074, allow 4 sigma
    assert abs(np.mean(r <= 0.25) - 0.125) < 4 * np.sqrt(0.125 * 0.875 / 2000)
    cube = random_start(x, 0.5, "linf", gen).numpy()
    assert np.abs(cube).max() <= 0.5 and abs(cube.mean()) < 4 * 0.5 / np.sqrt(3 * 6000)


def test_apgd_checkpoints_and_square_schedule():
    assert checkpoint_lengths(100) == (22, 6, 3)
    assert checkpoint_lengths(5) == (1, 1, 1)
    assert float(square_fraction(0.05, 10, 10000)) == pytest.approx(0.05)
    assert float(square_fraction(0.05, 11, 10000)) == pytest.approx(0.025)
    assert float(square_fraction(0.05, 9000, 10000)) == pytest.approx(0.05 / 512)
    assert float(square_fraction(0.05, 50, 1000)) == pytest.approx(0.05 / 8)  # 200 < 500 <= 500


def test_softmax_models_are_attacked_through_their_logits(cnn, eval_set):
    x, y = eval_set
    probs = keras.Sequential([cnn, keras.layers.Softmax()])
    probs_fn = keras.Model(cnn.inputs, keras.layers.Activation("softmax")(cnn.outputs[0]))
    expected = A.FGSM(0.1, value_range=VR)(cnn, x[:20], y[:20])
    for m in (probs, probs_fn):
        np.testing.assert_allclose(A.FGSM(0.1, value_range=VR)(m, x[:20], y[:20]), expected,
                                   atol=1e-6)
    dense_softmax = keras.Sequential([keras.Input((4,)),
                                      keras.layers.Dense(3, activation="softmax")])
    logits = A.logits_function(dense_softmax)(tf.ones([2, 4]))
    np.testing.assert_allclose(tf.nn.softmax(logits), dense_softmax(tf.ones([2, 4])), atol=1e-6)
    conv_softmax = keras.Sequential([keras.Input((4, 4, 1)),
                                     keras.layers.Conv2D(3, 4, activation="softmax"),
                                     keras.layers.Reshape((3,))])
    A.logits_function(conv_softmax)  # not last: a Reshape follows, used as is
    last_conv = keras.Sequential([keras.Input((1, 1, 3)),
                                  keras.layers.Conv2D(3, 1, activation="softmax")])
    with pytest.raises(TypeError, match="softmax"):
        A.logits_function(last_conv)


def test_binary_single_logit_model(linear_model):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    x = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    y = (model.predict(x, verbose=0)[:, 0] > 0).astype(int)
    x_adv = A.PGD(1.0, steps=20, value_range=VR, seed=0)(model, x, y)
    assert np.mean((model.predict(x_adv, verbose=0)[:, 0] > 0).astype(int) != y) >= 0.5


def test_graph_entry_point_inside_tf_function(cnn, eval_set):
    x, y = eval_set
    attack = A.PGD(0.1, steps=5, value_range=VR, seed=0)
    logits_fn = A.logits_function(cnn)

    @tf.function
    def step(xb, yb):
        return attack.perturb(logits_fn, xb, yb)

    out = step(tf.constant(x[:16]), tf.constant(y[:16], tf.int32)).numpy()
    assert np.abs(out - x[:16]).max() <= 0.1 + 1e-6


def test_batching_and_labels(cnn, eval_set):
    x, y = eval_set
    full = A.FGSM(0.1, value_range=VR)(cnn, x[:50], y[:50])
    np.testing.assert_allclose(A.FGSM(0.1, value_range=VR, batch_size=16)(cnn, x[:50], y[:50]),
                               full, atol=1e-6)
    np.testing.assert_allclose(A.FGSM(0.1, value_range=VR)(cnn, x[:50], np.eye(10)[y[:50]]),
                               full, atol=1e-6)
    tensor_out = A.FGSM(0.1, value_range=VR)(cnn, tf.constant(x[:50]), y[:50])
    assert tf.is_tensor(tensor_out)
    pred = np.argmax(cnn.predict(x[:50], verbose=0), 1)
    np.testing.assert_allclose(A.FGSM(0.1, value_range=VR)(cnn, x[:50]),
                               A.FGSM(0.1, value_range=VR)(cnn, x[:50], pred), atol=1e-6)
    # integer images with a value range are attacked in their own units
    x_int = np.round(x[:10] * 255).astype(np.uint8)
    scaled = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255), cnn])
    out = A.PGD(25.0, steps=5, value_range=(0, 255), seed=0)(scaled, x_int, y[:10])
    assert out.dtype == np.float32 and np.abs(out - x_int).max() <= 25.0 + 1e-4


def test_non_differentiable_model_is_refused_by_gradient_attacks_but_not_square(cnn, eval_set):
    x, y = eval_set

    def rounded(inputs):
        return cnn(tf.stop_gradient(tf.round(inputs * 4) / 4))

    with pytest.raises(TypeError, match="not differentiable"):
        A.PGD(0.1, steps=2, value_range=VR)(rounded, x[:8], y[:8])
    out = A.Square(0.2, queries=50, value_range=VR, seed=0)(rounded, x[:8], y[:8])
    assert np.abs(out - x[:8]).max() <= 0.2 + 1e-6


def test_get_config_round_trip():
    for attack in all_attacks():
        clone = type(attack).from_config(attack.get_config())
        assert clone.get_config() == attack.get_config()
    assert isinstance(A.get("PGD", eps=0.1), A.PGD)
    assert isinstance(A.get("c&w", value_range=VR), A.CarliniWagnerL2)
    with pytest.raises(ValueError, match="`name`"):
        A.get("nope")


@pytest.mark.parametrize("make, match", [
    (lambda: A.PGD(0.0), "`eps` must be a number > 0"),
    (lambda: A.PGD(-0.1), "Received: eps=-0.1"),
    (lambda: A.FGSM("0.1"), "`eps` must be a number"),
    (lambda: A.PGD(0.1, steps=0), "`steps` must be an integer >= 1"),
    (lambda: A.PGD(0.1, steps=2.5), "`steps` must be an integer"),
    (lambda: A.PGD(2.0, value_range=(0, 1)), "`eps` must be <= the width"),
    (lambda: A.PGD(0.1, norm="l1"), "`norm` must be one of"),
    (lambda: A.PGD(0.1, step_schedule="exp"), "`step_schedule`"),
    (lambda: A.PGD(0.1, loss="dlr", targeted=True), "untargeted only"),
    (lambda: A.PGD(0.1, value_range=(1, 0)), "`value_range`"),
    (lambda: A.PGD(0.1, value_range=5), "`value_range` must be a pair"),
    (lambda: A.PGD(0.1, restarts=0), "`restarts`"),
    (lambda: A.APGD(0.1, rho=1.5), "`rho`"),
    (lambda: A.MIFGSM(0.1, decay=-1), "`decay`"),
    (lambda: A.CarliniWagnerL2(), "`value_range` is required"),
    (lambda: A.CarliniWagnerL2(value_range=VR, confidence=-1), "`confidence`"),
    (lambda: A.DeepFool(num_candidates=1), "`num_candidates`"),
    (lambda: A.Square(0.1, queries=1), "`queries`"),
    (lambda: A.Square(0.1, p_init=0), "`p_init`"),
    (lambda: A.FGSM(0.1, targeted="yes"), "`targeted` must be a bool"),
    (lambda: A.FGSM(0.1, batch_size=0), "`batch_size`"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_invalid_constructor_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_invalid_call_arguments(cnn, eval_set):
    x, y = eval_set
    attack = A.FGSM(0.1, value_range=VR)
    with pytest.raises(ValueError, match="same number of examples"):
        attack(cnn, x[:10], y[:9])
    with pytest.raises(ValueError, match=r"labels in \[0, 9\]"):
        attack(cnn, x[:2], np.array([0, 10]))
    with pytest.raises(ValueError, match="must lie in value_range"):
        attack(cnn, x[:2] + 1.5, y[:2])
    with pytest.raises(TypeError, match="integer dtype"):
        A.FGSM(0.1)(cnn, (x[:2] * 16).astype(np.int32), y[:2])
    with pytest.raises(ValueError, match="required when targeted"):
        A.PGD(0.1, targeted=True)(cnn, x[:2])
    with pytest.raises(ValueError, match="Square"):
        A.Square(0.1)(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]),
                      np.zeros((2, 4), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="L2 diameter"):
        A.PGD(9.0, norm="l2", value_range=VR)(cnn, x[:2], y[:2])
    with pytest.raises(TypeError, match="`model`"):
        attack("not a model", x[:2], y[:2])


# ---------------------------------------------------------------------------------------------
# Options checked against hand computations and closed forms
# ---------------------------------------------------------------------------------------------
def test_step_factor_values_by_hand():
    from keras_secure.attacks.pgd import step_factor

    n = 8
    hand = {
        "constant": [1.0] * n,
        "linear": [1 - i / 8 for i in range(n)],                    # 1, 7/8, ..., 1/8
        "cosine": [(1 + np.cos(np.pi * i / 8)) / 2 for i in range(n)],
        "step": [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25],        # halved at 50% and 75%
    }
    for schedule, expected in hand.items():
        got = [float(step_factor(schedule, i, n)) for i in range(n)]
        np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=schedule)


# A model whose loss has a maximum: logits [0, -sum_j a_j (x_j - c_j)^2], label 0. The
# untargeted CE log(1 + exp(-sum_j a_j (x_j - c_j)^2)) grows towards c, its gradient is a
# positive multiple of a * (c - x), and the label never changes (z_1 <= 0 = z_0), so the best
# iterate is the highest-loss one. Sign steps overshoot c and oscillate around it: which
# iterate is best depends on every step's length and on their order. (The unequal weights a
# avoid exact ties between mirror-image iterates.)
CENTRE = np.array([0.98, -0.96], np.float32)
WEIGHTS = np.array([1.0, 1.7], np.float32)


def bowl(x):
    x = tf.convert_to_tensor(x)
    curve = tf.reduce_sum(WEIGHTS * (x - CENTRE) ** 2, axis=1)
    return tf.stack([tf.zeros(tf.shape(x)[0]), -curve], axis=1)


def reference_sign_ascent(x0, step_sizes, eps, direction):
    """Plain-NumPy projected sign ascent on the bowl, returning its highest-loss iterate
    (the first one on ties), as PGD and MI-FGSM define their output."""
    x = x0.astype(np.float64)
    iterates, losses = [], []
    velocity = np.zeros_like(x)
    for k in range(len(step_sizes) + 1):
        iterates.append(x.copy())
        losses.append(np.log1p(np.exp(-(WEIGHTS * (x - CENTRE) ** 2).sum())))
        if k == len(step_sizes):
            break
        step, velocity = direction(x, velocity)
        x = np.clip(x + step_sizes[k] * step, x0 - eps, x0 + eps)
    best = int(np.argmax(losses))
    # no near-tie between distinct iterates (float32 rounding could then pick either)
    others = [v for it, v in zip(iterates, losses) if np.abs(it - iterates[best]).max() > 1e-6]
    assert not others or max(others) < losses[best] - 1e-5
    return iterates[best]


STARTS = np.array([[0.0, 0.0], [0.3, 0.1], [-0.2, 0.4], [1.5, -1.0], [0.9, -0.3]], np.float32)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "step"])
def test_pgd_takes_the_steps_its_schedule_claims(schedule):
    steps, alpha, eps = 6, 0.6, 1.2
    factors = {"constant": [1.0] * 6, "linear": [1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6],
               "cosine": [(1 + np.cos(np.pi * i / 6)) / 2 for i in range(6)],
               "step": [1, 1, 1, 0.5, 0.5, 0.25]}[schedule]
    got = A.PGD(eps, steps=steps, step_size=alpha, random_init=False, step_schedule=schedule)(
        bowl, STARTS, np.zeros(len(STARTS), int))
    sign = lambda x, v: (np.sign(CENTRE - x), v)  # noqa: E731
    expected = [reference_sign_ascent(x0, [alpha * f for f in factors], eps, sign)
                for x0 in STARTS]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_pgd_schedule_on_a_linear_model_moves_by_the_sum_of_its_steps():
    # binary linear model: the CE gradient of label 0 is p_1 (w_1 - w_0), of constant sign, so
    # every step moves by step_size * factor along sign(w_1 - w_0), and the loss only grows
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    w = np.array([[0.5, -1.0], [1.0, 2.0], [0.0, -0.5], [2.0, 1.0]], np.float32)
    model.layers[-1].set_weights([w, np.zeros(2, np.float32)])
    x = np.full((1, 4), 0.5, np.float32)
    direction = np.sign(w[:, 1] - w[:, 0])
    for schedule, total in (("constant", 8.0), ("linear", 4.5), ("step", 5.5),
                            ("cosine", 4.5)):
        # sums of the factors for 8 steps: 8; (8 + 7 + ... + 1) / 8; 4 + 2 * 0.5 + 2 * 0.25;
        # 4 + sum_i cos(pi i / 8) / 2, where cos(pi i / 8) + cos(pi (8 - i) / 8) = 0 for
        # i = 1..3 and cos(pi / 2) = 0, leaving cos(0) / 2 = 0.5
        got = A.PGD(10.0, steps=8, step_size=0.01, random_init=False, step_schedule=schedule)(
            model, x, np.array([0]))
        np.testing.assert_allclose(got, x + 0.01 * total * direction, atol=1e-6,
                                   err_msg=schedule)


def test_mifgsm_with_decay_zero_is_the_plain_iterative_attack(cnn, eval_set):
    x, y = eval_set
    for norm, eps in (("linf", 0.1), ("l2", 1.0)):
        mi = A.MIFGSM(eps, steps=7, decay=0.0, norm=norm, value_range=VR)(cnn, x[:64], y[:64])
        # I-FGSM / iterative FGM: PGD from x with the same step eps / steps, no schedule
        plain = A.PGD(eps, steps=7, step_size=eps / 7, norm=norm, random_init=False,
                      value_range=VR)(cnn, x[:64], y[:64])
        np.testing.assert_allclose(mi, plain, atol=1e-6)
        momentum = A.MIFGSM(eps, steps=7, decay=1.0, norm=norm, value_range=VR)(cnn, x[:64],
                                                                               y[:64])
        assert np.abs(momentum - plain).max() > 0.01  # decay does change the iterates


@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0, 2.0])
def test_mifgsm_momentum_matches_a_hand_computed_path(decay):
    # on the bowl the gradient is a positive multiple of g = a * (c - x), so its L1-normalised
    # form is g / ||g||_1 whatever the multiple
    def momentum(x, velocity):
        g = WEIGHTS * (CENTRE - x)
        velocity = decay * velocity + g / max(np.abs(g).sum(), 1e-12)
        return np.sign(velocity), velocity

    steps, alpha, eps = 10, 0.3, 1.5
    starts = np.concatenate([STARTS, np.round(np.random.default_rng(1).uniform(
        -1.5, 1.5, (12, 2)), 2)]).astype(np.float32)
    got = A.MIFGSM(eps, steps=steps, step_size=alpha, decay=decay)(
        bowl, starts, np.zeros(len(starts), int))
    expected = [reference_sign_ascent(x0, [alpha] * steps, eps, momentum) for x0 in starts]
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 0.5)])
def test_pgd_restarts_are_never_weaker_than_one_start(norm, eps, cnn, eval_set):
    """Exact, not statistical: the first restart of PGD(restarts=3, seed=s) starts where
    PGD(restarts=1, seed=s) starts (the same first draw of the seed generator) and follows the
    same iterates, and the result is the best iterate over all restarts; so per example it is
    at least as good (misclassified, then higher loss) as the one-start result. The attack's
    generator advances once per start, so the three starts are those of three consecutive calls
    of one PGD(restarts=1, seed=s), and restarts=3 returns their per-example best."""
    x, y = eval_set

    def outcome(x_adv):
        z = cnn(x_adv)
        fooled = np.argmax(z, 1) != y
        return fooled, tf.nn.sparse_softmax_cross_entropy_with_logits(y, z).numpy()

    make = lambda r: A.PGD(eps, steps=5, norm=norm, restarts=r, value_range=VR, seed=3)  # noqa
    one, three = make(1)(cnn, x, y), make(3)(cnn, x, y)
    fooled1, loss1 = outcome(one)
    fooled3, loss3 = outcome(three)
    assert np.all(fooled3 >= fooled1)
    same = fooled1 == fooled3
    assert np.all(loss3[same] >= loss1[same] - 1e-6)
    assert np.any(loss3[same] > loss1[same] + 1e-3)  # the extra starts do find better points
    # the per-example best of three consecutive one-start runs, computed here
    single = make(1)
    best = single(cnn, x, y)
    np.testing.assert_array_equal(best, one)  # the first start is shared
    best_fooled, best_loss = outcome(best)
    for _ in range(2):
        run = single(cnn, x, y)
        fooled, loss = outcome(run)
        better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
        best[better] = run[better]
        best_fooled, best_loss = best_fooled | fooled, np.where(better, loss, best_loss)
    np.testing.assert_allclose(three, best, atol=1e-6)


def affine_classifier():
    w = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 1.0]],
                 np.float32)
    b = np.array([0.1, -0.2, 0.0], np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.layers[-1].set_weights([w, b])
    x = np.random.default_rng(0).uniform(0.3, 0.7, (20, 4)).astype(np.float32)
    return model, w, b, x, np.argmax(x @ w + b, axis=1)


def nearest_boundary(x, y, w, b, kappa=0.0):
    """For an affine classifier the region where class y wins by more than -kappa is an
    intersection of half-spaces {(w_y - w_j) . x + b_y - b_j > -kappa}: the smallest L2
    perturbation that makes some class j beat y by kappa reaches the nearest of their
    hyperplanes, at distance (z_y - z_j + kappa) / ||w_y - w_j||, along -(w_y - w_j)."""
    z = x @ w + b
    distances, directions = [], []
    for i in range(len(x)):
        candidates = []
        for j in range(w.shape[1]):
            if j != y[i]:
                d = w[:, j] - w[:, y[i]]
                candidates.append(((z[i, y[i]] - z[i, j] + kappa) / np.linalg.norm(d),
                                   d / np.linalg.norm(d)))
        dist, direction = min(candidates, key=lambda c: c[0])
        distances.append(dist)
        directions.append(direction)
    return np.array(distances), np.array(directions)


def margins(z, y):
    z_y = z[np.arange(len(y)), y]
    return z_y - np.max(np.where(np.eye(z.shape[1])[y] > 0, -np.inf, z), axis=1)


def test_cw_confidence_reaches_the_closed_form_margin_and_distance():
    model, w, b, x, y = affine_classifier()
    found = {}
    for kappa in (0.0, 1.0, 3.0):
        attack = A.CarliniWagnerL2(value_range=(-10.0, 10.0), confidence=kappa, steps=200,
                                   binary_search_steps=10, learning_rate=0.05,
                                   initial_const=1.0)
        x_adv = attack(model, x, y)
        m = margins(x_adv @ w + b, y)
        # success means another class wins by at least kappa ...
        assert np.all(m <= -kappa + 1e-5), (kappa, m)
        # ... which no perturbation achieves below the closed-form distance; C&W's optimiser
        # gets within 10% of it (measured: at most 7.7% above)
        distance = np.linalg.norm(x_adv - x, axis=1)
        needed, _ = nearest_boundary(x, y, w, b, kappa)
        assert np.all(distance >= needed * (1 - 1e-5)), (kappa, distance / needed)
        assert np.all(distance <= needed * 1.10), (kappa, distance / needed)
        found[kappa] = m
    # a higher confidence gives a larger margin for the adversarial class at the result
    assert np.all(found[1.0] < found[0.0]) and np.all(found[3.0] < found[1.0])


@pytest.mark.parametrize("overshoot", [0.0, 0.02, 0.5])
def test_deepfool_overshoot_scales_the_minimal_perturbation(overshoot):
    # On an affine classifier the linearisation is exact: DeepFool's first step lands on the
    # nearest boundary (plus the reference implementation's 1e-4 in L2 norm), the label flips,
    # and the returned perturbation is (1 + overshoot) times that step.
    model, w, b, x, y = affine_classifier()
    distance, direction = nearest_boundary(x, y, w, b)
    x_adv = A.DeepFool(overshoot=overshoot)(model, x, y)
    expected = (1 + overshoot) * (distance + 1e-4)[:, None] * direction
    np.testing.assert_allclose(x_adv - x, expected, atol=1e-5)
    assert np.all(np.argmax(x_adv @ w + b, 1) != y)
    # a binary single-logit model: distance |w.x + b| / ||w||
    binary = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    wb = np.array([[1.0], [-2.0], [0.5], [1.5]], np.float32)
    binary.layers[-1].set_weights([wb, np.array([0.3], np.float32)])
    score = (x @ wb)[:, 0] + 0.3
    x_adv = A.DeepFool(overshoot=overshoot)(binary, x, (score > 0).astype(int))
    got = np.linalg.norm(x_adv - x, axis=1)
    np.testing.assert_allclose(got, (1 + overshoot) * (np.abs(score) / np.linalg.norm(wb) + 1e-4),
                               rtol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1000.0])
@pytest.mark.parametrize("make", [
    lambda: A.FGSM(0.1, value_range=VR),
    lambda: A.PGD(0.1, steps=10, value_range=VR, seed=0),
    lambda: A.MIFGSM(0.1, steps=5, value_range=VR),
    lambda: A.APGD(0.1, steps=10, value_range=VR, seed=0),
], ids=["FGSM", "PGD", "MI-FGSM", "APGD-CE"])
def test_cross_entropy_attacks_move_confident_examples(make, scale):
    """The cross-entropy's float32 gradient is exactly zero once p_y rounds to 1 (logit margin
    above ~17): a sigmoid model z = s (x0 - x1) with a large s would look robust. The truth does
    not depend on s: every point with |x0 - x1| <= 2 eps can be flipped in [0, 1]."""
    x = np.random.default_rng(0).uniform(0.2, 0.8, (200, 2)).astype(np.float32)
    y = (x[:, 0] > x[:, 1]).astype(np.int64)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.layers[0].set_weights([np.array([[scale], [-scale]], np.float32), np.zeros(1)])
    x_adv = make()(model, x, y)
    predicted = (model.predict(x_adv, verbose=0)[:, 0] > 0.5).astype(np.int64)
    assert np.mean(predicted == y) == pytest.approx(np.mean(np.abs(x[:, 0] - x[:, 1]) > 0.2))


@pytest.mark.parametrize("make", [
    lambda: A.FGSM(0.1, value_range=VR),
    lambda: A.PGD(0.1, steps=3, value_range=VR, seed=0),
    lambda: A.MIFGSM(0.1, steps=3, value_range=VR),
    lambda: A.APGD(0.1, steps=5, value_range=VR, seed=0),
    lambda: A.Square(0.1, queries=20, value_range=VR, seed=0),
    lambda: A.CarliniWagnerL2(value_range=VR, steps=5, binary_search_steps=2),
    lambda: A.DeepFool(value_range=VR, steps=3),
], ids=["FGSM", "PGD", "MI-FGSM", "APGD", "Square", "C&W", "DeepFool"])
def test_one_example_and_batch_size_one_run_like_any_batch(make, cnn, eval_set):
    """A batch of one example used to fail inside Square's and C&W's loops (shape (1, ...)
    before the loop, (None, ...) after); the traced attack has an unknown batch dimension."""
    x, y = eval_set[0][:3], eval_set[1][:3]
    single = make()(cnn, x[:1], y[:1])
    assert single.shape == x[:1].shape
    attack = make()
    attack.batch_size = 1
    assert attack(cnn, x, y).shape == x.shape
