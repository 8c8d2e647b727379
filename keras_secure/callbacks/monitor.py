"""Robust accuracy on a fixed validation subset, logged every epoch."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_secure.attacks.base import Attack
from keras_secure.classifier import as_arrays, as_classifier, check_inputs
from keras_secure.validation import check_number


class RobustnessMonitor(keras.callbacks.Callback):
    """Log robust accuracy under ``attack`` on a fixed validation subset at the end of epochs.

    Writes ``val_robust_accuracy`` (accuracy on the attacked subset; an example initially
    misclassified counts as wrong) into the epoch's ``logs``, so that ``EarlyStopping``,
    ``ModelCheckpoint(monitor="val_robust_accuracy", mode="max")``, ``CSVLogger`` and
    ``TensorBoard`` use it unchanged - list this callback *before* them in ``callbacks``, since
    Keras calls callbacks in order. Logs hold numbers only (TensorBoard writes every entry as a
    scalar), so the attack's description is in :attr:`attack_label`, and every measurement in
    :attr:`history`. The model is read through the classifier contract
    (:class:`keras_secure.Classifier`): logits, softmax, one sigmoid unit or one logit, and
    keras_secure layers attacked through their adaptive path; labels of shape ``(n,)``,
    ``(n, 1)`` or one-hot are all read the same way.

    Args:
        x_val: validation inputs (finite), or a finite ``tf.data.Dataset`` of ``(x, y)``.
        y_val: their labels (``(n,)``, ``(n, 1)`` or one-hot). Required unless ``x_val`` is a
            dataset.
        attack: a configured keras_secure attack (untargeted).
        every: evaluate at the first epoch, then every ``every`` epochs, and at the last one
            (>= 1). On the other epochs the entry is logged as NaN, so that ``CSVLogger`` keeps
            its column; the first epoch is always measured, so ``EarlyStopping`` and
            ``ModelCheckpoint`` start from a real value, and since they count a NaN epoch as
            one without improvement, give ``EarlyStopping`` a ``patience`` of at least
            ``every``. Defaults to 1.
        max_samples: use only the first ``max_samples`` examples (>= 1), or all. Defaults to
            None.
        name: the log key. Defaults to ``"val_robust_accuracy"``.
        collapse_drop: if robust accuracy falls by more than this (absolute, in [0, 1]) below
            the best value so far, warn that training may be overfitting catastrophically (the
            failure mode of fast FGSM training, Wong et al. 2020) and log
            ``{name}_collapsed = 1``; None disables the check. Defaults to 0.2.

    Raises:
        TypeError: if ``attack`` is not a keras_secure attack.
        ValueError: for missing labels, mismatched sizes, NaN / inf inputs, a targeted attack,
            ``every < 1``; labels that are not class labels of the model fail when training
            begins, before the first step.

    Example:
        >>> monitor = RobustnessMonitor(x_val, y_val, ks.attacks.PGD(0.1, value_range=(0, 1)))
        >>> model.fit(x, y, epochs=10, callbacks=[monitor, keras.callbacks.ModelCheckpoint(
        ...     "best.keras", monitor="val_robust_accuracy", mode="max", save_best_only=True)])

    References:
        Rice, Wong & Kolter (2020), "Overfitting in adversarially robust deep learning" (early
        stopping on robust validation accuracy).
    """

    def __init__(self, x_val, y_val, attack: Attack, every: int = 1,
                 max_samples: int | None = None, name: str = "val_robust_accuracy",
                 collapse_drop: float | None = 0.2):
        super().__init__()
        if not isinstance(attack, Attack):
            raise TypeError(f"`attack` must be a keras_secure attack. Received: attack={attack!r}")
        if attack.targeted:
            raise ValueError(f"`attack` must be untargeted. Received: attack={attack!r}")
        x_val, y_val = as_arrays(x_val, y_val, name="x_val")
        if y_val is None:
            raise ValueError("`y_val` is required: robust accuracy needs labels. "
                             "Received: y_val=None")
        x_val, y_val = check_inputs(x_val, "x_val"), np.asarray(y_val)
        if len(x_val) != len(y_val):
            raise ValueError("`x_val` and `y_val` must be of the same length. "
                             f"Received: {len(x_val)} and {len(y_val)}")
        self.every = check_number("every", every, low=1, integer=True)
        self.collapse_drop = check_number("collapse_drop", collapse_drop, low=0.0, high=1.0,
                                          allow_none=True)
        max_samples = check_number("max_samples", max_samples, low=1, integer=True,
                                   allow_none=True)
        if max_samples is not None:
            x_val, y_val = x_val[:max_samples], y_val[:max_samples]
        self.x_val, self.y_val, self.attack, self.key = x_val, y_val, attack, name
        self.attack_label = attack.label
        self.history: list[tuple[int, float]] = []

    def on_train_begin(self, logs=None):
        # The labels are checked against the model (number of classes, binary heads) before
        # the first training step, not at the first epoch's end.
        as_classifier(self.model).check(
            self.x_val, self.y_val, name="x_val", y_name="y_val")

    def robust_accuracy(self) -> float:
        """Accuracy of the current model on the attacked validation subset (an example counts
        only if it is classified correctly both clean and attacked)."""
        clf = as_classifier(self.model)
        x, y = clf.check(self.x_val, self.y_val, name="x_val", y_name="y_val")
        x_adv = self.attack(clf, x, y)
        clean = clf.predict_labels(x, batch_size=512)
        adv = clf.predict_labels(x_adv, batch_size=512)
        return float(np.mean((clean == y) & (adv == y)))

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == (self.params or {}).get("epochs")
        if epoch % self.every and not last:
            if logs is not None:  # NaN keeps CSVLogger's column on the epochs not measured
                logs[self.key] = float("nan")
                if self.collapse_drop is not None:
                    logs[f"{self.key}_collapsed"] = float("nan")
            return
        value = self.robust_accuracy()
        best = max((v for _, v in self.history), default=value)
        self.history.append((epoch, value))
        collapsed = self.collapse_drop is not None and best - value > self.collapse_drop
        if collapsed:
            warnings.warn(
                f"{self.key} fell from {best:.3f} to {value:.3f} at epoch {epoch + 1} under "
                f"{self.attack_label}: catastrophic overfitting? (fast FGSM training is prone "
                "to it; lower its step size, use PGD, or stop early)", stacklevel=2)
        if logs is not None:
            logs[self.key] = value
            if self.collapse_drop is not None:
                logs[f"{self.key}_collapsed"] = float(collapsed)
