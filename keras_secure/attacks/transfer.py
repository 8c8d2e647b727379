"""Transfer attack: adversarial examples crafted on a surrogate model, applied to another."""

from __future__ import annotations

from keras_secure.attacks.base import Attack
from keras_secure.classifier import as_classifier


class Transfer(Attack):
    """Transfer (black-box) attack: run a white-box attack on a surrogate model and use its
    examples against the attacked model.

    The attacked model is never differentiated: only the surrogate's gradients are used, so
    the attack is immune to gradient masking in the attacked model (Papernot et al. 2017;
    Athalye, Carlini & Wagner 2018 use it to expose masked gradients). The surrogate should
    solve the same task with the same classes, ideally the same architecture trained normally
    on the same data. Its examples keep the inner attack's budget and value range.

    Args:
        surrogate: a Keras model, callable or :class:`keras_secure.Classifier` with the same
            number of classes as the attacked model; read through the classifier contract.
        attack: the configured, untargeted white-box attack run on ``surrogate`` (its ``eps``,
            ``norm`` and ``value_range`` are this attack's).

    Returns:
        The surrogate's adversarial examples (same shape as ``x``).

    Raises:
        TypeError: if ``attack`` is not an :class:`Attack`.
        ValueError: for a targeted ``attack``, or (at call) a surrogate whose number of classes
            differs from the attacked model's.

    Example:
        >>> transfer = Transfer(surrogate, PGD(0.1, steps=20, value_range=(0, 1), seed=0))
        >>> report = evaluate_robustness(model, x, y, [PGD(0.1, value_range=(0, 1)), transfer])

    References:
        Papernot, McDaniel & Goodfellow (2016), "Transferability in Machine Learning";
        Athalye, Carlini & Wagner (2018), "Obfuscated Gradients Give a False Sense of
        Security", ICML.
    """

    name = "Transfer"
    uses_gradients = False  # of the attacked model

    def __init__(self, surrogate, attack: Attack):
        if not isinstance(attack, Attack):
            raise TypeError("`attack` must be a keras_secure.attacks.Attack (run on the "
                            f"surrogate). Received: {attack!r}")
        if attack.targeted:
            raise ValueError("`attack` must be untargeted: a transfer attack uses the true "
                             f"labels. Received: {attack!r}")
        self.attack = attack
        self.surrogate = as_classifier(surrogate)
        super().__init__(eps=attack.eps, norm=attack.norm, value_range=attack.value_range,
                         seed=attack.seed, batch_size=attack.batch_size,
                         eps_required=attack.eps is not None)

    @property
    def label(self) -> str:
        return f"Transfer[{self.attack.label}]"

    def get_config(self) -> dict:
        """The inner attack's class and config (the surrogate model is not part of it)."""
        return {"attack": type(self.attack).__name__, "attack_config": self.attack.get_config()}

    @classmethod
    def from_config(cls, config: dict):
        raise TypeError("A Transfer attack cannot be rebuilt from its config alone: it needs "
                        "the surrogate model. Build it as Transfer(surrogate, attack).")

    def _check_data(self, clf, x, y):
        if self.surrogate.num_classes != clf.num_classes:
            raise ValueError(
                f"`surrogate` must have the attacked model's {clf.num_classes} classes. "
                f"Received: a surrogate with {self.surrogate.num_classes} classes")
        self.attack._check_data(self.surrogate, x, y)  # noqa: SLF001 - the same data contract
        return super()._check_data(clf, x, y)

    def _perturb(self, logits_fn, x, y):
        return self.attack.perturb(self.surrogate.logits, x, y)
