"""Detection cost: time of each poisoned-sample detector on N training samples, divided by one
forward pass of the model over the same N samples, measured in the same run.

The model is the digits CNN trained for 6 epochs on the digits with 5% BadNets-patch poison
(TracIn checkpoints kept each epoch). Each detector runs `--repeats` times after one warm-up
call (which traces its functions); the median is reported. The forward pass is the classifier
contract's batched prediction (`predict_labels`), also after a warm-up.

Run: ``.venv/bin/python benchmarks/poisoning.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_secure as ks  # noqa: E402
from keras_secure import poisoning as P  # noqa: E402
from keras_secure.classifier import as_classifier  # noqa: E402

from attacks import timed  # noqa: E402  (median of repeats after a warm-up call)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    x, y = ks.datasets.load_digits("train")
    x_p, y_p, mask = P.backdoor(x, y, P.PatchTrigger(2), 0.05, target=0, seed=0)
    keras.utils.set_random_seed(0)
    model = ks.models.small_cnn(seed=0)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ckpt = P.TracInCheckpoints()
    model.fit(x_p, y_p, epochs=6, batch_size=64, verbose=0, callbacks=[ckpt])
    conv = model.layers[2].name
    clf = as_classifier(model)
    n = len(x_p)
    forward = timed(lambda: clf.predict_labels(x_p), args.repeats)
    detectors = {
        "spectral signatures": lambda: P.spectral_signatures(model, x_p, y_p, layer=conv),
        "activation clustering (PCA)": lambda: P.activation_clustering(model, x_p, y_p,
                                                                       layer=conv),
        "activation clustering (ICA)": lambda: P.activation_clustering(model, x_p, y_p,
                                                                       layer=conv, reduce="ica"),
        f"TracIn, {len(ckpt.checkpoints)} checkpoints": lambda: P.tracin_self_influence(
            model, x_p, y_p, ckpt.checkpoints),
        "TracIn, 1 checkpoint": lambda: P.tracin_self_influence(model, x_p, y_p),
    }
    print(f"\n## Detection on N = {n} training samples (5% poisoned), digits CNN\n")
    print(f"one forward pass over the N samples: {1000 * forward:.1f} ms\n")
    print("| detector | ms | x forward pass | AUC |")
    print("|---|---|---|---|")
    for name, fn in detectors.items():
        t = timed(fn, args.repeats)
        auc = fn().evaluate(mask)["auc"]
        print(f"| {name} | {1000 * t:.1f} | {t / forward:.1f} | {auc:.3f} |", flush=True)


if __name__ == "__main__":
    main()
