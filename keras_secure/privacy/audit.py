"""Membership-inference audit of a trained classifier with TensorFlow Privacy's attacks.

The attacks themselves are TensorFlow Privacy's (``tensorflow_privacy.privacy.privacy_tests.
membership_inference_attack``, shipped since TF Privacy 0.9 as the separate
``tensorflow-empirical-privacy`` distribution): the loss- and entropy-threshold attacks of
Yeom et al. 2018 and the trained attackers (logistic regression, MLP, random forest, k-NN) of
Shokri et al. 2017 / Salem et al. 2019. This module feeds them a Keras 3 model's logits and
reports ROC AUC and attacker advantage (max |TPR - FPR|), the figures TF Privacy reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import warnings

import numpy as np

from keras_secure.classifier import as_classifier
from keras_secure.validation import check_number

ATTACK_TYPES = {
    "threshold": "THRESHOLD_ATTACK",
    "threshold_entropy": "THRESHOLD_ENTROPY_ATTACK",
    "logistic_regression": "LOGISTIC_REGRESSION",
    "mlp": "MULTI_LAYERED_PERCEPTRON",
    "random_forest": "RANDOM_FOREST",
    "knn": "K_NEAREST_NEIGHBORS",
}
DEFAULT_ATTACKS = ("threshold", "threshold_entropy", "logistic_regression")


@contextlib.contextmanager
def _sklearn_names_for_tf_privacy():
    """Provide, for the duration of the block only, two scikit-learn names TF Privacy's attack
    code (written for scikit-learn 1.4) still uses and scikit-learn >= 1.8 no longer has:

    - ``sklearn.utils.parallel_backend``: a re-export of ``joblib.parallel_backend`` (removed in
      1.7); TF Privacy imports it at module import time.
    - ``sklearn.metrics._ranking._binary_clf_curve(y_true, y_score)`` returning
      ``(fps, tps, thresholds)``: renamed ``confusion_matrix_at_thresholds`` in 1.8, which
      returns ``(tns, fps, fns, tps, thresholds)``; used by TF Privacy's epsilon lower bound.

    Both are removed again afterwards, so nothing outlives the audit call.
    """
    import joblib
    import sklearn.utils
    from sklearn.metrics import _ranking

    added = []
    if not hasattr(sklearn.utils, "parallel_backend"):
        sklearn.utils.parallel_backend = joblib.parallel_backend
        added.append((sklearn.utils, "parallel_backend"))
    if not hasattr(_ranking, "_binary_clf_curve"):
        def _binary_clf_curve(y_true, y_score, pos_label=None, sample_weight=None):
            _, fps, _, tps, thresholds = _ranking.confusion_matrix_at_thresholds(
                y_true, y_score, pos_label=pos_label, sample_weight=sample_weight)
            return fps, tps, thresholds

        _ranking._binary_clf_curve = _binary_clf_curve
        added.append((_ranking, "_binary_clf_curve"))
    try:
        yield
    finally:
        for module, name in added:
            delattr(module, name)


def _tf_privacy_mia():
    """Import TF Privacy's membership-inference modules (its top-level package import fails on
    TF >= 2.16; ``sys.skip_tf_privacy_import`` skips it and is restored right after)."""
    had = hasattr(sys, "skip_tf_privacy_import")
    previous = getattr(sys, "skip_tf_privacy_import", None)
    sys.skip_tf_privacy_import = True
    try:
        with _sklearn_names_for_tf_privacy():
            from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import (
                data_structures,
            )
            from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import (
                membership_inference_attack as mia,
            )
    except ImportError as err:
        raise ImportError(
            "audit_membership needs TensorFlow Privacy's membership-inference attacks, "
            "installed by `make setup` (package tensorflow-empirical-privacy==0.1.0 with "
            f"requirements/overrides.txt). Import failed: {err}"
        ) from err
    finally:
        if had:
            sys.skip_tf_privacy_import = previous
        else:
            del sys.skip_tf_privacy_import
    return mia, data_structures


@dataclasses.dataclass(frozen=True)
class MembershipAudit:
    """Result of :func:`audit_membership`.

    Attributes:
        auc: ``{attack name: ROC AUC}``; 0.5 means the attacker cannot tell members from
            non-members.
        advantage: ``{attack name: max |TPR - FPR|}`` (Yeom et al. 2018); 0 means no advantage.
        n_train, n_test: examples audited from each side.
        results: TF Privacy's ``AttackResults`` object, for its plots and per-slice summary.
    """

    auc: dict
    advantage: dict
    n_train: int
    n_test: int
    results: object = dataclasses.field(repr=False, compare=False)

    @property
    def max_auc(self) -> float:
        """The strongest attacker's AUC."""
        return max(self.auc.values())

    @property
    def max_advantage(self) -> float:
        """The strongest attacker's advantage."""
        return max(self.advantage.values())

    def to_dict(self) -> dict:
        """Plain-Python summary (JSON-serialisable)."""
        return {"auc": dict(self.auc), "advantage": dict(self.advantage),
                "max_auc": self.max_auc, "max_advantage": self.max_advantage,
                "n_train": self.n_train, "n_test": self.n_test}


