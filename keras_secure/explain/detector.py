"""The attribution-based adversarial-input detector (Fidel, Bitton & Shabtai 2020) and its
metrics.

An :class:`AttributionDetector` turns each input into a signature - the attributions of its
predicted class, by default over a hidden layer as in the paper - and trains a scikit-learn
classifier to tell clean signatures from adversarial ones. The score threshold is set at a
chosen false-positive rate on clean examples held out from training.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib

import numpy as np
import tensorflow as tf

from keras_secure.classifier import as_classifier, labels_from_logits
from keras_secure.explain.attributions import Explainer
from keras_secure.validation import check_number

_EXACT_IN_GRAPH = ("deep", "permutation", "input_x_gradient")


# --------------------------------------------------------------------------------------------
# Metrics (pure functions on scores: hand-checkable)
# --------------------------------------------------------------------------------------------
def threshold_at_fpr(clean_scores, fpr: float) -> float:
    """The smallest threshold ``t`` such that at most ``floor(fpr * m)`` of the ``m`` clean
    scores are ``> t`` (inputs scoring above ``t`` are flagged).

    Args:
        clean_scores: scores of clean inputs, shape ``(m,)``, ``m >= 1``, finite.
        fpr: target false-positive rate in [0, 1).

    Returns:
        The threshold, one of the clean scores.

    Raises:
        ValueError: for an empty or non-finite score array or ``fpr`` out of range.

    Example:
        >>> threshold_at_fpr(np.arange(100.0), 0.05)    # 94.0: scores 95..99 are flagged
    """
    fpr = check_number("fpr", fpr, low=0.0, high=1.0, high_inclusive=False)
    s = _scores(clean_scores, "clean_scores")
    allowed = int(math.floor(fpr * s.size + 1e-9))
    return float(np.sort(s)[s.size - 1 - allowed])


def _scores(values, name):
    s = np.asarray(values, np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError(f"`{name}` is empty.")
    if not np.isfinite(s).all():
        raise ValueError(f"`{name}` must be finite. Received: {int((~np.isfinite(s)).sum())} "
                         "non-finite values")
    return s


def detection_metrics(clean_scores, adversarial_scores, threshold: float) -> dict:
    """Detection metrics from scores (higher = more likely adversarial).

    Args:
        clean_scores: ``(m,)`` scores of clean inputs (negatives).
        adversarial_scores: ``(p,)`` scores of adversarial inputs (positives).
        threshold: inputs with a score ``> threshold`` are flagged.

    Returns:
        dict with ``accuracy`` (correct decisions over all ``m + p`` inputs at the threshold),
        ``roc_auc`` (scikit-learn's ``roc_auc_score``), ``tpr_at_5_fpr`` (the largest
        true-positive rate of the ROC curve at a false-positive rate <= 0.05), ``tpr`` and
        ``fpr`` at ``threshold``, ``n_clean``, ``n_adversarial``.

    Raises:
        ValueError: for empty or non-finite scores.

    Example:
        >>> detection_metrics([0.1, 0.2], [0.8, 0.9], threshold=0.5)["roc_auc"]   # 1.0
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    clean = _scores(clean_scores, "clean_scores")
    adv = _scores(adversarial_scores, "adversarial_scores")
    threshold = check_number("threshold", threshold)
    labels = np.concatenate([np.zeros(clean.size), np.ones(adv.size)])
    scores = np.concatenate([clean, adv])
    fprs, tprs, _ = roc_curve(labels, scores)
    tpr = float(np.mean(adv > threshold))
    fpr = float(np.mean(clean > threshold))
    return {
        "accuracy": float(((clean <= threshold).sum() + (adv > threshold).sum()) / scores.size),
        "roc_auc": float(roc_auc_score(labels, scores)),
        "tpr_at_5_fpr": float(tprs[fprs <= 0.05 + 1e-12].max()),
        "tpr": tpr,
        "fpr": fpr,
        "n_clean": int(clean.size),
        "n_adversarial": int(adv.size),
    }


