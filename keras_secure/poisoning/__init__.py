"""Data poisoning: attacks on the training set, detection of poisoned samples, repair.

Attacks (each a dataset transform returning ``(x, y, mask)`` and, for label flipping and
backdoors, a training-hook batch stage that poisons inside ``fit``):

- label flipping, random or targeted class pair (:func:`flip_labels`,
  :class:`LabelFlipInjection`; Biggio et al. 2011/2012);
- backdoors with a BadNets patch (:class:`PatchTrigger`; Gu et al. 2017) or a blended pattern
  (:class:`BlendedTrigger`; Chen et al. 2017), all-to-one or all-to-all (:func:`backdoor`,
  :class:`BackdoorInjection`);
- clean-label feature collision, Poison Frogs (:class:`FeatureCollision`,
  :func:`clean_label_poison`; Shafahi et al. 2018).

Metrics: :func:`clean_accuracy`, :func:`attack_success_rate`,
:func:`targeted_misclassification`. Detection: :func:`spectral_signatures` (Tran et al. 2018),
:func:`activation_clustering` (Chen et al. 2018), :func:`tracin_self_influence` (Pruthi et al.
2020), scored by :func:`detection_metrics`. Repair: :func:`fine_pruning` (Liu et al. 2018),
:func:`pruning_curve`, :func:`remove_and_retrain`. See docs/poisoning.md.

Example:
    >>> from keras_secure import poisoning as P
    >>> x_p, y_p, mask = P.backdoor(x, y, P.PatchTrigger(2), fraction=0.05, target=0, seed=0)
    >>> model.fit(x_p, y_p, epochs=10)
    >>> P.attack_success_rate(model, x_test, y_test, P.PatchTrigger(2), target=0)
"""

from keras_secure.poisoning._common import hidden_activations
from keras_secure.poisoning.clean_label import FeatureCollision, clean_label_poison
from keras_secure.poisoning.detection import (DetectionResult, TracInCheckpoints,
                                              activation_clustering, detection_metrics,
                                              spectral_signatures, tracin_self_influence)
from keras_secure.poisoning.flipping import flip_labels
from keras_secure.poisoning.metrics import (attack_success_rate, clean_accuracy,
                                            targeted_misclassification)
from keras_secure.poisoning.online import BackdoorInjection, LabelFlipInjection
from keras_secure.poisoning.repair import (FinePruningResult, channel_activity, fine_pruning,
                                           last_conv_layer, prune, pruning_curve,
                                           remove_and_retrain)
from keras_secure.poisoning.triggers import (BlendedTrigger, PatchTrigger, Trigger, backdoor,
                                             triggered_test_set)

__all__ = [
    "BackdoorInjection", "BlendedTrigger", "DetectionResult", "FeatureCollision",
    "FinePruningResult", "LabelFlipInjection", "PatchTrigger", "TracInCheckpoints", "Trigger",
    "activation_clustering", "attack_success_rate", "backdoor", "channel_activity",
    "clean_accuracy", "clean_label_poison", "detection_metrics", "fine_pruning", "flip_labels",
    "hidden_activations", "last_conv_layer", "prune", "pruning_curve", "remove_and_retrain",
    "spectral_signatures", "targeted_misclassification", "tracin_self_influence",
    "triggered_test_set",
]
