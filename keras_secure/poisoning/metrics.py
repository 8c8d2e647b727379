"""What a poisoning attack achieved: clean accuracy, attack success rate, targeted
misclassification. Every figure reads the model through the classifier contract."""

from __future__ import annotations

import numpy as np

from keras_secure.classifier import as_classifier
from keras_secure.poisoning._common import check_class
from keras_secure.poisoning.triggers import Trigger, triggered_test_set


def clean_accuracy(model, x, y, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on clean (untriggered) test data, in [0, 1].

    Args:
        model: a Keras classifier or :class:`keras_secure.Classifier`.
        x: test inputs ``(n, ...)``.
        y: their true labels.
        batch_size: examples per forward pass. Defaults to 256.

    Returns:
        The fraction of ``x`` whose predicted label equals ``y``.

    Example:
        >>> clean_accuracy(model, x_test, y_test)
    """
    clf = as_classifier(model)
    x, labels = clf.check(x, y)
    return float(np.mean(clf.predict_labels(x, batch_size) == labels))


def attack_success_rate(model, x, y, trigger: Trigger, *, target: int = 0,
                        mode: str = "all_to_one", batch_size: int = 256) -> float:
    """Backdoor attack success rate: the fraction of triggered test inputs that the model
    classifies as the backdoor's label.

    All-to-one: test inputs of every class but ``target``, triggered, classified as
    ``target``. All-to-all: every test input, triggered, classified as ``(y + 1) mod k``.

    Args:
        model: a Keras classifier or :class:`keras_secure.Classifier`.
        x: clean test inputs ``(n, height, width, channels)``.
        y: their true labels.
        trigger: the backdoor's trigger.
        target: the attacker's class (all-to-one). Defaults to 0.
        mode: ``"all_to_one"`` or ``"all_to_all"``. Defaults to ``"all_to_one"``.
        batch_size: examples per forward pass. Defaults to 256.

    Returns:
        The attack success rate in [0, 1].

    Raises:
        ValueError: ``target`` out of range, a trigger that does not fit, bad data.

    Example:
        >>> attack_success_rate(model, x_test, y_test, PatchTrigger(2), target=0)

    References:
        Gu, Dolan-Gavitt & Garg (2017), BadNets.
    """
    clf = as_classifier(model)
    x, labels = clf.check(x, y)
    x_t, y_t = triggered_test_set(x, labels, trigger, target=target, mode=mode,
                                  num_classes=clf.num_classes)
    return float(np.mean(clf.predict_labels(x_t, batch_size) == y_t))


def targeted_misclassification(model, x_target, poison_label: int,
                               batch_size: int = 256) -> float:
    """Clean-label attack success: the fraction of target instances that the model classifies
    as the poisons' (base) class.

    Args:
        model: a Keras classifier or :class:`keras_secure.Classifier`.
        x_target: the attacked test instances ``(m, ...)`` (one or several).
        poison_label: the base class the attacker wants them classified as.
        batch_size: examples per forward pass. Defaults to 256.

    Returns:
        A fraction in [0, 1] (0 or 1 for a single target).

    Raises:
        ValueError: ``poison_label`` out of range, bad inputs.

    Example:
        >>> targeted_misclassification(poisoned_model, x_test[[7]], poison_label=3)

    References:
        Shafahi et al. (2018), "Poison Frogs! Targeted Clean-Label Poisoning Attacks on Neural
        Networks".
    """
    clf = as_classifier(model)
    x, _ = clf.check(x_target, name="x_target")
    poison_label = check_class(poison_label, clf.num_classes, "poison_label")
    return float(np.mean(clf.predict_labels(x, batch_size) == poison_label))