@dataclasses.dataclass
class DetectionReport:
    """How well a detector separates clean from adversarial inputs, and, for an attack, what
    the attack achieves against the model and the detector together.

    Attributes:
        name: what was detected (the attack's label, or a caller's name).
        accuracy, roc_auc, tpr_at_5_fpr, tpr, fpr: see :func:`detection_metrics` (None when
            the attack produced no successful adversarial example to detect).
        threshold: the detector's threshold (decision-function units).
        n_clean, n_adversarial: numbers of clean and (successful) adversarial inputs scored.
        seconds_per_input: wall-clock detection time per input (attribution + classifier).
        classifier_accuracy: accuracy of the model on the attacked inputs (attacks only).
        attack_success_rate: fraction of the correctly classified examples that the attack
            made misclassified (attacks only).
        evasion_rate: fraction of all examples misclassified AND not flagged: the attack's real
            success against model plus detector (attacks only).
        adaptive: True for an attack that knows the detector.
    """

    name: str
    accuracy: float | None
    roc_auc: float | None
    tpr_at_5_fpr: float | None
    tpr: float | None
    fpr: float | None
    threshold: float
    n_clean: int
    n_adversarial: int
    seconds_per_input: float
    classifier_accuracy: float | None = None
    attack_success_rate: float | None = None
    evasion_rate: float | None = None
    adaptive: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _fingerprint(model) -> int:
    """CRC32 of the model's weights (shapes and bytes): detects a detector applied to a model
    whose weights are not the ones it was fitted on."""
    crc = 0
    for w in getattr(model, "weights", []):
        value = np.ascontiguousarray(np.asarray(w))
        crc = zlib.crc32(str(value.shape).encode(), crc)
        crc = zlib.crc32(value.tobytes(), crc)
    return crc


def _default_estimator(seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(
        C=1.0, max_iter=5000, class_weight="balanced", random_state=seed))


