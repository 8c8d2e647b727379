"""keras_secure.evaluation.curves: accuracy-vs-eps curves built on evaluate_robustness."""

import json

import keras
import numpy as np
import pytest

from keras_secure import attacks as A
from keras_secure.evaluation import evaluate_robustness
from keras_secure.evaluation.curves import (RobustnessCurve, plot_robustness_curve,
                                            robustness_curve)

W = np.array([[1.0, -1.0], [-0.5, 0.5], [0.0, 0.0]], np.float32)  # 3 features, 2 classes


@pytest.fixture(scope="module")
def linear():
    """A 2-class linear logits model z = x W and data whose margins are known by hand.

    The logit margin of class y over the other is (-1)^y * 2 * (x0 - 0.5 x1) (times 1 for
    class 0); an L-inf step of eps moves it by at most eps * ||w_0 - w_1||_1 = 3 eps, so an
    example is robust at eps iff its margin exceeds 3 eps (FGSM and PGD reach that bound on a
    linear model; no value_range, so nothing is clipped).
    """
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
    model.layers[-1].set_weights([W])
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (300, 3)).astype(np.float32)
    d = 2.0 * (x[:, 0] - 0.5 * x[:, 1])            # z0 - z1, computed by hand
    keep = np.abs(np.abs(d)[:, None] - 3.0 * np.array([0.0, 0.05, 0.1, 0.2])).min(1) > 1e-3
    x, d = x[keep], d[keep]                        # no example within rounding of a boundary
    y = (d < 0).astype(np.int64)                   # correct labels ...
    y[:20] = 1 - y[:20]                            # ... except 20 misclassified clean
    margin = np.where(y == 0, d, -d)               # negative for the 20 wrong ones
    return model, x, y, margin


def test_curve_equals_the_hand_computed_robust_accuracy(linear):
    model, x, y, margin = linear
    eps = [0.05, 0.1, 0.2]
    curve = robustness_curve(model, x, y, {
        "FGSM": lambda e: A.FGSM(e),
        "PGD": lambda e: A.PGD(e, steps=10, seed=0),
    }, eps)
    expected = np.array([np.mean(margin > 3.0 * e) for e in eps])
    assert curve.names == ["FGSM", "PGD"] and curve.norm == "linf"
    np.testing.assert_array_equal(curve.eps, eps)
    np.testing.assert_allclose(curve.accuracy["FGSM"], expected, atol=0)
    np.testing.assert_allclose(curve.accuracy["PGD"], expected, atol=0)
    np.testing.assert_allclose(curve.worst_case, expected, atol=0)
    assert curve.clean_accuracy == pytest.approx(np.mean(margin > 0))
    assert curve.num_examples == len(x)
    assert all(r.diagnostics for r in curve.reports)  # masking checks ran at every eps
    quiet = robustness_curve(model, x, y, {"FGSM": lambda e: A.FGSM(e)}, eps, diagnostics=False)
    assert all(r.diagnostics is None for r in quiet.reports)
    np.testing.assert_array_equal(quiet.accuracy["FGSM"], curve.accuracy["FGSM"])
    # every point is the report's own figure at that eps
    assert [r.results[0].eps for r in curve.reports] == eps
    for i, e in enumerate(eps):
        report = evaluate_robustness(model, x, y, [A.FGSM(e)])
        assert curve.accuracy["FGSM"][i] == report.results[0].adversarial_accuracy


def test_templates_are_rebuilt_at_each_eps(linear):
    model, x, y, margin = linear
    pgd = A.PGD(0.3, steps=10, seed=0)
    curve = robustness_curve(model, x, y, [A.FGSM(0.3), pgd, A.PGD(0.3, loss="margin", seed=0)],
                             [0.05, 0.2])
    assert curve.names == ["FGSM-Linf", "PGD-Linf", "PGD-Linf #2"]
    labels = [[row.attack for row in r.results] for r in curve.reports]
    assert labels[0] == ["FGSM-Linf (eps=0.05)", "PGD-Linf (eps=0.05)", "PGD-Linf (eps=0.05) #2"]
    assert labels[1][1] == "PGD-Linf (eps=0.2)"
    assert curve.reports[1].results[1].eps == 0.2 and pgd.eps == 0.3  # template unchanged
    np.testing.assert_allclose(curve.worst_case, [np.mean(margin > 0.15), np.mean(margin > 0.6)])
    # factories and templates mixed, named by the attack they build
    mixed = robustness_curve(model, x, y, [lambda e: A.FGSM(e), A.FGSM(0.1)], [0.1])
    assert mixed.names == ["FGSM-Linf", "FGSM-Linf #2"]


