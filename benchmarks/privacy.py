"""DP-SGD step cost: a DPSGD training step divided by a non-private step of the same model.

Models: the digits CNN, an MLP on the digits, and a 32x32x3 ConvNet on synthetic data; each
with and without XLA (``compile(jit_compile=True)``), measured in the same run. For comparison,
TensorFlow Privacy's ``DPKerasSGDOptimizer`` trains the same digits CNN in tf-keras (it refuses
Keras 3 models) in a subprocess with ``TF_USE_LEGACY_KERAS=1``, against plain tf-keras SGD.
Both DPSGD paths are measured: ``clipping="ghost"`` (per-example norms from one batched
pass) and ``clipping="vectorized"`` (whole-model per-example gradients). Goal (issue): <= 2x
non-DP with ghost clipping on Dense/Conv nets, and >= 3x faster than TensorFlow Privacy.

The three fits of a model are interleaved over ``--rounds`` rounds (this shared machine's speed
drifts by tens of percent within minutes); the table gives medians over the rounds and, in
brackets, the range of the per-round ratios.

Run: ``cd benchmarks && ../.venv/bin/python privacy.py [--no-xla] [--convnet-only]
[--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_secure as ks  # noqa: E402
from keras_secure.privacy.noise import standard_normal  # noqa: E402

from _common import fit_step_time  # noqa: E402

TF_PRIVACY = textwrap.dedent("""
    import os, sys, statistics, time
    sys.skip_tf_privacy_import = True
    import numpy as np, tensorflow as tf
    from sklearn.datasets import load_digits
    from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import DPKerasSGDOptimizer
    d = load_digits(); x = (d.images / 16.0).astype("float32")[..., None]; y = d.target
    x, y = x[:1792], y[:1792]  # every batch must hold num_microbatches (64) examples
    def cnn():
        return tf.keras.Sequential([
            tf.keras.Input((8, 8, 1)),
            tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            tf.keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
            tf.keras.layers.Flatten(), tf.keras.layers.Dense(128, activation="relu"),
            tf.keras.layers.Dense(10)])
    def step_time(optimizer, reduction):
        model = cnn()
        model.compile(optimizer, tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=reduction))
        times = []
        for _ in range(4):
            start = time.perf_counter()
            model.fit(x, y, batch_size=64, epochs=1, verbose=0)
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:]) / (-(-len(x) // 64))
    plain = step_time(tf.keras.optimizers.SGD(0.1), "auto")
    dp = step_time(DPKerasSGDOptimizer(l2_norm_clip=1.0, noise_multiplier=1.1,
                                       num_microbatches=64, learning_rate=0.1), "none")
    print(f"TFP {plain} {dp}")
""")


def mlp():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(256, activation="relu"),
                             keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])


def measure(build, x, y, jit, rounds):
    """Median ms per step of a non-DP, a ghost and a vectorized DPSGD fit of the same model,
    interleaved: ``rounds`` rounds of one fit each (epoch 1 of a fit, which traces the step,
    is left out); returns the medians and each round's DP / non-DP ratios."""
    def compiled():
        keras.utils.set_random_seed(0)
        model = build()
        model.compile(keras.optimizers.SGD(0.1),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit)
        return model

    runs = {"plain": (compiled(), [])}
    for clipping in ("ghost", "vectorized"):
        runs[clipping] = (compiled(), [ks.callbacks.DPSGD(
            1.0, 1.1, num_examples=len(x), batch_size=64, delta=1e-5, sampling="shuffle",
            clipping=clipping, seed=0)])
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, callbacks) in runs.items():
            times[name].append(fit_step_time(model, x, y, callbacks, epochs=4, batch=64))
    ratios = {name: sorted(t / p for t, p in zip(times[name], times["plain"]))
              for name in ("ghost", "vectorized")}
    return {name: statistics.median(t) for name, t in times.items()}, ratios


def step_profile(build, x, y, repeats=15):
    """ms, alone: a plain forward+backward pass of a batch of 64, and the per-step Gaussian
    noise for all the model's weights drawn as DPSGD draws it (``keras.random.normal``) and by
    ``keras_secure.privacy.noise.standard_normal``."""
    model = build()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    xb, yb = tf.constant(x[:64]), tf.constant(y[:64])
    size = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    seeds = keras.random.SeedGenerator(0)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        return tape.gradient(loss, model.trainable_variables)

    fns = {"forward+backward": forward_backward,
           "keras.random.normal": tf.function(lambda: keras.random.normal([size], seed=seeds)),
           "standard_normal": tf.function(lambda: standard_normal([size], seeds))}
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            tf.nest.map_structure(np.asarray, fn())
            times[name].append(time.perf_counter() - start)
    return size, {name: 1000 * statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA rows")
    parser.add_argument("--convnet-only", action="store_true",
                        help="only the 32x32x3 ConvNet, without TensorFlow Privacy")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per model")
    args = parser.parse_args()
    xla_modes = (False,) if args.no_xla or args.convnet_only else (False, True)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; batch 64; "
          f"{args.rounds} interleaved rounds of fit (non-DP, ghost, vectorized), epochs 2-4 "
          "of each\n")
    x, y = ks.datasets.load_digits("all")
    rng = np.random.default_rng(0)
    xc, yc = rng.random((512, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, 512)
    print("| model | XLA | non-DP ms/step | ghost ms/step | ghost / non-DP (rounds) | "
          "vectorized ms/step | vectorized / non-DP (rounds) |")
    print("|---|---|---|---|---|---|---|")
    models = [("digits CNN", lambda: ks.models.small_cnn(seed=0), x, y),
              ("digits MLP (256-256)", mlp, x, y),
              ("32x32x3 ConvNet", lambda: ks.models.small_cnn((32, 32, 3), seed=0), xc, yc)]
    for name, build, xs, ys in models[-1:] if args.convnet_only else models:
        for jit in xla_modes:
            ms, ratios = measure(build, xs, ys, jit, args.rounds)
            spread = {k: f"{r[0]:.2f}-{r[-1]:.2f}" for k, r in ratios.items()}
            print(f"| {name} | {'yes' if jit else 'no'} | {1000 * ms['plain']:.1f} | "
                  f"{1000 * ms['ghost']:.1f} | {ms['ghost'] / ms['plain']:.2f} "
                  f"({spread['ghost']}) | {1000 * ms['vectorized']:.1f} | "
                  f"{ms['vectorized'] / ms['plain']:.2f} ({spread['vectorized']}) |",
                  flush=True)
    size, ms = step_profile(models[-1][1], xc, yc)
    print(f"\n32x32x3 ConvNet, pieces of a step alone (ms, medians): "
          + ", ".join(f"{name} {t:.1f}" for name, t in ms.items())
          + f" (noise: {size:,} weights)", flush=True)
    if args.convnet_only:
        return
    result = subprocess.run([sys.executable, "-c", TF_PRIVACY], capture_output=True, text=True,
                            env={**os.environ, "TF_USE_LEGACY_KERAS": "1"}, timeout=1800)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("TFP ")), None)
    if line is None:
        print("\nTensorFlow Privacy run failed:\n" + result.stderr[-2000:])
        return
    plain, dp = map(float, line.split()[1:])
    print(f"\nTensorFlow Privacy DPKerasSGDOptimizer (tf-keras, same digits CNN, 64 microbatches): "
          f"{1000 * dp:.1f} ms/step vs {1000 * plain:.1f} plain tf-keras SGD = "
          f"{dp / plain:.2f}x non-DP")


if __name__ == "__main__":
    main()
