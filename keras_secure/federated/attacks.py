"""Malicious federated clients: poisoned local data (label flipping, backdoors), Byzantine
updates (sign flipping, scaling), model replacement, and malformed updates.

Each behaviour is given to :class:`~keras_secure.federated.KerasClients` for the clients that
carry it (``malicious={client_id: behaviour}``). A behaviour may act on the client's data
(:meth:`MaliciousBehaviour.poison_data`, once, reusing :mod:`keras_secure.poisoning`) and on the
update it sends (:meth:`MaliciousBehaviour.poison_update`, each round it is active).
"""

from __future__ import annotations

import numpy as np

from keras_secure.poisoning import backdoor as _backdoor
from keras_secure.poisoning import flip_labels
from keras_secure.poisoning.triggers import Trigger, check_trigger
from keras_secure.validation import check_choice, check_number


def _rounds(rounds):
    if rounds is None:
        return None
    try:
        values = sorted({int(r) for r in rounds})
    except TypeError:
        raise TypeError("`rounds` must be None (every round) or a collection of round numbers "
                        f"(from 1). Received: rounds={rounds!r}") from None
    if not values or values[0] < 1:
        raise ValueError("`rounds` must hold round numbers >= 1 (Flower counts rounds from 1). "
                         f"Received: rounds={rounds!r}")
    return tuple(values)


def _same_encoding(y_new: np.ndarray, y_like, num_classes: int) -> np.ndarray:
    """Poisoned class indices back in the encoding of the labels they replace."""
    like = np.asarray(y_like)
    if like.ndim == 2 and like.shape[1] == num_classes and num_classes > 1:
        return np.eye(num_classes, dtype=like.dtype)[y_new]
    if like.ndim == 2:
        return y_new.reshape(-1, 1).astype(like.dtype)
    return y_new.astype(like.dtype if np.issubdtype(like.dtype, np.integer) else np.int32)


class MaliciousBehaviour:
    """Base class of what a malicious client does differently from an honest one.

    Args:
        rounds: the rounds (from 1) in which the client attacks; None attacks every round. In
            other rounds it trains and reports honestly on clean data. Defaults to None.
    """

    #: True if the behaviour poisons the training data (the client trains on it).
    poisons_data = False
    #: True if the behaviour changes the update after training.
    poisons_update = False

    def __init__(self, rounds=None):
        self.rounds = _rounds(rounds)

    def active(self, server_round: int) -> bool:
        """Whether the client attacks in ``server_round``."""
        return self.rounds is None or int(server_round) in self.rounds

    def poison_data(self, x, y, *, num_classes: int, seed: int | None):
        """The client's training data when attacking (default: unchanged)."""
        return x, y

    def poison_update(self, local: list, global_: list, *, num_clients: int,
                      seed: int | None) -> list:
        """The weights the client sends when attacking, from its trained ``local`` weights and
        the round's ``global_`` weights (default: ``local``)."""
        return local

    def get_config(self) -> dict:
        """The behaviour's arguments (JSON-ready)."""
        return {"rounds": list(self.rounds) if self.rounds else None}

    def describe(self) -> str:
        """A short human-readable name, for tables."""
        return type(self).__name__

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class LabelFlipping(MaliciousBehaviour):
    """Trains on flipped labels (Fang et al. 2020; Tolpegin et al. 2020, "Data Poisoning
    Attacks Against Federated Learning Systems"), via
    :func:`keras_secure.poisoning.flip_labels`.

    Args:
        fraction: fraction of the client's examples (random flips) or of its ``source`` class
            (targeted flips) relabelled, in [0, 1]. Defaults to 1.0.
        source: class whose labels are flipped (targeted); None flips at random.
        target: class they become (targeted, with ``source``).
        rounds: rounds in which the client attacks (None: all).

    Example:
        >>> LabelFlipping(source=1, target=7)
    """

    poisons_data = True

    def __init__(self, fraction: float = 1.0, *, source: int | None = None,
                 target: int | None = None, rounds=None):
        super().__init__(rounds)
        self.fraction = check_number("fraction", fraction, low=0.0, high=1.0)
        if (source is None) != (target is None):
            raise ValueError("`source` and `target` go together (targeted flips) or are both "
                             f"None (random flips). Received: source={source}, target={target}")
        self.source, self.target = source, target

    def poison_data(self, x, y, *, num_classes, seed):
        _, flipped, _ = flip_labels(x, y, self.fraction, source=self.source, target=self.target,
                                    num_classes=num_classes, seed=seed)
        return x, _same_encoding(flipped, y, num_classes)

    def get_config(self):
        return {"fraction": self.fraction, "source": self.source, "target": self.target,
                **super().get_config()}

    def describe(self):
        if self.source is None:
            return f"label flipping ({self.fraction:.0%} random)"
        return f"label flipping {self.source}->{self.target}"


