"""The standard attack suite of AutoAttack (Croce & Hein 2020), native in TensorFlow.

:func:`standard_suite` builds the attacks; :func:`evaluate_robustness` with ``suite=`` runs them
under AutoAttack's protocol (each attack only on the examples every earlier attack left
correctly classified; an example is robust only if it survives them all).
"""

from __future__ import annotations

from keras_secure.attacks.apgd import APGD, APGDT
from keras_secure.attacks.fab import FAB
from keras_secure.attacks.square import Square
from keras_secure.validation import check_choice, check_number, check_value_range

SUITES = ("standard", "rand")

#: AutoAttack's standard settings (Croce & Hein 2020, section 5; the reference implementation's
#: "standard" and "rand" versions)
STANDARD_STEPS = 100
STANDARD_TARGETS = 9
STANDARD_QUERIES = 5000
STANDARD_P_INIT = 0.8
RAND_EOT_SAMPLES = 20


def standard_suite(eps: float, *, norm: str = "linf", num_classes: int = 10,
                   version: str = "standard", value_range=(0.0, 1.0), images: bool = True,
                   seed: int | None = 0, batch_size: int | None = None) -> tuple[list, list[str]]:
    """The attacks of AutoAttack's standard (or rand) version for one threat model.

    ``"standard"``: APGD-CE, APGD-T (targeted DLR over the top ``min(9, classes - 1)``
    classes), FAB-T (the same targets) and Square (5000 queries, ``p_init = 0.8``), 100
    iterations each, one restart. ``"rand"``, for models with randomized layers: APGD-CE and
    APGD-DLR with Expectation over Transformation over 20 draws per step. Attacks that cannot
    apply are left out and named in the returned notes: APGD-T and APGD-DLR need >= 4 and >= 3
    classes; keras_secure's Square is L-inf only and needs images ``(h, w, c)``.

    Args:
        eps: budget in input units, > 0.
        norm: ``"linf"`` or ``"l2"``. Defaults to ``"linf"``.
        num_classes: classes of the model, >= 2. Defaults to 10.
        version: ``"standard"`` or ``"rand"``. Defaults to ``"standard"``.
        value_range: ``(low, high)`` of valid inputs, or None. Defaults to ``(0.0, 1.0)``.
        images: whether inputs are images (rank 3 per example, channels last); Square needs
            them. Defaults to True.
        seed: seed of every attack's randomness. Defaults to 0.
        batch_size: examples attacked at once. Defaults to None (all of a call).

    Returns:
        ``(attacks, notes)``: the attacks in AutoAttack's order, and one sentence per attack
        of the version that was left out, saying why.

    Raises:
        ValueError: for an invalid argument, naming it.

    Example:
        >>> attacks, notes = standard_suite(8 / 255, num_classes=10)
        >>> [a.label for a in attacks]

    References:
        Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
        diverse parameter-free attacks", ICML.
    """
    eps = check_number("eps", eps, low=0.0, low_inclusive=False)
    norm = check_choice("norm", norm, ("linf", "l2"))
    num_classes = check_number("num_classes", num_classes, low=2, integer=True)
    version = check_choice("version", version, SUITES)
    value_range = check_value_range(value_range)
    common = dict(eps=eps, norm=norm, value_range=value_range, seed=seed,
                  batch_size=batch_size)
    attacks, notes = [], []
    if version == "rand":
        attacks.append(APGD(steps=STANDARD_STEPS, loss="ce", eot_samples=RAND_EOT_SAMPLES,
                            **common))
        if num_classes >= 3:
            attacks.append(APGD(steps=STANDARD_STEPS, loss="dlr",
                                eot_samples=RAND_EOT_SAMPLES, **common))
        else:
            notes.append("APGD-DLR left out: the DLR loss needs at least 3 classes.")
        return attacks, notes
    targets = min(STANDARD_TARGETS, num_classes - 1)
    attacks.append(APGD(steps=STANDARD_STEPS, loss="ce", **common))
    if num_classes >= 4:
        attacks.append(APGDT(target_classes=targets, steps=STANDARD_STEPS, **common))
    else:
        notes.append("APGD-T left out: the targeted DLR loss needs at least 4 classes.")
    attacks.append(FAB(target_classes=targets, steps=STANDARD_STEPS, **common))
    if norm == "linf" and images:
        attacks.append(Square(eps, queries=STANDARD_QUERIES, p_init=STANDARD_P_INIT,
                              value_range=value_range, seed=seed, batch_size=batch_size))
    elif norm != "linf":
        notes.append("Square left out: keras_secure's Square attack is L-inf only, so the L2 "
                     "suite has no gradient-free attack; the black-box diagnostic runs none "
                     "either.")
    else:
        notes.append("Square left out: it perturbs square windows of images (h, w, c), and "
                     "these inputs are not images.")
    return attacks, notes

