"""Online poisoning inside ``fit``: batch stages of the training-step hook that trigger and
relabel (backdoor) or relabel (label flipping) a random part of every batch."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_secure.classifier import as_classifier
from keras_secure.poisoning._common import (MODES, check_class, check_fraction, check_pair,
                                            check_seed, eligible, next_labels, relabel_like)
from keras_secure.poisoning.triggers import check_trigger
from keras_secure.training.hook import Stage, StageCallback
from keras_secure.validation import check_choice


def _num_classes(model):
    """The model's number of classes if its structure tells it already, else None."""
    try:
        return as_classifier(model).num_classes
    except RuntimeError:
        return None


class _PoisonStage(Stage):
    """Shared by the online poisoning stages: the per-example Bernoulli draw, the relabelling
    in the batch's label format and the ``poisoned_fraction`` log."""

    transforms_batch = True
    log_names = ("poisoned_fraction",)

    def __init__(self, fraction, seed):
        super().__init__()
        self.fraction = fraction
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._model = None

    def check_model(self, model):
        self._model = model
        k = _num_classes(model)
        if k is not None:
            self.check_classes(k)

    def check_classes(self, num_classes):  # pragma: no cover - overridden
        pass

    def transform(self, model, x, y, sample_weight):
        clf = as_classifier(self._model)
        k = clf.num_classes
        self.check_classes(k)
        labels = clf.labels_tensor(y)
        draw = keras.random.uniform(tf.shape(labels), seed=self.seed_generator)
        mask = draw < self.fraction
        x, new, mask = self.poison(x, labels, mask, k)
        self.record("poisoned_fraction", tf.cast(mask, tf.float32))
        return x, relabel_like(y, tf.where(mask, new, labels)), sample_weight


class _BackdoorStage(_PoisonStage):
    def __init__(self, trigger, fraction, target, mode, seed):
        super().__init__(fraction, seed)
        self.trigger, self.target, self.mode = trigger, target, mode

    def check_model(self, model):
        shape = getattr(model, "input_shape", None)
        if isinstance(shape, tuple) and len(shape) == 4 and None not in shape[1:]:
            self.trigger.check(shape[1:])
        super().check_model(model)

    def check_classes(self, num_classes):
        check_class(self.target, num_classes, "target")

    def poison(self, x, labels, mask, num_classes):
        mask = mask & eligible(labels, self.mode, self.target)
        triggered = self.trigger.apply_tensor(x)
        shape = tf.concat([tf.shape(mask), tf.ones([tf.rank(x) - 1], tf.int32)], 0)
        x = tf.where(tf.reshape(mask, shape), triggered, x)
        return x, next_labels(labels, num_classes, self.mode, self.target), mask


class _FlipStage(_PoisonStage):
    def __init__(self, fraction, source, target, seed):
        super().__init__(fraction, seed)
        self.source, self.target = source, target

    def check_classes(self, num_classes):
        check_pair(self.source, self.target, num_classes)

    def poison(self, x, labels, mask, num_classes):
        if self.source is None:
            shift = keras.random.randint(tf.shape(labels), 1, num_classes,
                                         seed=self.seed_generator, dtype="int32")
            return x, (labels + shift) % num_classes, mask
        return x, tf.fill(tf.shape(labels), self.target), mask & tf.equal(labels, self.source)


class BackdoorInjection(StageCallback):
    """Online backdoor poisoning inside ``fit`` (a batch stage of the training-step hook).

    In every training step, each example of the batch that the backdoor can poison (all-to-one:
    not already of class ``target``) is, with probability ``fraction``, replaced by its
    triggered version and relabelled (``target``, or ``(y + 1) mod k`` all-to-all). The draws
    come from a ``keras.random.SeedGenerator(seed)``: the same seed and data order give the same
    poisoned batches. Labels keep their format (``(n,)``, ``(n, 1)`` or one-hot) and are read
    through the classifier contract. Logs ``poisoned_fraction`` (running mean per epoch).

    Args:
        trigger: a :class:`PatchTrigger` or :class:`BlendedTrigger`.
        fraction: probability that an eligible example of a batch is poisoned, in [0, 1].
        target: the attacker's class (all-to-one). Defaults to 0.
        mode: ``"all_to_one"`` or ``"all_to_all"``. Defaults to ``"all_to_one"``.
        seed: seed of the draws. Defaults to None.

    Raises:
        ValueError: ``fraction`` outside [0, 1], an unknown ``mode``; at ``fit``: ``target``
            out of the model's classes, a trigger that does not fit the model's input shape, an
            uncompiled model.

    Example:
        >>> model.fit(x, y, epochs=5, callbacks=[
        ...     BackdoorInjection(PatchTrigger(2), fraction=0.05, target=0, seed=0)])

    References:
        Gu, Dolan-Gavitt & Garg (2017), BadNets; Chen et al. (2017), blended injection.
    """

    def __init__(self, trigger, fraction: float, target: int = 0, mode: str = "all_to_one",
                 seed: int | None = None):
        self.trigger = check_trigger(trigger)
        self.fraction = check_fraction(fraction)
        self.mode = check_choice("mode", mode, MODES)
        self.target = check_class(target, 2**31 - 1, "target")
        self.seed = check_seed(seed)
        super().__init__(_BackdoorStage(self.trigger, self.fraction, self.target, self.mode,
                                        self.seed))


class LabelFlipInjection(StageCallback):
    """Online label flipping inside ``fit`` (a batch stage of the training-step hook).

    In every training step each example is, with probability ``fraction``, relabelled: to a
    uniformly drawn other class (``source`` and ``target`` None), or - targeted class-pair
    flipping - examples of class ``source`` to ``target``. Seeded through a
    ``keras.random.SeedGenerator``. Logs ``poisoned_fraction``.

    Args:
        fraction: flip probability in [0, 1].
        source: class whose labels are flipped (targeted). Defaults to None.
        target: class they are flipped to (targeted). Defaults to None.
        seed: seed of the draws. Defaults to None.

    Raises:
        ValueError: ``fraction`` outside [0, 1]; only one of ``source``/``target``, equal
            classes; at ``fit``: classes out of the model's range.

    Example:
        >>> model.fit(x, y, callbacks=[LabelFlipInjection(0.2, seed=0)])

    References:
        Biggio, Nelson & Laskov (2011, 2012).
    """

    def __init__(self, fraction: float, source: int | None = None, target: int | None = None,
                 seed: int | None = None):
        self.fraction = check_fraction(fraction)
        source, target = check_pair(source, target)
        self.source, self.target = source, target
        self.seed = check_seed(seed)
        super().__init__(_FlipStage(self.fraction, source, target, self.seed))
