"""FAB and FAB-T (keras_secure.attacks.fab) against closed forms, linear programs and the other
minimal-norm attacks."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog, minimize

from keras_secure import attacks as A
from keras_secure import layers as L
from keras_secure.attacks.fab import FAB, project_onto_hyperplane
from keras_secure.evaluation import check_attacks, evaluate_robustness

from conftest import VALUE_RANGE

VR = VALUE_RANGE
ORD = {"linf": np.inf, "l2": 2}


def affine(kernel, bias):
    """A Keras model computing ``x @ kernel + bias`` (``kernel`` of shape (d, k))."""
    kernel = np.asarray(kernel, np.float32)
    model = keras.Sequential([keras.Input((kernel.shape[0],)), keras.layers.Dense(kernel.shape[1])])
    model.layers[-1].set_weights([kernel, np.asarray(bias, np.float32)])
    return model


def norms(delta, norm):
    return np.linalg.norm(delta.reshape(len(delta), -1), ord=ORD[norm], axis=1)


def closed_form_distance(kernel, bias, x, norm):
    """Distance to the nearest point where another class wins, for an affine classifier
    without a box: ``min_t (z_y - z_t) / ||w_y - w_t||_q``, ``q`` the dual norm (1 for L-inf,
    2 for L2). The misclassified set is the union of the half-spaces ``z_t >= z_y``."""
    kernel = np.asarray(kernel, np.float64)
    z = x.astype(np.float64) @ kernel + bias
    y = z.argmax(1)
    q = 1 if norm == "linf" else 2
    best = np.full(len(x), np.inf)
    for t in range(kernel.shape[1]):
        dw = kernel[:, y] - kernel[:, [t]]  # (d, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = (z[np.arange(len(x)), y] - z[:, t]) / np.linalg.norm(dw, ord=q, axis=0)
        best = np.where(t == y, best, np.minimum(best, dist))
    return y, best


# ---------------------------------------------------------------------------------------------
# The projection onto a hyperplane and a box
# ---------------------------------------------------------------------------------------------
def _reference_projection(p, w, c, norm, box):
    """min ||d|| s.t. c + <w, d> = 0 and box, solved by scipy (LP for L-inf, SLSQP for L2)."""
    low, high = box
    dim = len(p)
    if norm == "linf":  # variables (d, lam): min lam, -lam <= d_i <= lam
        cost = np.r_[np.zeros(dim), 1.0]
        a_ub = np.block([[np.eye(dim), -np.ones((dim, 1))], [-np.eye(dim), -np.ones((dim, 1))]])
        res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * dim), A_eq=np.r_[w, 0.0][None],
                      b_eq=[-c], bounds=[(low - pi, high - pi) for pi in p] + [(0, None)])
        assert res.status == 0
        return res.fun
    res = minimize(lambda d: d @ d, np.zeros(dim), jac=lambda d: 2 * d, method="SLSQP",
                   constraints=[{"type": "eq", "fun": lambda d: c + w @ d, "jac": lambda d: w}],
                   bounds=[(low - pi, high - pi) for pi in p], options={"ftol": 1e-14})
    assert res.success
    return np.sqrt(res.fun)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_the_box_constrained_minimum(norm):
    """Against scipy's LP / SLSQP on random rows where the box binds (and a zero weight)."""
    rng = np.random.default_rng(1)
    dim, rows = 7, 12
    p = rng.uniform(0.0, 1.0, (rows, dim))
    w = rng.normal(size=(rows, dim))
    w[0, 3] = 0.0
    # the most <w, d> can fall / rise inside the box; c asks for 20-90% of it
    fall = (np.abs(w) * np.where(w > 0, p, 1 - p)).sum(1)
    rise = (np.abs(w) * np.where(w > 0, 1 - p, p)).sum(1)
    frac = rng.uniform(0.2, 0.9, rows)
    c = np.where(rng.random(rows) < 0.5, frac * fall, -frac * rise)
    d = project_onto_hyperplane(tf.constant(p, tf.float32), tf.constant(w, tf.float32),
                                tf.constant(c, tf.float32), norm, (0.0, 1.0)).numpy()
    np.testing.assert_allclose(c + (w * d).sum(1), 0.0, atol=2e-5)
    assert (p + d).min() >= -1e-6 and (p + d).max() <= 1 + 1e-6
    assert d[0, 3] == 0.0
    expected = np.array([_reference_projection(p[i], w[i], c[i], norm, (0.0, 1.0))
                         for i in range(rows)])
    np.testing.assert_allclose(np.linalg.norm(d, ord=ORD[norm], axis=1), expected, rtol=1e-4)


