"""Adversarial-training step cost: per-step time of each mode divided by a clean ``fit`` step.

For the digits CNN and a 32x32x3 ConvNet on synthetic data, each configuration trains for a few
epochs with ``fit`` (the first epoch, which traces the step, is excluded) and the median time per
step is divided by the clean model's median step time measured in the same run. Goals:
PGD-k <= 1.1 * (k + 1) x clean; fast <= 2.2 x clean.

Run: ``.venv/bin/python benchmarks/training.py [--epochs 4]``.
"""

from __future__ import annotations

import argparse
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_secure as ks  # noqa: E402
from keras_secure import attacks as A  # noqa: E402
from keras_secure.callbacks import AdversarialTraining  # noqa: E402

from _common import fit_step_time  # noqa: E402


def step_time(build, x, y, callbacks, epochs, batch):
    model = build()
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return fit_step_time(model, x, y, callbacks, epochs, batch)


def bench(title, build, x, y, eps, epochs, batch):
    vr = (0.0, 1.0)
    configs = [("clean", [])]
    for k in (3, 7, 10):
        configs.append((f"PGD-{k} (madry)",
                        [AdversarialTraining(A.PGD(eps, steps=k, value_range=vr, seed=0))]))
    configs += [
        ("TRADES (PGD-7 on KL)", [AdversarialTraining(A.PGD(eps, steps=7, value_range=vr,
                                                            seed=0), mode="trades")]),
        ("fast (FGSM + random start)", [AdversarialTraining(A.FGSM(eps, value_range=vr),
                                                            mode="fast")]),
    ]
    print(f"\n## {title}: {len(x)} examples, batch {batch}\n")
    print("| configuration | ms / step | x clean | goal |")
    print("|---|---|---|---|")
    base = None
    for name, callbacks in configs:
        t = step_time(build, x, y, callbacks, epochs, batch)
        base = base or t
        goal = ""
        if name.startswith("PGD-"):
            k = int(name.split("-")[1].split()[0])
            goal = f"<= {1.1 * (k + 1):.1f}"
        elif name.startswith("fast"):
            goal = "<= 2.2"
        print(f"| {name} | {1000 * t:.1f} | {t / base:.2f} | {goal} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores")
    x, y = ks.datasets.load_digits("train")
    bench("digits CNN", lambda: ks.models.small_cnn(seed=0), x, y, 0.1, args.epochs, 64)
    rng = np.random.default_rng(0)
    xc = rng.random((512, 32, 32, 3), dtype=np.float32)
    yc = rng.integers(0, 10, 512)
    bench("32x32x3 ConvNet (synthetic)", lambda: ks.models.small_cnn((32, 32, 3), seed=0),
          xc, yc, 8 / 255, args.epochs, 64)


if __name__ == "__main__":
    main()
