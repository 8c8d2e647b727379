"""keras_secure: adversarial robustness, privacy and robust RL for Keras 3.

The library runs on Keras 3 with the TensorFlow backend: attacks, layers and callbacks are
TensorFlow graphs that run inside ``model.fit`` and ``tf.function``. Importing it with another
Keras backend raises an ``ImportError`` that says how to switch.

Example:
    >>> import keras_secure as ks
    >>> x, y = ks.datasets.load_digits("test")
    >>> attack = ks.attacks.PGD(eps=0.1, steps=10, value_range=(0.0, 1.0), seed=0)
"""

__version__ = "0.1.0"

import keras as _keras

if _keras.backend.backend() != "tensorflow":  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "keras_secure needs the TensorFlow backend of Keras 3, but Keras is configured with "
        f"backend={_keras.backend.backend()!r}. Set the environment variable "
        "KERAS_BACKEND=tensorflow before importing keras (or set \"backend\": \"tensorflow\" in "
        "~/.keras/keras.json)."
    )

from keras_secure import classifier  # noqa: E402
from keras_secure.classifier import Classifier  # noqa: E402
from keras_secure import (  # noqa: E402
    attacks,
    callbacks,
    datasets,
    distributed,
    evaluation,
    explain,
    layers,
    models,
    poisoning,
    privacy,
    reporting,
    rl,
    training,
)

__all__ = ["Classifier", "attacks", "callbacks", "classifier", "datasets", "distributed",
           "evaluation", "explain", "layers", "models", "poisoning", "privacy", "reporting", "rl", "training",
           "__version__"]
