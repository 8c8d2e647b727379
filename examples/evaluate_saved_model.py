"""Save a model and a dataset, then evaluate it with the `keras-secure evaluate` command.

The same as running in a shell:
    keras-secure evaluate model.keras --data data.npz --attacks fgsm,pgd,deepfool \
        --eps 0.1 --l2-eps 1.0 --value-range 0 1

Run: .venv/bin/python examples/evaluate_saved_model.py [OUTPUT_DIR]
"""

import os
import sys
import tempfile

import keras
import numpy as np

import keras_secure as ks
from keras_secure.cli import main

out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
x_train, y_train = ks.datasets.load_digits("train")
x_test, y_test = ks.datasets.load_digits("test")

# A model whose last layer is a softmax: keras_secure attacks its pre-softmax logits.
logits_model = ks.models.train_small_cnn(x_train, y_train, epochs=8)
model = keras.Sequential([logits_model, keras.layers.Softmax()])
model.save(os.path.join(out, "model.keras"))
np.savez(os.path.join(out, "data.npz"), x=x_test[:100], y=y_test[:100])

main(["evaluate", os.path.join(out, "model.keras"), "--data", os.path.join(out, "data.npz"),
      "--attacks", "fgsm,pgd,deepfool", "--eps", "0.1", "--l2-eps", "1.0",
      "--value-range", "0", "1", "--output", os.path.join(out, "report.json")])