class AttributionDetector:
    """Detects adversarial inputs from their attributions (Fidel, Bitton & Shabtai 2020).

    The signature of an input is the attribution of its predicted class computed by an
    :class:`~keras_secure.explain.Explainer` (Fidel et al. use shap's DeepExplainer on a hidden
    layer; any method works, LIME included), flattened. A scikit-learn classifier (by default
    a standardised, class-balanced logistic regression) is trained on signatures of clean
    inputs (label 0) and of successful adversarial inputs of chosen attacks (label 1). Its
    decision function is the detection score; the threshold flags at most ``fpr`` of clean
    inputs held out from training (``calibration_fraction`` of the clean inputs given to
    :meth:`fit`).

    Args:
        explainer: the :class:`~keras_secure.explain.Explainer` of the protected model.
        estimator: an unfitted scikit-learn classifier with ``decision_function`` or
            ``predict_proba``, or None for ``StandardScaler + LogisticRegression``. Defaults to
            None.
        classes: ``"predicted"`` (the paper's signature) or ``"all"`` (every class's
            attributions, concatenated). Defaults to ``"predicted"``.
        fpr: false-positive rate on held-out clean inputs the threshold is set at, in
            (0, 1). Defaults to 0.05.
        calibration_fraction: fraction of the clean inputs held out for the threshold, in
            (0, 1). Defaults to 0.3.
        min_examples: the fewest clean training, clean calibration and adversarial examples
            :meth:`fit` accepts, >= 2. Defaults to 10.
        seed: seed of the clean split and of the estimator. Defaults to 0.

    Raises:
        TypeError / ValueError: for arguments of the wrong type or out of range.

    Example:
        >>> explainer = Explainer(model, x_train[:50], "deep", layer=model.layers[-2].name)
        >>> detector = AttributionDetector(explainer).fit(
        ...     x_train[:400], y_train[:400], attacks=[fgsm, pgd])
        >>> detector.evaluate_attack(x_test, y_test, cw).roc_auc

    References:
        Fidel, Bitton & Shabtai (2020), "When Explainability Meets Adversarial Learning:
        Detecting Adversarial Examples using SHAP Signatures", IJCNN.
        Carlini & Wagner (2017), "Adversarial Examples Are Not Easily Detected: Bypassing Ten
        Detection Methods", AISec (why :mod:`keras_secure.explain.adaptive` exists).

    Limitations:
        A detector evaluated only on attacks that ignore it says little: an attacker who knows
        it can optimise against it (:class:`~keras_secure.explain.AdaptivePGD` through the
        in-graph attribution, :class:`~keras_secure.explain.AdaptiveSquare` with queries only).
        Report those figures next to the non-adaptive ones.
    """

    def __init__(self, explainer: Explainer, *, estimator=None, classes: str = "predicted",
                 fpr: float = 0.05, calibration_fraction: float = 0.3, min_examples: int = 10,
                 seed: int = 0):
        if not isinstance(explainer, Explainer):
            raise TypeError("`explainer` must be a keras_secure.explain.Explainer. "
                            f"Received: explainer of type {type(explainer).__name__}")
        if classes not in ("predicted", "all"):
            raise ValueError("`classes` must be 'predicted' or 'all'. "
                             f"Received: classes={classes!r}")
        self.explainer = explainer
        self.classes = classes
        self.fpr = check_number("fpr", fpr, low=0.0, high=1.0, low_inclusive=False,
                                high_inclusive=False)
        self.calibration_fraction = check_number(
            "calibration_fraction", calibration_fraction, low=0.0, high=1.0,
            low_inclusive=False, high_inclusive=False)
        self.min_examples = check_number("min_examples", min_examples, low=2, integer=True)
        self.seed = check_number("seed", seed, low=0, integer=True)
        if estimator is not None and not (hasattr(estimator, "fit") and (
                hasattr(estimator, "decision_function") or hasattr(estimator, "predict_proba"))):
            raise TypeError("`estimator` must be a scikit-learn classifier with fit and "
                            "decision_function or predict_proba. Received: "
                            f"{type(estimator).__name__}")
        self.estimator = _default_estimator(self.seed) if estimator is None else estimator
        self.threshold = None
        self.training_summary = None
        self._fingerprint = None
        self._linear = None

    # -- the protected model --------------------------------------------------------------------
    @property
    def classifier(self):
        return self.explainer.classifier

    @property
    def model(self):
        return self.explainer.model

    def _check_model(self, model=None):
        if model is not None:
            other = as_classifier(model)
            if other is not self.classifier and other.model is not self.model:
                raise ValueError(
                    f"The detector was fitted on model {getattr(self.model, 'name', '?')!r} and "
                    f"cannot score inputs of another model ({getattr(other.model, 'name', '?')!r}"
                    "): its signatures are that model's attributions. Fit a detector on the "
                    "model you deploy.")
        if self._fingerprint is not None and _fingerprint(self.model) != self._fingerprint:
            raise ValueError(
                "The model's weights changed since the detector was fitted (e.g. it was trained "
                "further): the detector no longer describes it. Fit it again.")

    def _check_fitted(self):
        if self.threshold is None:
            raise RuntimeError("The detector is not fitted: call fit(...) first.")

    # -- signatures and scores ------------------------------------------------------------------
    def signatures(self, x) -> np.ndarray:
        """Signatures ``(n, c * d)`` of inputs: their flattened attributions."""
        a = self.explainer.explain(x, self.classes)
        return a.values.reshape(a.values.shape[0], -1)

    def _raw(self, features):
        if hasattr(self.estimator, "decision_function"):
            return np.asarray(self.estimator.decision_function(features), np.float64)
        return np.asarray(self.estimator.predict_proba(features)[:, 1], np.float64)

    def decision_function(self, x, *, model=None) -> np.ndarray:
        """Detection scores ``(n,)`` (the estimator's decision function, or its probability of
        "adversarial"); inputs scoring above :attr:`threshold` are flagged.

        Args:
            x: inputs ``(n, *input_shape)`` of the protected model.
            model: optionally the model the inputs are meant for; a model other than the one
                the detector was fitted on is refused. Defaults to None.

        Raises:
            RuntimeError: if not fitted.
            ValueError: for another model, a model whose weights changed since ``fit``, or
                inputs of the wrong shape / with NaN.
        """
        self._check_fitted()
        self._check_model(model)
        return self._raw(self.signatures(x))

    def predict(self, x, *, model=None) -> np.ndarray:
        """Boolean ``(n,)``: True where the input is flagged as adversarial."""
        return self.decision_function(x, model=model) > self.threshold

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, x, y=None, *, attacks=(), x_adversarial=None, verbose: int = 0):
        """Fit on clean inputs and on adversarial inputs of chosen attacks.

        Each attack runs on ``(x, y)`` against the protected model; only successful adversarial
        inputs (clean prediction correct, adversarial prediction wrong) are used. A fraction
        ``calibration_fraction`` of the clean inputs is held out to set the threshold.

        Args:
            x: clean inputs ``(n, *input_shape)``.
            y: their labels, or None to take the model's predictions as labels (then an
                adversarial input is one whose prediction changed). Defaults to None.
            attacks: keras_secure attacks (e.g. ``[FGSM(...), PGD(...)]``). Defaults to ().
            x_adversarial: further adversarial inputs ``(p, *input_shape)`` made elsewhere,
                all used as positives, or None. Defaults to None.
            verbose: 1 prints a line per attack. Defaults to 0.

        Returns:
            ``self``.

        Raises:
            ValueError: for bad inputs or labels, no attack and no ``x_adversarial``, or fewer
                than ``min_examples`` clean training, clean calibration or adversarial
                examples (the message gives the counts).
        """
        clf = self.classifier
        x, y = clf.check(x, y)
        x = x.astype(np.float32)
        attacks = list(attacks)
        if not attacks and x_adversarial is None:
            raise ValueError("`attacks` or `x_adversarial` must give adversarial examples to "
                             "fit on. Received: attacks=() and x_adversarial=None")
        predicted = clf.predict_labels(x)
        y = predicted if y is None else y
        positives, per_attack = [], {}
        for attack in attacks:
            x_adv = np.asarray(attack(clf, x, y), np.float32)
            ok = (predicted == y) & (clf.predict_labels(x_adv) != y)
            positives.append(x_adv[ok])
            per_attack[getattr(attack, "label", type(attack).__name__)] = int(ok.sum())
            if verbose:
                print(f"{per_attack}", flush=True)
        if x_adversarial is not None:
            extra = clf.check_inputs(x_adversarial, "x_adversarial").astype(np.float32)
            positives.append(extra)
            per_attack["x_adversarial"] = int(extra.shape[0])
        x_pos = np.concatenate(positives) if positives else np.zeros((0, *x.shape[1:]))
        order = np.random.default_rng(self.seed).permutation(x.shape[0])
        n_cal = int(round(self.calibration_fraction * x.shape[0]))
        cal, train = order[:n_cal], order[n_cal:]
        counts = {"clean_train": int(train.size), "clean_calibration": int(cal.size),
                  "adversarial": int(x_pos.shape[0])}
        short = {k: v for k, v in counts.items() if v < self.min_examples}
        if short:
            raise ValueError(
                f"Too few examples to fit the detector: each of clean_train, clean_calibration "
                f"and adversarial needs at least min_examples={self.min_examples}. Received: "
                f"{counts} (successful adversarial examples per attack: {per_attack}). Give "
                "more clean inputs, stronger attacks, or a lower min_examples.")
        features = self.signatures(np.concatenate([x[train], x_pos]))
        labels = np.concatenate([np.zeros(train.size), np.ones(x_pos.shape[0])])
        self.estimator.fit(features, labels)
        self.threshold = threshold_at_fpr(self._raw(self.signatures(x[cal])), self.fpr)
        self._fingerprint = _fingerprint(self.model)
        self._linear = self._linear_form()
        self.training_summary = {**counts, "per_attack": per_attack,
                                 "signature_size": int(features.shape[1])}
        if self.in_graph_exact:
            self._check_in_graph(x[cal][:16])
        return self

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, x_clean, x_adversarial, *, name: str = "adversarial",
                 model=None) -> DetectionReport:
        """Detection metrics on clean and adversarial inputs (both at least one example).

        Args:
            x_clean: clean inputs ``(m, *input_shape)`` (not those of :meth:`fit`).
            x_adversarial: adversarial inputs ``(p, *input_shape)``.
            name: the report's name. Defaults to ``"adversarial"``.
            model: see :meth:`decision_function`. Defaults to None.

        Returns:
            :class:`DetectionReport` (``seconds_per_input`` over all ``m + p`` inputs).
        """
        self._check_fitted()
        self._check_model(model)
        x_clean = self.classifier.check_inputs(x_clean, "x_clean")
        x_adversarial = self.classifier.check_inputs(x_adversarial, "x_adversarial")
        start = time.perf_counter()
        clean = self._raw(self.signatures(x_clean))
        adv = self._raw(self.signatures(x_adversarial))
        seconds = (time.perf_counter() - start) / (clean.size + adv.size)
        m = detection_metrics(clean, adv, self.threshold)
        return DetectionReport(name=name, threshold=self.threshold, seconds_per_input=seconds,
                               **{k: m[k] for k in ("accuracy", "roc_auc", "tpr_at_5_fpr",
                                                    "tpr", "fpr", "n_clean",
                                                    "n_adversarial")})

    def evaluate_attack(self, x, y, attack, *, model=None, name: str | None = None,
                        clean_scores=None) -> DetectionReport:
        """Run ``attack`` on ``(x, y)`` against the protected model and report detection of
        its successful adversarial inputs against the clean ``x``, with the attack's effect on
        the model and on model plus detector.

        Args:
            x: clean test inputs ``(n, *input_shape)`` (not those of :meth:`fit`).
            y: their labels.
            attack: a keras_secure attack, or an adaptive attack of
                :mod:`keras_secure.explain.adaptive` (``adaptive`` is then True).
            model: see :meth:`decision_function`. Defaults to None.
            name: the report's name. Defaults to the attack's label.
            clean_scores: the detector's scores of ``x``, when already computed (saves
                explaining the clean inputs again for every attack). Defaults to None.

        Returns:
            :class:`DetectionReport`; detection metrics are None if no adversarial input
            succeeded.
        """
        self._check_fitted()
        self._check_model(model)
        clf = self.classifier
        x, y = clf.check(x, y)
        x = x.astype(np.float32)
        name = name or getattr(attack, "label", type(attack).__name__)
        start = time.perf_counter()
        clean = self._raw(self.signatures(x)) if clean_scores is None else np.asarray(
            clean_scores, np.float64)
        clean_seconds = time.perf_counter() - start
        if clean.shape != (x.shape[0],):
            raise ValueError(f"`clean_scores` must have shape ({x.shape[0]},). Received: "
                             f"shape {clean.shape}")
        x_adv = np.asarray(attack(clf, x, y), np.float32)
        pred_clean = clf.predict_labels(x)
        pred_adv = clf.predict_labels(x_adv)
        start = time.perf_counter()
        adv_scores = self._raw(self.signatures(x_adv))
        adv_seconds = time.perf_counter() - start
        flagged = adv_scores > self.threshold
        success = (pred_clean == y) & (pred_adv != y)
        correct = int((pred_clean == y).sum())
        report = dict(
            name=name, threshold=self.threshold,
            classifier_accuracy=float(np.mean(pred_adv == y)),
            attack_success_rate=float(success.sum() / correct) if correct else None,
            evasion_rate=float(np.mean((pred_adv != y) & ~flagged)),
            adaptive=bool(getattr(attack, "adaptive", False)))
        timed = x.shape[0] if clean_scores is None else 0
        report["seconds_per_input"] = (clean_seconds * (timed > 0) + adv_seconds) / (
            timed + x.shape[0])
        if success.any():
            m = detection_metrics(clean, adv_scores[success], self.threshold)
            report.update({k: m[k] for k in ("accuracy", "roc_auc", "tpr_at_5_fpr", "tpr",
                                             "fpr", "n_clean", "n_adversarial")})
        else:
            report.update(accuracy=None, roc_auc=None, tpr_at_5_fpr=None, tpr=None,
                          fpr=float(np.mean(clean > self.threshold)), n_clean=int(clean.size),
                          n_adversarial=0)
        return DetectionReport(**report)

    # -- in-graph scores (for adaptive attacks) -------------------------------------------------
    @property
    def in_graph_exact(self) -> bool:
        """True when :meth:`decision_function_tensor` computes exactly what
        :meth:`decision_function` does (checked at the end of :meth:`fit`)."""
        return (self.explainer.differentiable and self.explainer.method in _EXACT_IN_GRAPH
                and self._linear is not None)

    @property
    def differentiable(self) -> bool:
        """True when the score has an in-graph, differentiable form: an explainer with
        :meth:`Explainer.attributions_tensor` and a linear estimator (logistic regression,
        optionally after a StandardScaler)."""
        return self.explainer.differentiable and self._linear is not None

    def _linear_form(self):
        """``(mean, scale, coef, intercept)`` of a [StandardScaler +] linear decision
        function, or None."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        steps = self.estimator.steps if isinstance(self.estimator, Pipeline) else [
            (None, self.estimator)]
        *pre, (_, last) = steps
        if not isinstance(last, LogisticRegression) or last.coef_.shape[0] != 1:
            return None
        if len(pre) > 1 or (pre and not isinstance(pre[0][1], StandardScaler)):
            return None
        d = last.coef_.shape[1]
        mean, scale = np.zeros(d), np.ones(d)
        if pre:
            scaler = pre[0][1]
            if scaler.with_mean:
                mean = scaler.mean_
            if scaler.with_std:
                scale = scaler.scale_
        return (tf.constant(mean, tf.float32), tf.constant(scale, tf.float32),
                tf.constant(last.coef_[0], tf.float32), float(last.intercept_[0]))

    def decision_function_tensor(self, x, logits=None) -> tf.Tensor:
        """In-graph detection scores ``(n,)`` of a float32 batch, differentiable w.r.t. ``x``.

        Args:
            x: float32 tensor ``(n, *input_shape)``.
            logits: the contract's logits of ``x`` if already computed (their arg-max gives
                the predicted classes of the signature), or None. Defaults to None.

        Raises:
            ValueError: if the detector has no differentiable form (see
                :attr:`differentiable`).
        """
        self._check_fitted()
        if not self.differentiable:
            raise ValueError(
                "The detector's score has no in-graph form: it needs an explainer with "
                "attributions_tensor (method='input_x_gradient', or a shap method on the layer "
                "before a Dense output layer) and a logistic-regression estimator. Use the "
                "gradient-free AdaptiveSquare attack instead.")
        if logits is None:
            logits = self.classifier.logits(x)
        if self.classes == "all":
            n = tf.shape(x)[0]
            k = self.explainer.num_classes
            classes = tf.tile(tf.range(k, dtype=tf.int32)[None], tf.stack([n, 1]))
        else:
            classes = labels_from_logits(logits)[:, None]
        a = self.explainer.attributions_tensor(x, classes)
        features = tf.reshape(a, [tf.shape(a)[0], -1])
        mean, scale, coef, intercept = self._linear
        return tf.linalg.matvec((features - mean) / scale, coef) + intercept

    def _check_in_graph(self, x):
        graph = self.decision_function_tensor(tf.constant(x)).numpy()
        exact = self._raw(self.signatures(x))
        err = np.abs(graph - exact).max()
        if err > 1e-3 * max(1.0, np.abs(exact).max()):
            raise RuntimeError(f"The in-graph detection score differs from the detector's by "
                               f"{err:.3g}: the in-graph attribution does not match "
                               f"{self.explainer.method!r}. Please report this.")

    def describe(self) -> dict:
        """The detector's configuration and training counts, for reports."""
        return {"method": self.explainer.method, "layer": self.explainer.layer or "inputs",
                "classes": self.classes, "estimator": type(self.estimator).__name__,
                "fpr": self.fpr, "threshold": self.threshold,
                "background_size": self.explainer.background_size,
                "num_samples": self.explainer.num_samples,
                "training": self.training_summary}


__all__ = ["AttributionDetector", "DetectionReport", "detection_metrics", "threshold_at_fpr"]