class Backdoor(MaliciousBehaviour):
    """Trains on data with a backdoor (Gu et al. 2017's BadNets trigger or any
    :class:`keras_secure.poisoning.Trigger`), via :func:`keras_secure.poisoning.backdoor`.

    The update is sent as trained: with many honest clients FedAvg dilutes it; see
    :class:`ModelReplacement` for the boosted attack.

    Args:
        trigger: the :class:`~keras_secure.poisoning.Trigger` (images ``(h, w, c)``).
        target: the class triggered inputs should be classified as. Defaults to 0.
        fraction: fraction of the client's examples replaced by triggered ones, in (0, 1].
            Defaults to 0.5.
        mode: ``"all_to_one"`` or ``"all_to_all"``. Defaults to ``"all_to_one"``.
        rounds: rounds in which the client attacks (None: all).

    Example:
        >>> from keras_secure.poisoning import PatchTrigger
        >>> Backdoor(PatchTrigger(size=2), target=0)
    """

    poisons_data = True

    def __init__(self, trigger: Trigger, *, target: int = 0, fraction: float = 0.5,
                 mode: str = "all_to_one", rounds=None):
        super().__init__(rounds)
        self.trigger = check_trigger(trigger)
        self.target = check_number("target", target, low=0, integer=True)
        self.fraction = check_number("fraction", fraction, low=0.0, high=1.0,
                                     low_inclusive=False)
        self.mode = check_choice("mode", mode, ("all_to_one", "all_to_all"))

    def poison_data(self, x, y, *, num_classes, seed):
        x_p, y_p, _ = _backdoor(x, y, self.trigger, self.fraction, target=self.target,
                                mode=self.mode, num_classes=num_classes, seed=seed)
        return np.asarray(x_p, dtype=np.asarray(x).dtype), _same_encoding(
            np.asarray(y_p), y, num_classes)

    def get_config(self):
        return {"trigger": type(self.trigger).__name__, "target": self.target,
                "fraction": self.fraction, "mode": self.mode, **super().get_config()}

    def describe(self):
        return ("backdoor (all-to-all)" if self.mode == "all_to_all"
                else f"backdoor -> {self.target}")


class ScaledUpdate(MaliciousBehaviour):
    """Sends ``global + scale * (local - global)``: an honest direction, boosted (Byzantine
    scaling; Baruch et al. 2019 discuss why plain averaging cannot bound it).

    Args:
        scale: the factor, any finite number (negative values reverse the update). Defaults
            to 10.
        rounds: rounds in which the client attacks (None: all).
    """

    poisons_update = True

    def __init__(self, scale: float = 10.0, *, rounds=None):
        super().__init__(rounds)
        self.scale = check_number("scale", scale)

    def poison_update(self, local, global_, *, num_clients, seed):
        return [g + self.scale * (w - g) for w, g in zip(local, global_)]

    def get_config(self):
        return {"scale": self.scale, **super().get_config()}

    def describe(self):
        return f"scaled update x{self.scale:g}"


