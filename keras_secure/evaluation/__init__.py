"""Robustness evaluation: accuracy under attack, per attack and in the worst case."""

from keras_secure.evaluation.report import (
    PAPER_COLUMNS,
    AttackResult,
    RobustnessReport,
    evaluate_robustness,
)

__all__ = ["AttackResult", "RobustnessReport", "evaluate_robustness", "PAPER_COLUMNS"]
