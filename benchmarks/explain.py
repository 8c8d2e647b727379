"""Attribution and detection cost, against one forward pass of the model, in the same run.

On the digits CNN (8x8x1, trained for a few epochs), for each attribution method of
keras_secure.explain (on the inputs and on the hidden layer before the logits) this prints the
time per explained input (predicted class, after a warm-up call that traces shap's graphs) and
its ratio to ONE batched forward pass per input of the same model; then the detection time per
input of a fitted SHAP and LIME AttributionDetector (attribution + logistic regression).

Run: ``.venv/bin/python benchmarks/explain.py [--n 64] [--background 30]``.
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
from keras_secure.explain import AttributionDetector, Explainer  # noqa: E402

VR = (0.0, 1.0)


def per_input(fn, n, repeats=3):
    fn()  # warm-up: tracing is not part of the throughput
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="inputs explained per timing")
    parser.add_argument("--background", type=int, default=30)
    args = parser.parse_args()
    x, y = ks.datasets.load_digits("train")
    x_test, y_test = ks.datasets.load_digits("test")
    model = ks.models.train_small_cnn(x, y, epochs=5, seed=0)
    batch = tf.constant(x_test[:args.n])
    forward = tf.function(lambda v: model(v, training=False))
    t_forward = per_input(lambda: forward(batch).numpy(), args.n, repeats=20)
    print(f"one forward pass (batched, {args.n} inputs): {1e6 * t_forward:.1f} us per input")
    background = x[-args.background:]
    layer = model.layers[-2].name
    rows = [("deep", None, None), ("gradient", None, 200), ("permutation", None, None),
            ("lime", None, 300), ("input_x_gradient", None, None),
            ("deep", layer, None), ("gradient", layer, 200), ("permutation", layer, None),
            ("lime", layer, 300)]
    print(f"\n| method | explained | samples | time per input (ms) | x forward pass |\n"
          "|---|---|---|---|---|")
    for method, where, samples in rows:
        e = Explainer(model, background, method, layer=where, num_samples=samples)
        n = args.n if method not in ("permutation", "lime") else max(4, args.n // 4)
        t = per_input(lambda: e.explain(x_test[:n]), n, repeats=1)
        used = e.num_samples or ("whole background" if method == "deep" else "-")
        print(f"| {method} | {where or 'inputs'} | {used} | "
              f"{1e3 * t:.2f} | {t / t_forward:.0f} |", flush=True)
    attacks = [A.FGSM(0.1, value_range=VR), A.PGD(0.1, steps=10, value_range=VR, seed=0)]
    print("\n| detector | detection time per input (ms) | x forward pass |\n|---|---|---|")
    for name, method, samples in [("SHAP (deep, hidden layer)", "deep", None),
                                  ("LIME (hidden layer)", "lime", 300)]:
        e = Explainer(model, background, method, layer=layer, num_samples=samples)
        det = AttributionDetector(e).fit(x[:200], y[:200], attacks=attacks)
        n = args.n if method == "deep" else max(4, args.n // 4)
        t = per_input(lambda: det.decision_function(x_test[:n]), n, repeats=1)
        print(f"| {name} | {1e3 * t:.2f} | {t / t_forward:.0f} |", flush=True)


if __name__ == "__main__":
    main()