def test_worst_case_is_per_example_over_the_attacks():
    """Two attacks that each fool a different half: the worst case is their union."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
    model.layers[-1].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]], np.float32)])
    x = np.array([[0.5, 0.0], [0.5, 0.0], [-0.5, 0.0], [-0.5, 0.0]], np.float32)
    y = np.array([0, 0, 1, 1])

    class Half(A.Attack):  # moves x0 across the boundary for one class only
        name = "Half"

        def __init__(self, eps, cls):
            super().__init__(eps=eps)
            self.cls = cls

        def get_config(self):
            return {"eps": self.eps, "cls": self.cls}

        def _perturb(self, logits_fn, x, y):
            import tensorflow as tf
            sign = tf.where(tf.equal(y, 0), -1.0, 1.0)[:, None]
            hit = tf.cast(tf.equal(y, self.cls), tf.float32)[:, None]
            return x + hit * sign * tf.constant([[self.eps, 0.0]])

    curve = robustness_curve(model, x, y, {"a": lambda e: Half(e, 0), "b": lambda e: Half(e, 1)},
                             [0.4, 1.0])
    np.testing.assert_array_equal(curve.accuracy["a"], [1.0, 0.5])
    np.testing.assert_array_equal(curve.accuracy["b"], [1.0, 0.5])
    np.testing.assert_array_equal(curve.worst_case, [1.0, 0.0])


def test_curve_on_a_cnn_falls_with_eps(cnn, eval_set, tmp_path):
    x, y = eval_set
    curve = robustness_curve(cnn, x[:64], y[:64], [A.FGSM(0.1, value_range=(0, 1)),
                                                    A.PGD(0.1, steps=5, value_range=(0, 1),
                                                          seed=0)], [0.05, 0.3])
    for acc in curve.accuracy.values():
        assert acc[1] < acc[0] <= curve.clean_accuracy
    assert np.all(curve.worst_case <= np.minimum(*curve.accuracy.values()))
    assert curve.accuracy["PGD-Linf"][1] < 0.1  # eps 0.3 on 8x8 digits breaks a standard CNN
    # the plot: one line per attack, the worst case, the clean line; a real PNG
    path = tmp_path / "curve.png"
    fig = curve.plot(path=str(path), title="digits")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["FGSM-Linf", "PGD-Linf", "worst case", "clean"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    # exports
    data = json.loads(json.dumps(curve.to_dict()))
    assert data["eps"] == [0.05, 0.3] and set(data["accuracy"]) == {"FGSM-Linf", "PGD-Linf"}
    table = curve.table()
    assert table.splitlines()[0].startswith("| L-inf eps") and "Worst case (%)" in table
    assert f"{100 * curve.worst_case[1]:.1f}" in table.splitlines()[3]


def test_robustness_curve_rejects(linear):
    model, x, y, _ = linear
    fgsm = {"FGSM": lambda e: A.FGSM(e)}
    with pytest.raises(ValueError, match="strictly increasing"):
        robustness_curve(model, x, y, fgsm, [0.2, 0.1])
    with pytest.raises(ValueError, match="`eps_values`"):
        robustness_curve(model, x, y, fgsm, [0.0, 0.1])
    with pytest.raises(ValueError, match="at least one budget"):
        robustness_curve(model, x, y, fgsm, [])
    with pytest.raises(ValueError, match="`eps_values` must be finite"):
        robustness_curve(model, x, y, fgsm, [0.1, float("inf")])
    with pytest.raises(TypeError, match="`eps_values`"):
        robustness_curve(model, x, y, fgsm, 0.1)
    with pytest.raises(ValueError, match="at least one attack"):
        robustness_curve(model, x, y, {}, [0.1])
    with pytest.raises(ValueError, match="asked for eps=0.2 but built"):
        robustness_curve(model, x, y, {"FGSM": lambda e: A.FGSM(0.1)}, [0.1, 0.2])
    with pytest.raises(TypeError, match="must return a keras_secure Attack"):
        robustness_curve(model, x, y, {"x": lambda e: e}, [0.1])
    with pytest.raises(TypeError, match="eps -> Attack"):
        robustness_curve(model, x, y, {"FGSM": A.FGSM(0.1)}, [0.1])
    with pytest.raises(TypeError, match="`attacks`"):
        robustness_curve(model, x, y, ["pgd"], [0.1])
    with pytest.raises(ValueError, match="same norm"):
        robustness_curve(model, x, y, [A.FGSM(0.1), A.PGD(0.1, norm="l2")], [0.1])
    with pytest.raises(ValueError, match="fixed step_size"):
        robustness_curve(model, x, y, [A.PGD(0.1, step_size=0.01)], [0.1])
    with pytest.raises(TypeError, match="RobustnessCurve"):
        plot_robustness_curve({"eps": [0.1]})
    assert isinstance(robustness_curve(model, x, y, fgsm, np.array([0.1])), RobustnessCurve)