class SignFlip(ScaledUpdate):
    """Sends the honest update reversed, ``global - scale * (local - global)`` (sign-flipping
    Byzantine attack; Damaskinos et al. 2018, Li et al. 2019 "RSA").

    Args:
        scale: size of the reversed update, > 0. Defaults to 1.
        rounds: rounds in which the client attacks (None: all).
    """

    def __init__(self, scale: float = 1.0, *, rounds=None):
        scale = check_number("scale", scale, low=0.0, low_inclusive=False)
        super().__init__(-scale, rounds=rounds)

    def get_config(self):
        config = super().get_config()
        config["scale"] = -config["scale"]
        return config

    def describe(self):
        return "sign flip" + (f" x{-self.scale:g}" if self.scale != -1 else "")


class ModelReplacement(Backdoor):
    """Bagdasaryan et al. 2020, "How To Backdoor Federated Learning" (AISTATS): trains a
    backdoored model ``X`` on poisoned data and sends ``global + boost * (X - global)`` so that
    averaging replaces the global model by ``X``.

    With FedAvg over ``n`` equally weighted clients (server learning rate 1) the paper's boost
    is ``gamma = n``, the default (``num_clients`` of the round). Robust aggregators are built
    to refuse such an outlier; :class:`keras_secure.federated.simulate` measures whether they do.

    Args:
        trigger: the backdoor trigger.
        target: the backdoor's target class. Defaults to 0.
        fraction: fraction of the client's examples poisoned. Defaults to 0.5.
        boost: the factor gamma, > 0; None uses the number of clients in the round.
        mode: ``"all_to_one"`` or ``"all_to_all"``.
        rounds: rounds in which the client attacks (None: all). The paper attacks in one
            round late in training.
    """

    poisons_update = True

    def __init__(self, trigger: Trigger, *, target: int = 0, fraction: float = 0.5,
                 boost: float | None = None, mode: str = "all_to_one", rounds=None):
        super().__init__(trigger, target=target, fraction=fraction, mode=mode, rounds=rounds)
        self.boost = check_number("boost", boost, low=0.0, low_inclusive=False, allow_none=True)

    def poison_update(self, local, global_, *, num_clients, seed):
        gamma = float(num_clients) if self.boost is None else self.boost
        return [g + gamma * (w - g) for w, g in zip(local, global_)]

    def get_config(self):
        return {**super().get_config(), "boost": self.boost}

    def describe(self):
        return "model replacement " + ("(all-to-all)" if self.mode == "all_to_all"
                                       else f"-> {self.target}")


class CorruptUpdate(MaliciousBehaviour):
    """Sends a malformed update: the failure (or attack) the server must reject before
    aggregation. For testing a federation's defences.

    Args:
        kind: ``"nan"`` (a NaN in the first array), ``"inf"``, or ``"shape"`` (the first
            array with one extra row). Defaults to ``"nan"``.
        rounds: rounds in which the client misbehaves (None: all).
    """

    poisons_update = True
    KINDS = ("nan", "inf", "shape")

    def __init__(self, kind: str = "nan", *, rounds=None):
        super().__init__(rounds)
        self.kind = check_choice("kind", kind, self.KINDS)

    def poison_update(self, local, global_, *, num_clients, seed):
        out = [np.array(w, copy=True) for w in local]
        first = out[0]
        if self.kind == "shape":
            out[0] = np.concatenate([first, first[:1]], axis=0) if first.ndim else \
                np.stack([first, first])
        else:
            flat = first.reshape(-1)
            flat[0] = np.nan if self.kind == "nan" else np.inf
        return out

    def get_config(self):
        return {"kind": self.kind, **super().get_config()}

    def describe(self):
        return f"malformed update ({self.kind})"


def check_behaviour(value, name: str) -> MaliciousBehaviour:
    if not isinstance(value, MaliciousBehaviour):
        raise TypeError(f"`{name}` must be a keras_secure.federated malicious behaviour "
                        "(LabelFlipping, Backdoor, SignFlip, ScaledUpdate, ModelReplacement, "
                        f"CorruptUpdate). Received: {name} of type {type(value).__name__}")
    return value
