"""FAB's cost and strength against DeepFool, C&W and APGD on the digits CNN, in one run.

For each attack this prints, on one batch of digits: the seconds per batch (tracing excluded:
each attack is first called on two examples), the ratio of that time to ONE forward+backward
pass of the model over the same batch measured in the same run, the success rate on the
correctly classified inputs and the median L2 and L-inf norms of the successful perturbations.
Unbounded minimal-norm attacks (FAB, FAB-T, DeepFool, C&W) are compared by their norms;
budgeted ones (FAB-T and APGD-CE at L-inf eps) by their success rate. A last table compares
three ways of computing the Jacobian of all logits, which untargeted FAB needs each iteration.

Run: ``.venv/bin/python benchmarks/fab.py [--batch 256] [--steps 100]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_secure as ks  # noqa: E402
from keras_secure import attacks as A  # noqa: E402
from keras_secure.attacks.base import logits_function  # noqa: E402
from keras_secure.attacks.fab import FAB  # noqa: E402

from attacks import grad_pass, timed  # noqa: E402  (benchmarks/attacks.py)

VR = (0.0, 1.0)


def attacks(steps: int, eps: float):
    return [
        ("FAB-L2", FAB(norm="l2", steps=steps, value_range=VR)),
        ("FAB-Linf", FAB(norm="linf", steps=steps, value_range=VR)),
        ("FAB-T-L2 (9 targets)", FAB(norm="l2", steps=steps, target_classes=9, value_range=VR)),
        ("DeepFool-50", A.DeepFool(steps=50, value_range=VR)),
        ("C&W-L2 6x100", A.CarliniWagnerL2(value_range=VR, steps=100, binary_search_steps=6,
                                           initial_const=0.1, learning_rate=0.1)),
        (f"FAB-T-Linf (9 targets) eps={eps:g}",
         FAB(eps, norm="linf", steps=steps, target_classes=9, value_range=VR, seed=0)),
        (f"APGD-CE-100 eps={eps:g}", A.APGD(eps, steps=100, value_range=VR, seed=0)),
    ]


def jacobians(model, x):
    """Seconds per Jacobian of all logits: batch_jacobian (pfor), a loop over classes, and
    one backward pass of a batch tiled once per class."""
    f = logits_function(model)
    k = int(f(x[:1]).shape[-1])

    @tf.function
    def pfor(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = f(x)
        return tape.batch_jacobian(z, x)

    @tf.function
    def loop(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            z = f(x)
            columns = [z[:, i] for i in range(k)]
        return tf.stack([tape.gradient(c, x) for c in columns], axis=1)

    @tf.function
    def tiled(x):
        n = tf.shape(x)[0]
        copies = tf.repeat(x, k, axis=0)
        with tf.GradientTape() as tape:
            tape.watch(copies)
            picked = tf.reduce_sum(f(copies) * tf.tile(tf.eye(k), [n, 1]))
        return tf.reshape(tape.gradient(picked, copies), tf.concat([[n, k], tf.shape(x)[1:]], 0))

    xt = tf.constant(x)
    reference = pfor(xt).numpy()
    out = {}
    for name, fn in (("batch_jacobian (pfor), used", pfor), ("loop over classes", loop),
                     ("tiled batch, one backward", tiled)):
        assert np.allclose(fn(xt).numpy(), reference, atol=1e-5), name
        out[name] = timed(lambda fn=fn: fn(xt).numpy(), 5)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores")

    x_train, y_train = ks.datasets.load_digits("train")
    x_test, y_test = ks.datasets.load_digits("test")
    model = ks.models.train_small_cnn(x_train, y_train, epochs=12, seed=0)
    x = np.resize(x_test, (args.batch, *x_test.shape[1:]))  # the test set, cycled
    y = np.resize(y_test, args.batch)
    clf = ks.classifier.as_classifier(model)
    correct = clf.predict_labels(x) == y

    step = grad_pass(model)
    xt, yt = tf.constant(x), tf.constant(y, tf.int32)
    base = timed(lambda: step(xt, yt).numpy(), 5)
    print(f"\n## digits CNN: batch of {len(x)} ({correct.sum()} correctly classified), "
          f"FAB steps {args.steps}\n")
    print(f"one forward+backward pass: {1000 * base:.2f} ms\n")
    print("| attack | seconds | time / (fwd+bwd) | success | median L2 | median Linf |")
    print("|---|---|---|---|---|---|")
    for name, attack in attacks(args.steps, args.eps):
        attack(model, x[:2], y[:2])  # tracing
        start = time.perf_counter()
        x_adv = attack(model, x, y)
        seconds = time.perf_counter() - start
        fooled = correct & (clf.predict_labels(x_adv) != y)
        delta = (x_adv - x).reshape(len(x), -1)[fooled]
        l2 = np.median(np.sqrt((delta.astype(np.float64) ** 2).sum(1))) if len(delta) else np.nan
        linf = np.median(np.abs(delta).max(1)) if len(delta) else np.nan
        print(f"| {name} | {seconds:.1f} | {seconds / base:.0f} | "
              f"{fooled.sum() / correct.sum():.3f} | {l2:.4f} | {linf:.4f} |")

    print("\n## Jacobian of all logits, same batch\n")
    print("| method | ms | / (fwd+bwd) |")
    print("|---|---|---|")
    for name, seconds in jacobians(model, x).items():
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / base:.1f} |")


if __name__ == "__main__":
    main()
