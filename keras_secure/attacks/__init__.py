"""Evasion attacks: configured once, called as ``attack(model, x, y) -> x_adv``.

All attacks work on logits (softmax outputs are undone where possible, see
:func:`logits_function`), run their loop in one ``tf.function`` and guarantee that adversarial
inputs stay inside the ``eps`` ball (where they have a budget) and inside ``value_range``.
"""

from keras_secure.attacks.apgd import APGD, APGDT
from keras_secure.attacks.base import Attack, logits_function
from keras_secure.attacks.cw import CarliniWagnerL2
from keras_secure.attacks.deepfool import DeepFool
from keras_secure.attacks.fab import FAB
from keras_secure.attacks.fgsm import FGSM
from keras_secure.attacks.mifgsm import MIFGSM
from keras_secure.attacks.pgd import PGD
from keras_secure.attacks.square import Square
from keras_secure.attacks.transfer import Transfer

#: lower-case names accepted by :func:`get` and the command line
ATTACKS = {
    "fgsm": FGSM,
    "pgd": PGD,
    "mifgsm": MIFGSM,
    "apgd": APGD,
    "apgdt": APGDT,
    "cw": CarliniWagnerL2,
    "deepfool": DeepFool,
    "fab": FAB,
    "square": Square,
}


def get(name: str, **kwargs) -> Attack:
    """Build an attack by its short name (``fgsm``, ``pgd``, ``mifgsm``, ``apgd``, ``apgdt``,
    ``cw``, ``deepfool``, ``fab``, ``square``) with constructor keyword arguments.

    Args:
        name: short name, case-insensitive.
        **kwargs: passed to the attack's constructor.

    Returns:
        The configured attack.

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> pgd = get("pgd", eps=0.1, value_range=(0.0, 1.0))
    """
    key = str(name).lower().replace("-", "").replace("_", "").replace("&", "")
    if key not in ATTACKS:
        raise ValueError(f"`name` must be one of {tuple(ATTACKS)}. Received: name={name!r}")
    return ATTACKS[key](**kwargs)


__all__ = ["Attack", "APGD", "APGDT", "CarliniWagnerL2", "DeepFool", "FAB", "FGSM", "MIFGSM",
           "PGD", "Square", "Transfer", "ATTACKS", "get", "logits_function"]
