"""The robustness report."""

import json

import numpy as np
import pytest

from keras_secure import attacks as A
from keras_secure.attacks.base import Attack
from keras_secure.evaluation import PAPER_COLUMNS, evaluate_robustness

from conftest import VALUE_RANGE, accuracy


class Identity(Attack):
    """An 'attack' that returns its input: accuracy under it must equal clean accuracy."""

    name = "Identity"

    def __init__(self):
        super().__init__(eps=0.1, value_range=VALUE_RANGE)

    def _perturb(self, logits_fn, x, y):
        return x


def test_report_numbers_are_consistent(cnn, eval_set):
    x, y = eval_set
    fgsm = A.FGSM(0.1, value_range=VALUE_RANGE)
    pgd = A.PGD(0.1, steps=10, value_range=VALUE_RANGE, seed=0)
    report = evaluate_robustness(cnn, x, y, [Identity(), fgsm, pgd], batch_size=64,
                                 keep_adversarial=True)
    clean = accuracy(cnn, x, y)
    ident, f, p = report.results
    assert ident.clean_accuracy == pytest.approx(clean)
    assert ident.adversarial_accuracy == pytest.approx(clean)
    assert ident.success_rate == 0 and np.isnan(ident.mean_perturbation)
    assert f.adversarial_accuracy == pytest.approx(accuracy(cnn, fgsm(cnn, x, y), y))
    assert f.accuracy_drop == pytest.approx(f.clean_accuracy - f.adversarial_accuracy)
    assert f.success_rate == pytest.approx(f.accuracy_drop / f.clean_accuracy)
    assert f.mean_perturbation == pytest.approx(0.1, abs=1e-5)
    # The worst case, recomputed per example: clean correct and correct under every attack of
    # the threat model (all three are L-inf 0.1), from the kept adversarial examples. FGSM is
    # deterministic: its examples are those of a direct call; PGD's stay in the ball.
    np.testing.assert_array_equal(report.adversarial["FGSM-Linf (eps=0.1)"], fgsm(cnn, x, y))
    x_pgd = report.adversarial["PGD-Linf (eps=0.1)"]
    assert np.abs(x_pgd - x).max() <= 0.1 + 1e-6
    assert p.adversarial_accuracy == pytest.approx(accuracy(cnn, x_pgd, y))
    robust = predictions(cnn, x) == y
    for x_adv in report.adversarial.values():
        robust &= predictions(cnn, x_adv) == y
    worst = report.worst_case
    assert worst is report.worst_case_for("linf", 0.1)
    assert worst.attack == "Worst case (Linf, eps=0.1)" and worst.eps == 0.1
    assert worst.adversarial_accuracy == pytest.approx(robust.mean())
    assert report["PGD-Linf (eps=0.1)"] is p


def predictions(model, x):
    return np.argmax(model.predict(x, verbose=0), axis=1)


def test_worst_case_is_per_threat_model_and_unbounded_attacks_stay_out(cnn, eval_set):
    x, y = eval_set[0][:60], eval_set[1][:60]
    linf = [A.FGSM(0.1, value_range=VALUE_RANGE), A.PGD(0.1, steps=5, value_range=VALUE_RANGE,
                                                         seed=0)]
    l2 = [A.PGD(1.0, norm="l2", steps=5, value_range=VALUE_RANGE, seed=0)]
    unbounded = [A.DeepFool(value_range=VALUE_RANGE)]
    report = evaluate_robustness(cnn, x, y, linf + l2 + unbounded, keep_adversarial=True)
    assert [r.threat_model for r in report.worst_cases] == ["Linf, eps=0.1", "L2, eps=1"]
    clean = predictions(cnn, x) == y
    members = {"linf": [a.label for a in linf], "l2": [a.label for a in l2]}
    for norm, eps in (("linf", 0.1), ("l2", 1.0)):
        robust = clean.copy()
        for label in members[norm]:  # the examples each attack of the threat model made
            robust &= predictions(cnn, report.adversarial[label]) == y
        assert report.worst_case_for(norm, eps).adversarial_accuracy == pytest.approx(
            robust.mean())
    deepfool = report.results[-1]
    assert deepfool.threat_model == "L2, unbounded" and deepfool.eps is None
    # an unbounded minimal-norm attack reports the norms it needed
    assert deepfool.median_perturbation > 0 and deepfool.p90_perturbation >= \
        deepfool.median_perturbation
    with pytest.raises(ValueError, match="2 worst cases"):
        report.worst_case
    with pytest.raises(KeyError, match="Linf, eps=0.3"):
        report.worst_case_for("linf", 0.3)


