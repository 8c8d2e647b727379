"""Randomized-smoothing certification throughput vs raw batched inference of the base model.

For the digits CNN and a CIFAR-sized ConvNet, this prints the noisy samples evaluated per second
by ``RandomizedSmoothing.sample_counts`` / ``certify`` (noise drawn and votes counted in-graph)
and by plain batched inference of the base classifier on the same number of inputs per forward
pass, measured in the same run (interleaved rounds, medians), and their ratio (goal: >= 0.95 on
the ConvNet). A profile line per model shows where the time of one chunk goes: the forward
pass, the exact Gaussian draw keras_secure uses (``standard_normal``: Box-Muller on Philox
uniforms) and ``tf.random.stateless_normal`` (what ``keras.random.normal`` runs), each alone.

Run: ``.venv/bin/python benchmarks/smoothing.py [--batch 2000] [--n 20000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_secure as ks  # noqa: E402
from keras_secure.layers import RandomizedSmoothing  # noqa: E402
from keras_secure.privacy.noise import standard_normal  # noqa: E402


def bench(title, base, x, batch, n, repeats):
    infer = tf.function(lambda b: tf.argmax(base(b, training=False), -1))
    # distinct inputs, like the noisy copies certification evaluates
    noisy = np.repeat(x[:1], batch, axis=0) + np.random.default_rng(0).normal(
        0, 0.25, (batch, *x.shape[1:]))
    inputs = tf.constant(noisy.astype(np.float32))
    passes = max(1, (len(x) * n) // batch)

    def raw():
        for _ in range(passes):
            infer(inputs).numpy()

    smoothed = RandomizedSmoothing(base, sigma=0.25, seed=0)

    def counts():
        smoothed.sample_counts(x, n, batch)

    def certify():
        smoothed.certify(x, n0=100, n=n, alpha=0.001, batch_size=batch)

    # This machine's speed drifts by tens of percent between runs: interleave the three
    # measurements and take medians, so that the ratios compare like with like.
    for fn in (raw, counts, certify):
        fn()
    times = {raw: [], counts: [], certify: []}
    for _ in range(repeats):
        for fn in times:
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    raw_rate = passes * batch / statistics.median(times[raw])
    count_rate = len(x) * n / statistics.median(times[counts])
    cert_rate = len(x) * (n + 100) / statistics.median(times[certify])
    # per-round ratios (each round's three timings are back to back): their spread shows the
    # machine's drift during the run
    rounds = sorted(len(x) * (n + 100) / t_cert / (passes * batch / t_raw)
                    for t_raw, t_cert in zip(times[raw], times[certify]))
    print(f"| {title} | {raw_rate:,.0f} | {count_rate:,.0f} | {count_rate / raw_rate:.2f} | "
          f"{cert_rate:,.0f} | {cert_rate / raw_rate:.2f} | {rounds[0]:.2f}-{rounds[-1]:.2f} |",
          flush=True)
    return profile(base, inputs, repeats)


def profile(base, inputs, repeats):
    """ms for one chunk: forward pass, keras_secure's Gaussian draw, TensorFlow's."""
    shape = tf.shape(inputs)
    generator = tf.random.Generator.from_seed(0)
    seed_generator = keras.random.SeedGenerator(0)
    fns = {
        "forward": tf.function(lambda: tf.argmax(base(inputs, training=False), -1)),
        "standard_normal": tf.function(lambda: standard_normal(shape, seed_generator)),
        "tf.random.stateless_normal": tf.function(lambda: tf.random.stateless_normal(
            shape, seed=generator.make_seeds(1)[:, 0])),
    }
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(3 * repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn().numpy()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2000, help="noisy inputs per forward pass")
    parser.add_argument("--n", type=int, default=20000, help="noisy samples per example")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; {args.examples} examples x "
          f"{args.n} samples, {args.batch} inputs per forward pass\n")
    print("| model | raw inference (inputs/s) | sample_counts (samples/s) | ratio | "
          "certify (samples/s) | ratio | certify ratio per round |")
    print("|---|---|---|---|---|---|---|")
    x_train, y_train = ks.datasets.load_digits("train")
    digits = ks.models.train_small_cnn(x_train, y_train, epochs=3)
    profiles = {"digits CNN": bench("digits CNN", digits, x_train[:args.examples], args.batch,
                                    args.n, args.repeats)}
    cifar = ks.models.small_cnn((32, 32, 3), 10, seed=0)
    xc = np.random.default_rng(0).random((args.examples, 32, 32, 3), dtype=np.float32)
    profiles["CIFAR-sized ConvNet"] = bench("CIFAR-sized ConvNet", cifar, xc, args.batch // 4,
                                            args.n // 10, args.repeats)
    print("\nOne chunk alone (ms, medians; the noise of a chunk has as many values as its inputs):")
    for title, times in profiles.items():
        print(f"  {title}: " + ", ".join(f"{name} {ms:.1f}" for name, ms in times.items()))


if __name__ == "__main__":
    main()