def advantage_bound(epsilon: float, delta: float) -> float | None:
    """The largest membership advantage (max TPR - FPR) any attacker can have against an
    ``(epsilon, delta)``-DP training run: ``(e^eps - 1 + 2 delta) / (e^eps + 1)``, the
    hypothesis-testing bound of DP (Kairouz, Oh & Viswanath 2015; Humphries et al. 2020),
    tighter than Yeom et al.'s ``e^eps - 1``.

    Args:
        epsilon: >= 0, or ``math.inf`` for a non-private model.
        delta: in [0, 1).

    Returns:
        The bound in [0, 1], or None for ``epsilon = inf`` (no bound).

    Raises:
        ValueError: for epsilon < 0 or delta outside [0, 1).

    Example:
        >>> round(advantage_bound(1.0, 1e-5), 4)
        0.4621
    """
    delta = check_number("delta", delta, low=0.0, high=1.0, high_inclusive=False)
    if epsilon == math.inf:
        return None
    epsilon = check_number("epsilon", epsilon, low=0.0)
    return min(1.0, (math.expm1(epsilon) + 2 * delta) / (math.exp(epsilon) + 1))


def _split(data, name: str):
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"`{name}` must be a pair (x, y). Received: {type(data).__name__}")
    return data


def audit_membership(model, train, test, *, attacks=DEFAULT_ATTACKS, batch_size: int = 256,
                     balance: bool = True, seed: int | None = 0) -> MembershipAudit:
    """Audit ``model`` for membership leakage with TensorFlow Privacy's attacks.

    The model's logits on its training examples (members) and on held-out examples
    (non-members) go to TF Privacy's ``run_attacks``: threshold attacks on the loss and on the
    prediction entropy (Yeom et al. 2018) and trained attackers (Shokri et al. 2017; Salem et
    al. 2019), which TF Privacy fits on half of the balanced member/non-member scores and
    evaluates on the other half. A DP-trained model with small epsilon should leave every
    attacker near AUC 0.5 and advantage 0; the advantage of any attacker is bounded by
    :func:`advantage_bound`, a check that is only sharp with many audited examples.

    Args:
        model: a Keras classifier, read through the classifier contract
            (:class:`keras_secure.Classifier`: logits, softmax, one sigmoid unit or one logit;
            its log class probabilities are what TF Privacy's attacks score), or a Classifier.
        train: ``(x_train, y_train)``, examples the model was trained on. Labels ``(n,)``,
            ``(n, 1)`` or one-hot rows; inputs finite.
        test: ``(x_test, y_test)``, examples it never saw, from the same distribution.
        attacks: names among ``"threshold"``, ``"threshold_entropy"``,
            ``"logistic_regression"``, ``"mlp"``, ``"random_forest"``, ``"knn"``. Defaults to
            the two threshold attacks and logistic regression.
        batch_size: inference batch size, >= 1. Defaults to 256.
        balance: balance members and non-members when training the trained attackers
            (TF Privacy's ``balance_attacker_training``). Defaults to True.
        seed: seeds NumPy's global generator, which TF Privacy's attacker training split uses,
            for a reproducible audit; the previous state is restored afterwards. None leaves
            the global generator alone. Defaults to 0.

    Returns:
        A :class:`MembershipAudit` with AUC and advantage per attack.

    Raises:
        TypeError: if ``train``/``test`` are not pairs or ``attacks`` is not a sequence of names.
        ValueError: for unknown attack names, empty data, mismatched labels or a bad
            ``batch_size``.
        ImportError: if TF Privacy's attack package is not installed.

    Example:
        >>> audit = audit_membership(model, (x_tr, y_tr), (x_te, y_te))
        >>> audit.max_auc, audit.advantage["threshold"]
    """
    if isinstance(attacks, str) or not hasattr(attacks, "__iter__"):
        raise TypeError("`attacks` must be a sequence of attack names, e.g. "
                        f"('threshold', 'logistic_regression'). Received: {attacks!r}")
    attacks = tuple(attacks)
    unknown = [a for a in attacks if a not in ATTACK_TYPES]
    if unknown or not attacks:
        raise ValueError(f"`attacks` must be a non-empty subset of {sorted(ATTACK_TYPES)}. "
                         f"Received: {attacks!r}")
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    clf = as_classifier(model)
    x_train, y_train = clf.check(*_split(train, "train"), name="train[0]", y_name="train[1]")
    x_test, y_test = clf.check(*_split(test, "test"), name="test[0]", y_name="test[1]")

    def logits(x):  # log-probabilities: logits of every output kind (classifier contract)
        return clf.predict_log_probabilities(x, batch_size).astype(np.float64)

    mia, ds = _tf_privacy_mia()
    attack_input = ds.AttackInputData(logits_train=logits(x_train), logits_test=logits(x_test),
                                      labels_train=y_train.astype(np.int64),
                                      labels_test=y_test.astype(np.int64))
    types = [getattr(ds.AttackType, ATTACK_TYPES[a]) for a in attacks]
    state = np.random.get_state() if seed is not None else None
    try:
        if seed is not None:
            np.random.seed(seed)
        with _sklearn_names_for_tf_privacy(), warnings.catch_warnings():
            # Version-skew noise from TF Privacy's 2024 code on scikit-learn 1.9 (n_jobs
            # FutureWarnings, grid-search candidates with removed options scored NaN, divisions
            # by zero in its epsilon lower bound); none affects the AUC or advantage.
            for category in (FutureWarning, DeprecationWarning, RuntimeWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category)
            results = mia.run_attacks(attack_input, ds.SlicingSpec(entire_dataset=True),
                                      attack_types=types, balance_attacker_training=balance)
    finally:
        if state is not None:
            np.random.set_state(state)
    by_type = {r.attack_type: r for r in results.single_attack_results}
    auc = {a: float(by_type[t].get_auc()) for a, t in zip(attacks, types)}
    advantage = {a: float(by_type[t].get_attacker_advantage()) for a, t in zip(attacks, types)}
    return MembershipAudit(auc=auc, advantage=advantage, n_train=x_train.shape[0],
                           n_test=x_test.shape[0], results=results)