def test_projection_closed_forms_and_unreachable_hyperplane():
    p = tf.constant([[0.5, 0.5, 0.5]])
    w = tf.constant([[1.0, -2.0, 0.0]])
    c = tf.constant([0.6])
    # no box: L-inf -c sign(w) / ||w||_1, L2 -c w / ||w||^2
    np.testing.assert_allclose(project_onto_hyperplane(p, w, c, "linf").numpy(),
                               [[-0.2, 0.2, 0.0]], atol=1e-7)
    np.testing.assert_allclose(project_onto_hyperplane(p, w, c, "l2").numpy(),
                               [[-0.12, 0.24, 0.0]], atol=1e-7)
    # the unit box: the most <w, d> can fall is 0.5 + 2 * 0.5 = 1.5 < 2, so the hyperplane is
    # out of reach and the step goes to the nearest corner
    for norm in ("linf", "l2"):
        d = project_onto_hyperplane(p, w, tf.constant([2.0]), norm, (0.0, 1.0)).numpy()
        np.testing.assert_allclose(d, [[-0.5, 0.5, 0.0]], atol=1e-7)
    # c = 0: already on it
    assert not project_onto_hyperplane(p, w, tf.constant([0.0]), "l2", (0.0, 1.0)).numpy().any()


# ---------------------------------------------------------------------------------------------
# Affine classifiers: the minimal distance is known
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [1, 4], ids=["single-logit", "4-class"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_affine_model_minimal_distance(norm, classes):
    """Untargeted FAB without a box finds the closed-form minimum ``margin / ||w_y - w_t||_q``.

    Its iterates converge to about 1.0084 times the minimum on an affine model (the fixed point
    of the biased step with eta=1.05, beta=0.9: e = (0.1 - 0.9 e)(0.1 - e)); the final search
    then lands 1e-4 past the boundary. Never below the minimum, and every output fools."""
    rng = np.random.default_rng(classes)
    dim = 6
    kernel = rng.normal(size=(dim, classes))
    bias = rng.normal(size=classes) if classes > 1 else np.zeros(classes)  # with / without
    x = rng.normal(size=(30, dim)).astype(np.float32)
    model = affine(kernel, bias)
    if classes == 1:  # the contract reads one logit as the two-class logits [0, z]
        kernel, bias = np.c_[np.zeros(dim), kernel], np.r_[0.0, bias]
    y, expected = closed_form_distance(kernel, bias, x, norm)
    x_adv = FAB(norm=norm, steps=50)(model, x, y)
    labels = (x_adv @ kernel + bias).argmax(1)
    assert (labels != y).all()
    ratio = norms(x_adv - x, norm) / expected
    assert ratio.min() >= 1.0 - 1e-5 and ratio.max() <= 1.001, (ratio.min(), ratio.max())


@pytest.mark.parametrize("norm, expected", [("linf", 0.3), ("l2", np.sqrt(0.185))])
def test_box_constrained_minimum_by_hand(norm, expected):
    """z_1 - z_0 = x1 + x2 + x3 + x4 - 3 at x = (0.95, 0.95, 0.2, 0.2): it must rise by 0.7.
    Unclipped, L-inf 0.7 / 4 = 0.175 would push x1, x2 to 1.125; in [0, 1] they can give 0.05
    each, so L-inf: 0.1 + 2 lam = 0.7, lam = 0.3; L2: d = (0.05, 0.05, 0.3, 0.3), norm
    sqrt(0.185) = 0.430 (unclipped: 0.35)."""
    model = affine(np.c_[np.zeros(4), np.ones(4)], [0.0, -3.0])
    x = np.array([[0.95, 0.95, 0.2, 0.2]], np.float32)
    x_adv = FAB(norm=norm, steps=50, value_range=VR)(model, x, np.array([0]))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert x_adv.sum() - 3.0 > 0.0
    np.testing.assert_allclose(norms(x_adv - x, norm), expected, rtol=1e-3)
    if norm == "l2":
        np.testing.assert_allclose(x_adv[0], [1.0, 1.0, 0.5, 0.5], atol=1e-3)


def test_fab_t_attacks_the_runner_up_first():
    """At x = 0 the logits are (1, 0.5, 0): class 1 is the runner-up, but the boundary of
    class 2 is nearer (margin 1 over ||w_2|| = 10: 0.1, against 0.5 / 0.1 = 5 for class 1).
    Untargeted FAB and FAB-T over two targets reach class 2 at 0.1; FAB-T with one target
    reaches class 1, at 5."""
    model = affine([[0.0, 0.1, 0.0], [0.0, 0.0, 10.0]], [1.0, 0.5, 0.0])
    x, y = np.zeros((1, 2), np.float32), np.array([0])
    for targets, cls, distance in ((None, 2, 0.1), (2, 2, 0.1), (1, 1, 5.0)):
        x_adv = FAB(norm="l2", steps=30, target_classes=targets)(model, x, y)
        assert model.predict(x_adv, verbose=0).argmax(1)[0] == cls, targets
        np.testing.assert_allclose(norms(x_adv - x, "l2"), distance, rtol=1e-3)


def test_budget_keeps_points_in_the_ball_and_returns_robust_examples_unchanged():
    """Distances 0.5 and 2 to the boundary (z_1 - z_0 = 2 x_1 - 1 and - 4): with eps = 1 the
    first example is broken inside the ball, the second returned exactly as it was."""
    model = affine([[0.0, 2.0]], [0.0, 0.0])
    x = np.array([[-0.5], [-2.0]], np.float32)
    for norm in ("linf", "l2"):
        x_adv = FAB(eps=1.0, norm=norm, steps=30)(model, x, np.array([0, 0]))
        assert x_adv[0, 0] > 0.0 and abs(x_adv[0, 0] - x[0, 0]) <= 1.0
        np.testing.assert_allclose(x_adv[0, 0] - x[0, 0], 0.5, rtol=1e-3)
        assert np.array_equal(x_adv[1], x[1])


def test_misclassified_inputs_one_example_and_the_graph_entry_point():
    model = affine([[1.0, -1.0], [0.5, 0.5]], [0.0, 0.0])
    x = np.array([[1.0, 0.0], [-1.0, 0.5]], np.float32)  # classes 0 and 1
    y = np.array([1, 1])  # the first is misclassified: returned unchanged
    fab = FAB(norm="l2", steps=20)
    x_adv = fab(model, x, y)
    assert np.array_equal(x_adv[0], x[0]) and not np.array_equal(x_adv[1], x[1])
    np.testing.assert_array_equal(fab(model, x[1:], y[1:]), x_adv[1:])
    logits_fn = A.logits_function(model)
    traced = tf.function(lambda a, b: fab.perturb(logits_fn, a, b))
    np.testing.assert_allclose(traced(tf.constant(x), tf.constant(y, tf.int32)).numpy(), x_adv,
                               atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The digits CNN
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def correct_set(cnn, eval_set):
    """100 test digits the CNN classifies correctly."""
    x, y = eval_set
    clean = np.argmax(cnn.predict(x, verbose=0), 1) == y
    return x[clean][:100], y[clean][:100]


def test_unbounded_fab_l2_on_the_digits_cnn_against_deepfool_and_cw(cnn, correct_set):
    """FAB-L2 fools (almost) every correctly classified digit, with a median L2 no worse than
    1.1x DeepFool's and C&W's (measured: 0.540 against DeepFool 0.552 and C&W 0.582, i.e. 0.98x
    and 0.93x; the paper reports FAB at or below both)."""
    x, y = correct_set
    medians = {}
    for attack in (FAB(norm="l2", steps=50, value_range=VR),
                   A.DeepFool(value_range=VR),
                   A.CarliniWagnerL2(value_range=VR, learning_rate=0.1, steps=100,
                                     binary_search_steps=6, initial_const=0.1)):
        x_adv = attack(cnn, x, y)
        fooled = np.argmax(cnn.predict(x_adv, verbose=0), 1) != y
        if isinstance(attack, FAB):
            assert fooled.mean() >= 0.99, fooled.mean()
            assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
            assert np.array_equal(x_adv[~fooled], x[~fooled])
        medians[attack.name] = np.median(norms(x_adv[fooled] - x[fooled], "l2"))
    assert medians["FAB"] <= 1.1 * min(medians["DeepFool"], medians["C&W"]), medians


def test_budgeted_fab_t_and_restarts(cnn, correct_set):
    """FAB-T-Linf with eps: inside the ball and the range, each output fooling or unchanged;
    more restarts (same seed: the first run is the same) are never weaker per example."""
    x, y = correct_set[0][:40], correct_set[1][:40]
    eps = 0.08
    one = FAB(eps=eps, target_classes=3, steps=20, value_range=VR, seed=0)(cnn, x, y)
    assert norms(one - x, "linf").max() <= eps + 1e-6
    assert one.min() >= 0.0 and one.max() <= 1.0
    changed = np.abs(one - x).reshape(len(x), -1).max(1) > 0
    fooled = np.argmax(cnn.predict(one, verbose=0), 1) != y
    np.testing.assert_array_equal(changed, fooled)
    assert 0 < fooled.sum() < len(x)  # the budget binds on some examples
    # unbounded with restarts: per example never farther than one run
    base = FAB(norm="l2", steps=20, value_range=VR, seed=0)(cnn, x, y)
    more = FAB(norm="l2", steps=20, restarts=3, value_range=VR, seed=0)(cnn, x, y)
    assert (norms(more - x, "l2") <= norms(base - x, "l2")).all()
    assert (norms(more - x, "l2") < norms(base - x, "l2")).any()  # the restarts did work


def test_evaluate_robustness_with_a_budget(cnn, correct_set):
    x, y = correct_set[0][:20], correct_set[1][:20]
    fab = FAB(eps=0.1, target_classes=3, steps=10, value_range=VR, seed=0)
    apgd = A.APGD(0.1, steps=10, value_range=VR, seed=0)
    report = evaluate_robustness(cnn, x, y, [apgd, fab])
    row = report["FAB-T-Linf (eps=0.1)"]
    assert row.success_rate > 0
    assert row.threat_model == "Linf, eps=0.1" and row.eps == 0.1
    assert row.median_perturbation <= 0.1 + 1e-6 and row.p90_perturbation <= 0.1 + 1e-6
    direct = np.argmax(cnn.predict(fab(cnn, x, y), verbose=0), 1) == y
    assert row.adversarial_accuracy == pytest.approx(direct.mean())
    assert report.worst_case.adversarial_accuracy <= min(row.adversarial_accuracy,
                                                         report.results[0].adversarial_accuracy)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda: FAB(eps=0.0), "`eps` must be a number > 0"),
    (lambda: FAB(eps=2.0, value_range=VR), "`eps` must be <= the width"),
    (lambda: FAB(norm="l1"), "`norm` must be one of"),
    (lambda: FAB(steps=0), "`steps` must be an integer >= 1"),
    (lambda: FAB(steps=2.5), "`steps` must be an integer"),
    (lambda: FAB(restarts=0), "`restarts` must be an integer >= 1"),
    (lambda: FAB(target_classes=0), "`target_classes` must be an integer >= 1"),
    (lambda: FAB(target_classes=True), "`target_classes` must be an integer"),
    (lambda: FAB(alpha_max=1.5), "`alpha_max` must be a number >= 0 and <= 1"),
    (lambda: FAB(eta=0.9), "`eta` must be a number >= 1"),
    (lambda: FAB(beta=0.0), "`beta` must be a number > 0 and <= 1"),
    (lambda: FAB(beta=float("nan")), "`beta` must be finite"),
    (lambda: FAB(value_range=(1, 0)), "`value_range`"),
    (lambda: FAB(seed=0.5), "`seed` must be an integer"),
    (lambda: FAB(batch_size=0), "`batch_size`"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_invalid_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_too_many_target_classes_and_randomized_models_are_refused(cnn, correct_set):
    x, y = correct_set
    with pytest.raises(ValueError, match=r"`target_classes` must be <= .*\(9: the model has 10 "
                                         r"classes.*Received: target_classes=10"):
        FAB(target_classes=10, value_range=VR)(cnn, x[:2], y[:2])
    three = affine(np.eye(3), np.zeros(3))
    with pytest.raises(ValueError, match="Received: target_classes=3"):
        FAB(target_classes=3)(three, np.eye(3, dtype=np.float32), np.arange(3))
    with pytest.raises(ValueError, match="Received: target_classes=3"):
        FAB(target_classes=3).perturb(A.logits_function(three), tf.eye(3), tf.range(3))
    smoothed = L.RandomizedSmoothing(affine([[1.0], [-1.0]], [0.0]), sigma=0.1, seed=0)
    points = np.array([[0.7, 0.2], [0.2, 0.7]], np.float32)
    for attack in (FAB(norm="l2"), FAB(eps=0.1, target_classes=1)):
        assert attack.minimal_norm
        with pytest.raises(ValueError, match="coin flip"):
            check_attacks([attack], smoothed)
        with pytest.raises(ValueError, match="coin flip"):
            attack(smoothed, points, np.array([1, 0]))


def test_config_round_trip_and_labels():
    for attack in (FAB(), FAB(0.3, norm="linf", target_classes=9, restarts=2, steps=10,
                              alpha_max=0.2, eta=1.1, beta=0.8, value_range=VR, seed=3,
                              batch_size=16)):
        clone = FAB.from_config(attack.get_config())
        assert clone.get_config() == attack.get_config()
        assert not attack.targeted and "targeted" not in attack.get_config()
    assert FAB(0.3, target_classes=9).label == "FAB-T-Linf (eps=0.3)"
    assert FAB(norm="l2").label == "FAB-L2 (unbounded)"
    assert repr(FAB(norm="l2")).startswith("FAB(eps=None, norm='l2'")
