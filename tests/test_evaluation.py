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
        super().__init__(eps=0.1)

    def _perturb(self, logits_fn, x, y):
        return x


def test_report_numbers_are_consistent(cnn, eval_set):
    x, y = eval_set
    fgsm = A.FGSM(0.1, value_range=VALUE_RANGE)
    pgd = A.PGD(0.1, steps=10, value_range=VALUE_RANGE, seed=0)
    report = evaluate_robustness(cnn, x, y, [Identity(), fgsm, pgd], batch_size=64)
    clean = accuracy(cnn, x, y)
    ident, f, p = report.results
    assert ident.clean_accuracy == pytest.approx(clean)
    assert ident.adversarial_accuracy == pytest.approx(clean)
    assert ident.success_rate == 0 and np.isnan(ident.mean_perturbation)
    assert f.adversarial_accuracy == pytest.approx(accuracy(cnn, fgsm(cnn, x, y), y))
    assert f.accuracy_drop == pytest.approx(f.clean_accuracy - f.adversarial_accuracy)
    assert f.success_rate == pytest.approx(f.accuracy_drop / f.clean_accuracy)
    assert f.mean_perturbation == pytest.approx(0.1, abs=1e-5)
    worst = report.worst_case
    assert worst.adversarial_accuracy <= min(r.adversarial_accuracy for r in report.results)
    assert worst.adversarial_accuracy >= 0.0 and worst.norm is None
    assert report["PGD-Linf (eps=0.1)"] is p


def test_report_exports(cnn, eval_set, tmp_path):
    x, y = eval_set
    report = evaluate_robustness(cnn, x[:50], y[:50], [A.FGSM(0.1, value_range=VALUE_RANGE),
                                                       A.FGSM(0.1, value_range=VALUE_RANGE)])
    text = str(report)
    for column in PAPER_COLUMNS:
        assert column in text
    assert "FGSM-Linf (eps=0.1) #2" in text and "Worst case" in text
    assert "Success Rate (%)" in report.table(full=True, fmt="text")
    path = tmp_path / "r.json"
    data = json.loads(report.to_json(str(path)))
    assert json.loads(path.read_text()) == data
    assert data["worst_case"]["mean_perturbation"] is None
    frame = report.to_dataframe()
    assert list(frame.index)[-1] == "Worst case" and "clean_accuracy" in frame.columns
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
