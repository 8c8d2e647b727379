"""Explainability: SHAP and LIME attributions of Keras classifiers and RL policies, saliency
plots, and the attribution-based adversarial-input detector of Fidel, Bitton & Shabtai (2020)
with its adaptive evaluation (docs/explain.md)."""

from keras_secure.explain.adaptive import AdaptivePGD, AdaptiveSquare
from keras_secure.explain.attributions import (
    ADDITIVE_METHODS,
    METHODS,
    Attributions,
    Explainer,
    explain,
    policy_explainer,
)
from keras_secure.explain.detector import (
    AttributionDetector,
    DetectionReport,
    detection_metrics,
    threshold_at_fpr,
)
from keras_secure.explain.plots import saliency_grid, saliency_pair

__all__ = ["ADDITIVE_METHODS", "METHODS", "AdaptivePGD", "AdaptiveSquare", "AttributionDetector",
           "Attributions", "DetectionReport", "Explainer", "detection_metrics", "explain",
           "policy_explainer", "saliency_grid", "saliency_pair", "threshold_at_fpr"]
