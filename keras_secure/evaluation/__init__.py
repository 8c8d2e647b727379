"""Robustness evaluation: accuracy under attack, per attack and in the worst case of each
threat model."""

from keras_secure.evaluation.report import (
    PAPER_COLUMNS,
    AttackResult,
    RobustnessReport,
    check_attacks,
    evaluate_robustness,
    threat_model,
)

__all__ = ["AttackResult", "RobustnessReport", "check_attacks", "evaluate_robustness", "PAPER_COLUMNS",
           "threat_model"]