def test_report_exports(cnn, eval_set, tmp_path):
    x, y = eval_set
    report = evaluate_robustness(cnn, x[:50], y[:50], [A.FGSM(0.1, value_range=VALUE_RANGE),
                                                       A.FGSM(0.1, value_range=VALUE_RANGE)])
    text = str(report)
    for column in PAPER_COLUMNS:
        assert column in text
    assert "FGSM-Linf (eps=0.1) #2" in text and "Worst case (Linf, eps=0.1)" in text
    assert "Success Rate (%)" in report.table(full=True, fmt="text")
    path = tmp_path / "r.json"
    data = json.loads(report.to_json(str(path)))
    assert json.loads(path.read_text()) == data
    assert data["worst_cases"][0]["mean_perturbation"] is None
    assert data["classifier"]["kind"] == "logits" and data["classifier"]["adaptive_path"] == []
    frame = report.to_dataframe()
    assert list(frame.index)[-1] == "Worst case (Linf, eps=0.1)"
    assert "clean_accuracy" in frame.columns
    with pytest.raises(ValueError, match="`fmt`"):
        report.table(fmt="html")
    with pytest.raises(KeyError):
        report["nope"]


def test_report_rejects_bad_input(cnn, eval_set):
    x, y = eval_set
    with pytest.raises(ValueError, match="at least one attack"):
        evaluate_robustness(cnn, x, y, [])
    with pytest.raises(TypeError, match="Attack objects"):
        evaluate_robustness(cnn, x, y, ["pgd"])
    with pytest.raises(ValueError, match="untargeted"):
        evaluate_robustness(cnn, x, y, [A.PGD(0.1, targeted=True)])
    with pytest.raises(ValueError, match="same number of examples"):
        evaluate_robustness(cnn, x, y[:-1], [A.FGSM(0.1)])
    with pytest.raises(ValueError, match="`batch_size`"):
        evaluate_robustness(cnn, x, y, [A.FGSM(0.1)], batch_size=0)


def test_per_class_and_saved_examples_match_the_rows(cnn, eval_set, tmp_path):
    x, y = eval_set
    fgsm, pgd = A.FGSM(0.1, value_range=VALUE_RANGE), A.PGD(0.1, steps=5, value_range=VALUE_RANGE,
                                                             seed=0)
    report = evaluate_robustness(cnn, x, y, [fgsm, pgd], keep_adversarial=True)
    per_class = report.per_class()
    assert [r["class"] for r in per_class] == sorted(set(y.tolist()))
    assert sum(r["num_examples"] for r in per_class) == len(y)
    for row in report.rows:  # the class-weighted mean of per-class accuracies is the row's
        weighted = sum(r["num_examples"] * r["robust_accuracy"][row.attack]
                       for r in per_class) / len(y)
        assert weighted == pytest.approx(row.adversarial_accuracy)
    # recomputed by hand for one class from the saved examples
    path = report.save_adversarial(str(tmp_path / "adv"))
    saved = np.load(path)
    assert list(saved["attacks"]) == [r.attack for r in report.results]
    np.testing.assert_array_equal(saved["y"], y)
    pred = np.argmax(cnn.predict(saved["x_adv_1"], verbose=0), axis=1)
    np.testing.assert_array_equal(saved["pred_1"], pred)
    assert np.abs(saved["x_adv_1"] - x).max() <= 0.1 + 1e-6
    c = per_class[0]["class"]
    members = y == c
    by_hand = ((saved["clean_pred"] == y) & (saved["pred_1"] == y))[members].mean()
    assert per_class[0]["robust_accuracy"][report.results[1].attack] == pytest.approx(by_hand)
    assert "Class" in report.per_class_table()
    plain = evaluate_robustness(cnn, x, y, [fgsm])
    assert plain.adversarial == {} and plain.inputs is None
    with pytest.raises(ValueError, match="keep_adversarial"):
        plain.save_adversarial(str(tmp_path / "none"))
    with pytest.raises(TypeError, match="keep_adversarial"):
        evaluate_robustness(cnn, x, y, [fgsm], keep_adversarial="yes")
