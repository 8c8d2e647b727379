"""Attack throughput: examples/second and cost in forward+backward passes, vs ART; the cost of
the AutoAttack standard suite and of the gradient-masking diagnostics.

For each attack, on the digits CNN (8x8x1, trained) and on a CIFAR-sized ConvNet (32x32x3,
random weights, synthetic images), this prints the examples attacked per second and the ratio
of the attack's time to ONE forward+backward pass of the model over the same batch, measured in
the same run (so PGD-10 ideally costs about 11: ten gradients and a final forward pass).
If adversarial-robustness-toolbox is installed (``make bench-setup``), its FGSM, PGD and
C&W-L2 run on the same Keras model with the same settings and the speed-up of keras_secure over
ART is printed.

The suite section runs ``evaluate_robustness(suite="standard")`` (APGD-CE, APGD-T, FAB-T,
Square-5000 under AutoAttack's protocol: each attack only on the examples still correct) on the
trained digits CNN and prints each attack's time, the examples it ran on and its cost in
forward+backward passes of the whole batch; then the report's diagnostics overhead (the same
evaluation with and without ``diagnostics``).

Run: ``make bench`` or ``.venv/bin/python benchmarks/attacks.py [--batch 256] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_secure as ks  # noqa: E402
from keras_secure import attacks as A  # noqa: E402

VR = (0.0, 1.0)


def timed(fn, repeats):
    fn()  # warm-up: tracing and graph building are not part of the throughput
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def grad_pass(model):
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=model(x, training=False)))
        return tape.gradient(loss, x)
    return step


def our_attacks(eps):
    return [
        ("FGSM", A.FGSM(eps, value_range=VR)),
        ("PGD-10", A.PGD(eps, steps=10, value_range=VR, seed=0)),
        ("PGD-L2-10", A.PGD(eps * 10, steps=10, norm="l2", value_range=VR, seed=0)),
        ("MI-FGSM-10", A.MIFGSM(eps, steps=10, value_range=VR)),
        ("APGD-CE-20", A.APGD(eps, steps=20, value_range=VR, seed=0)),
        ("C&W-L2 5x50", A.CarliniWagnerL2(value_range=VR, steps=50, binary_search_steps=5,
                                          initial_const=0.1, learning_rate=0.1,
                                          abort_early=False)),
        ("DeepFool-50", A.DeepFool(value_range=VR, steps=50)),
        ("Square-200q", A.Square(eps, queries=200, value_range=VR, seed=0)),
    ]


def art_attacks(model, input_shape, eps, batch):
    try:
        from art.attacks.evasion import (
            CarliniL2Method,
            FastGradientMethod,
            ProjectedGradientDescent,
        )
        from art.estimators.classification import TensorFlowV2Classifier
    except ImportError:
        return None
    clf = TensorFlowV2Classifier(
        model=model, nb_classes=10, input_shape=input_shape, clip_values=VR,
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return [
        ("FGSM", FastGradientMethod(clf, eps=eps, batch_size=batch)),
        ("PGD-10", ProjectedGradientDescent(clf, eps=eps, eps_step=2.5 * eps / 10, max_iter=10,
                                            num_random_init=1, batch_size=batch,
                                            verbose=False)),
        ("C&W-L2 5x50", CarliniL2Method(clf, max_iter=50, binary_search_steps=5,
                                        initial_const=0.1, learning_rate=0.1, batch_size=batch,
                                        verbose=False)),
    ]


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def bench_model(title, model, x, y, eps, repeats):
    print(f"\n## {title}: batch of {len(x)} inputs of shape {x.shape[1:]}\n")
    step = grad_pass(model)
    xt, yt = tf.constant(x), tf.constant(y, tf.int32)
    base = timed(lambda: step(xt, yt).numpy(), repeats)
    print(f"one forward+backward pass: {1000 * base:.2f} ms ({len(x) / base:,.0f} examples/s)\n")
    ours = {}
    print("| attack | examples/s | time / (fwd+bwd) | ART examples/s | keras_secure speed-up |")
    print("|---|---|---|---|---|")
    art = art_attacks(model, x.shape[1:], eps, len(x))
    art_times = {}
    if art is not None:
        for name, attack in art:
            # ART runs eagerly (no tracing to warm up). Its C&W runs a Python line search per
            # example and takes minutes per batch: it is timed once on a slice and scaled.
            if name == "C&W-L2 5x50":
                n = min(len(x), 16)
                start = time.perf_counter()
                attack.generate(x=x[:n], y=y[:n])
                art_times[name] = (time.perf_counter() - start) * len(x) / n
            else:
                art_times[name] = timed(lambda a=attack: a.generate(x=x, y=y), repeats)
    for name, attack in our_attacks(eps):
        t = timed(lambda a=attack: a(model, x, y), repeats)
        ours[name] = t
        art_t = art_times.get(name)
        art_cols = (f"{_rate(len(x) / art_t)} | {art_t / t:.1f}x" if art_t else "- | -")
        print(f"| {name} | {_rate(len(x) / t)} | {t / base:.1f} | {art_cols} |")
    if art is None:
        print("\n(adversarial-robustness-toolbox not installed: `make bench-setup` adds it)")
    return base, ours


def bench_suite(model, x, y, eps):
    from keras_secure.evaluation import evaluate_robustness

    print(f"\n## AutoAttack standard suite, L-inf eps={eps:g}, {len(x)} digits\n")
    step = grad_pass(model)
    xt, yt = tf.constant(x), tf.constant(y, tf.int32)
    base = timed(lambda: step(xt, yt).numpy(), 3)
    evaluate_robustness(model, x[:8], y[:8], suite="standard", eps=eps, value_range=VR,
                        diagnostics=False)  # warm-up: tracing is not part of the cost
    start = time.perf_counter()
    report = evaluate_robustness(model, x, y, suite="standard", eps=eps, value_range=VR,
                                 diagnostics=False)
    total = time.perf_counter() - start
    print("| attack (cumulative) | robust accuracy | seconds | time / (fwd+bwd of the batch) |")
    print("|---|---|---|---|")
    for row in report.results:
        print(f"| {row.attack} | {100 * row.adversarial_accuracy:.1f}% | {row.seconds:.2f} | "
              f"{row.seconds / base:.0f} |")
    print(f"| whole suite | {100 * report.worst_case.adversarial_accuracy:.1f}% | {total:.2f} | "
          f"{total / base:.0f} |")
    attacks = [A.PGD(eps, steps=20, value_range=VR, seed=0)]
    evaluate_robustness(model, x[:8], y[:8], attacks)  # warm-up of the diagnostics' attacks
    plain = timed(lambda: evaluate_robustness(model, x, y, attacks, diagnostics=False), 1)
    checked = timed(lambda: evaluate_robustness(model, x, y, attacks), 1)
    print(f"\nPGD-20 report without diagnostics: {plain:.2f} s; with them: {checked:.2f} s "
          f"(diagnostics cost {checked - plain:.2f} s = {(checked - plain) / base:.0f} "
          "forward+backward passes of the batch)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores")

    x_train, y_train = ks.datasets.load_digits("train")
    x_test, y_test = ks.datasets.load_digits("test")
    digits = ks.models.train_small_cnn(x_train, y_train, epochs=10)
    reps = -(-args.batch // len(x_test))
    xd = np.concatenate([x_test] * reps)[:args.batch]
    yd = np.concatenate([y_test] * reps)[:args.batch]
    bench_model("digits CNN (trained)", digits, xd, yd, 0.1, args.repeats)
    bench_suite(digits, xd, yd, 0.1)

    rng = np.random.default_rng(0)
    cifar = ks.models.small_cnn((32, 32, 3), 10, width=32, seed=0)
    xc = rng.random((args.batch, 32, 32, 3), dtype=np.float32)
    yc = rng.integers(0, 10, args.batch)
    bench_model("CIFAR-sized ConvNet (random weights, synthetic images)", cifar, xc, yc,
                8 / 255, args.repeats)


if __name__ == "__main__":
    main()
