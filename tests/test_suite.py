"""APGD-T and the standard suite (AutoAttack's protocol), checked on models whose answers are
known in closed form."""

import keras
import numpy as np
import pytest

import keras_secure as ks
from keras_secure import attacks as A
from keras_secure.evaluation import evaluate_robustness
from keras_secure.evaluation.suite import standard_suite

from conftest import VALUE_RANGE


def linear_model(seed=0, features=6, classes=5, scale=1.0, bias=True):
    """Logits ``scale * (x W + b)`` with random W, b (b = 0 without bias)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(features, classes)).astype("float32")
    b = rng.normal(size=classes).astype("float32") if bias else np.zeros(classes, "float32")
    model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(classes)])
    model.layers[0].set_weights([scale * w, scale * b])
    return model, w, b


def linf_distances(x, y, w, b):
    """Per example and class t != y: the L-inf distance to the half-space z_t >= z_y,
    (z_y - z_t) / ||w_y - w_t||_1 (inf for t = y). Misclassification needs one such crossing,
    so the minimal L-inf distance to the decision boundary is the row minimum."""
    z = x @ w + b
    diff = np.abs(w[:, y].T[:, None, :] - w.T[None, :, :]).sum(axis=2)  # (n, classes)
    margins = z[np.arange(len(x)), y][:, None] - z
    with np.errstate(divide="ignore", invalid="ignore"):
        d = margins / diff
    d[np.arange(len(x)), y] = np.inf
    return d


def predicted(model, x):
    return ks.Classifier(model).predict_labels(x)


def boundary_at(model, w, x, distance=0.5):
    """Rescale each example (a model without bias: margins scale with x) so that its minimal
    L-inf distance to the decision boundary is exactly ``distance``."""
    y = predicted(model, x)
    d = linf_distances(x, y, w, np.zeros(w.shape[1], "float32"))
    return (x * (distance / d.min(axis=1))[:, None]).astype("float32"), y, d


def test_apgdt_reaches_the_closed_form_boundary_and_no_further():
    model, w, _ = linear_model(bias=False)
    x, y, _ = boundary_at(model, w, np.random.default_rng(1).normal(size=(60, 6)))
    np.testing.assert_allclose(linf_distances(x, y, w, 0 * w[0]).min(axis=1), 0.5, rtol=1e-4)
    for eps, should_break in ((0.515, True), (0.485, False)):
        x_adv = A.APGDT(eps=eps, target_classes=4, steps=100, seed=0)(model, x, y)
        assert np.abs(x_adv - x).max() <= eps + 4 * np.spacing(np.abs(x).max())
        broken = predicted(model, x_adv) != y
        if should_break:
            assert broken.all()
        else:
            assert not broken.any()  # impossible inside the closed-form distance


def test_apgdt_attacks_the_top_ranked_targets_only():
    model, w, _ = linear_model(seed=3, bias=False)
    x, y, d = boundary_at(model, w, np.random.default_rng(4).normal(size=(3000, 6)))
    z = x @ w
    runner_up = np.argmax(np.where(np.eye(5, dtype=bool)[y], -np.inf, z), axis=1)
    ratio = d[np.arange(len(x)), runner_up] / d.min(axis=1)  # scale-invariant
    # the nearest boundary is not the runner-up class's, which lies far beyond it
    chosen = np.flatnonzero(ratio > 1.5)[:30]
    assert chosen.size >= 10
    x, y = x[chosen], y[chosen]
    only_runner_up = A.APGDT(eps=0.55, target_classes=1, steps=100, seed=0)(model, x, y)
    all_targets = A.APGDT(eps=0.55, target_classes=4, steps=100, seed=0)(model, x, y)
    assert (predicted(model, only_runner_up) == y).all()
    assert (predicted(model, all_targets) != y).all()


def test_apgdt_is_invariant_to_rescaled_logits():
    """The targeted DLR loss is scale-invariant, so logits x 1000 (defensive distillation's
    signature) are attacked exactly as well."""
    model, _, _ = linear_model(seed=5)
    scaled, _, _ = linear_model(seed=5, scale=1000.0)
    x = np.random.default_rng(6).normal(size=(200, 6)).astype("float32")
    y = predicted(model, x)
    a = A.APGDT(eps=0.3, target_classes=4, steps=50, seed=0)(model, x, y)
    b = A.APGDT(eps=0.3, target_classes=4, steps=50, seed=0)(scaled, x, y)
    fooled_a = predicted(model, a) != y
    fooled_b = predicted(scaled, b) != y
    assert fooled_a.mean() > 0.2
    assert abs(fooled_a.mean() - fooled_b.mean()) <= 0.02


def test_apgdt_arguments():
    model, _, _ = linear_model(classes=3, seed=0)
    x = np.zeros((2, 6), "float32")
    with pytest.raises(ValueError, match="at least 4 classes"):
        A.APGDT(eps=0.1)(model, x)
    model, _, _ = linear_model(classes=5)
    with pytest.raises(ValueError, match="target_classes"):
        A.APGDT(eps=0.1, target_classes=5)(model, x)
    with pytest.raises(ValueError, match="target_classes"):
        A.APGDT(eps=0.1, target_classes=0)
    attack = A.APGDT(eps=0.1, target_classes=3, steps=7, seed=1)
    again = A.APGDT.from_config(attack.get_config())
    assert again.get_config() == attack.get_config()
    assert attack.label == "APGD-T-Linf (eps=0.1)"
    assert isinstance(A.get("apgd-t", eps=0.1), A.APGDT)


def test_standard_suite_contents():
    attacks, notes = standard_suite(0.3, num_classes=10)
    assert [type(a).__name__ for a in attacks] == ["APGD", "APGDT", "FAB", "Square"]
    assert attacks[1].target_classes == 9 and attacks[2].target_classes == 9
    assert attacks[3].queries == 5000 and attacks[3].p_init == 0.8
    assert all(a.steps == 100 for a in attacks[:3]) and not notes
    attacks, notes = standard_suite(0.3, num_classes=3)
    assert [type(a).__name__ for a in attacks] == ["APGD", "FAB", "Square"]
    assert attacks[1].target_classes == 2 and "4 classes" in notes[0]
    attacks, notes = standard_suite(1.0, norm="l2", num_classes=10)
    assert "Square" not in [type(a).__name__ for a in attacks] and "L-inf only" in notes[0]
    attacks, _ = standard_suite(0.3, num_classes=10, version="rand")
    assert [(a.loss, a.eot_samples) for a in attacks] == [("ce", 20), ("dlr", 20)]


def test_suite_protocol_is_cumulative_and_never_above_any_of_its_attacks(cnn, eval_set):
    x, y = eval_set[0][:20], eval_set[1][:20]
    eps = 0.15
    report = evaluate_robustness(cnn, x, y, suite="standard", eps=eps, value_range=VALUE_RANGE,
                                 diagnostics=False)
    rows = report.results
    assert [r.attack for r in rows] == [
        "APGD-CE-Linf (eps=0.15)", "+ APGD-T-Linf (eps=0.15)", "+ FAB-T-Linf (eps=0.15)",
        "+ Square-Linf (eps=0.15)"]
    accuracies = [r.adversarial_accuracy for r in rows]
    assert all(r.cumulative for r in rows)
    assert accuracies == sorted(accuracies, reverse=True)
    assert report.worst_case.adversarial_accuracy == pytest.approx(accuracies[-1])
    assert report.suite["version"] == "standard"
    attacks, _ = standard_suite(eps, num_classes=10, value_range=VALUE_RANGE, seed=0)
    for attack in attacks:
        alone = evaluate_robustness(cnn, x, y, [attack], diagnostics=False)
        assert accuracies[-1] <= alone.results[0].adversarial_accuracy


def test_suite_arguments(cnn, eval_set):
    x, y = eval_set[0][:5], eval_set[1][:5]
    pgd = A.PGD(0.1, value_range=VALUE_RANGE)
    with pytest.raises(ValueError, match="either `attacks` or `suite`"):
        evaluate_robustness(cnn, x, y, [pgd], suite="standard", eps=0.1, value_range=(0, 1))
    with pytest.raises(ValueError, match="`eps` is required"):
        evaluate_robustness(cnn, x, y, suite="standard", value_range=(0, 1))
    with pytest.raises(ValueError, match="`value_range` is required"):
        evaluate_robustness(cnn, x, y, suite="standard", eps=0.1)
    with pytest.raises(ValueError, match="suite"):
        evaluate_robustness(cnn, x, y, suite="autoattack", eps=0.1, value_range=(0, 1))
    with pytest.raises(ValueError, match="`eps` is a setting of `suite`"):
        evaluate_robustness(cnn, x, y, [pgd], eps=0.1)


def test_randomized_models_get_the_rand_version(cnn, eval_set, monkeypatch):
    from keras_secure.evaluation import suite

    monkeypatch.setattr(suite, "STANDARD_STEPS", 4)  # the version is what is checked here
    x, y = eval_set[0][:4], eval_set[1][:4]
    smoothed = keras.Sequential([keras.Input((8, 8, 1)),
                                 ks.layers.RandomizedSmoothing(cnn, sigma=0.05, num_samples=4,
                                                               seed=0)])
    report = evaluate_robustness(smoothed, x, y, suite="standard", eps=0.05,
                                 value_range=VALUE_RANGE, diagnostics=False)
    assert report.suite["version"] == "rand"
    assert "RandomizedSmoothing" in report.suite["notes"][0]
    assert [r.attack for r in report.results] == ["APGD-CE-Linf (eps=0.05)",
                                                  "+ APGD-DLR-Linf (eps=0.05)"]


def test_transfer_attack_uses_only_the_surrogate(cnn, eval_set):
    x, y = eval_set[0][:60], eval_set[1][:60]
    pgd = A.PGD(0.1, steps=10, value_range=VALUE_RANGE, seed=0)
    transfer = A.Transfer(cnn, pgd)
    assert transfer.label == "Transfer[PGD-Linf (eps=0.1)]" and not transfer.uses_gradients
    # the examples are the surrogate's: attacking any model gives the same inputs
    other = ks.models.small_cnn(seed=1)
    np.testing.assert_allclose(transfer(other, x, y),
                               A.PGD(0.1, steps=10, value_range=VALUE_RANGE, seed=0)(cnn, x, y),
                               atol=1e-6)
    report = evaluate_robustness(other, x, y, [transfer], diagnostics=False)
    assert report.results[0].norm == "linf" and report.results[0].eps == 0.1
    with pytest.raises(ValueError, match="surrogate"):
        transfer(keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                   keras.layers.Dense(3)]), x, np.zeros(60, int))
    with pytest.raises(TypeError, match="attack"):
        A.Transfer(cnn, "pgd")
    with pytest.raises(ValueError, match="untargeted"):
        A.Transfer(cnn, A.PGD(0.1, targeted=True))


def test_cumulative_rows_keep_every_example_broken_so_far(cnn, eval_set, tmp_path):
    """A cumulative row's saved examples and predictions give exactly its accuracy."""
    x, y = eval_set[0][:20], eval_set[1][:20]
    report = evaluate_robustness(cnn, x, y, suite="standard", eps=0.15,
                                 value_range=VALUE_RANGE, diagnostics=False,
                                 keep_adversarial=True)
    saved = np.load(report.save_adversarial(str(tmp_path / "adv.npz")))
    for i, row in enumerate(report.results):
        correct = (saved["clean_pred"] == y) & (saved[f"pred_{i}"] == y)
        assert correct.mean() == pytest.approx(row.adversarial_accuracy)
        assert np.abs(saved[f"x_adv_{i}"] - x).max() <= 0.15 + 1e-6
