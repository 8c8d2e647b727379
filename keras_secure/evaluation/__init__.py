"""Robustness evaluation: accuracy under attack, per attack and in the worst case of each
threat model, the AutoAttack standard suite, gradient-masking diagnostics and robustness curves."""

from keras_secure.evaluation.curves import (
    RobustnessCurve,
    plot_robustness_curve,
    robustness_curve,
)
from keras_secure.evaluation.diagnostics import Flag
from keras_secure.evaluation.report import (
    PAPER_COLUMNS,
    AttackResult,
    RobustnessReport,
    check_attacks,
    evaluate_robustness,
    threat_model,
)
from keras_secure.evaluation.suite import standard_suite

__all__ = ["AttackResult", "Flag", "PAPER_COLUMNS", "RobustnessCurve", "RobustnessReport",
           "check_attacks", "evaluate_robustness", "plot_robustness_curve", "robustness_curve",
           "standard_suite", "threat_model"]
