"""Chapter 4: differential privacy - a non-private model against DP-SGD models at two epsilon
values: test accuracy, epsilon and membership-inference leakage, measured rather than claimed."""

from __future__ import annotations

import math

import keras

from keras_secure import datasets
from keras_secure.callbacks import DPSGD
from keras_secure.demo.common import compiled_cnn
from keras_secure.privacy import (
    advantage_bound,
    audit_membership,
    noise_multiplier_for,
    poisson_batches,
)

#: runs in the demo's child process, in parallel with the chapters before it (runner.py)
IN_CHILD_PROCESS = True

DELTA = 1e-5
BATCH = 64
CLIP = 1.0
TARGETS = (8.0, 1.0)


def run(ctx) -> None:
    x_train, y_train = datasets.load_digits("train", seed=ctx.seed)
    x_test, y_test = datasets.load_digits("test", seed=ctx.seed)
    n = len(x_train)
    epochs = 5 if ctx.quick else 20
    members = (x_train[:len(x_test)], y_train[:len(x_test)])
    rows = []

    ctx.log(f"training: non-private ({epochs} epochs) ...")
    model = compiled_cnn(ctx.seed, keras.optimizers.SGD(0.05, momentum=0.9))
    model.fit(x_train, y_train, epochs=epochs, batch_size=BATCH, verbose=0)
    rows.append(("Non-private (SGD)", "-", math.inf, model))

    for target in TARGETS:
        sigma = noise_multiplier_for(target, n, BATCH, delta=DELTA, epochs=epochs)
        ctx.log(f"training: DP-SGD, target epsilon {target} (sigma {sigma:.2f}, Poisson "
                f"batches of expected size {BATCH}, ghost clipping) ...")
        dataset, steps = poisson_batches(x_train, y_train, BATCH, seed=ctx.seed)
        dp = DPSGD(CLIP, sigma, num_examples=n, batch_size=BATCH, delta=DELTA,
                   target_epsilon=target, seed=ctx.seed)
        model = compiled_cnn(ctx.seed, keras.optimizers.SGD(0.05, momentum=0.9))
        model.fit(dataset, steps_per_epoch=steps, epochs=epochs, verbose=0, callbacks=[dp])
        rows.append((f"DP-SGD (target eps = {target:g})", f"{sigma:.2f}", dp.epsilon(), model))

    table_rows, results = [], []
    for name, sigma, eps, model in rows:
        ctx.log(f"auditing: {name}")
        accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
        audit = audit_membership(model, members, (x_test, y_test),
                                 attacks=("threshold", "threshold_entropy",
                                          "logistic_regression"))
        bound = advantage_bound(eps, DELTA)
        results.append({"model": name, "noise_multiplier": sigma,
                        "epsilon": eps if math.isfinite(eps) else None,
                        "delta": DELTA, "test_accuracy": accuracy, **{
                            f"auc_{k}": v for k, v in audit.auc.items()},
                        "max_advantage": audit.max_advantage, "advantage_bound": bound})
        eps_text = "inf" if not math.isfinite(eps) else f"{eps:.2f}"
        bound_text = "-" if bound is None else f"{bound:.3f}"
        table_rows.append(
            f"| {name} | {sigma} | {eps_text} | {100 * accuracy:.1f} | "
            f"{audit.auc['threshold']:.3f} | {audit.auc['logistic_regression']:.3f} | "
            f"{audit.max_auc:.3f} | {audit.max_advantage:.3f} | {bound_text} |")
    table = ("| Model | sigma | epsilon (delta = 1e-5) | Test accuracy (%) | AUC loss threshold "
             "| AUC logistic regression | Max AUC | Max advantage | Advantage bound |\n"
             "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(table_rows))
    print("\nPrivacy / utility on the digits - membership inference by TF Privacy's attacks\n")
    print(table, flush=True)
    ctx.results["chapter4_privacy"] = results  # epsilon None: not private
    ctx.section(
        f"The same small CNN trained for {epochs} epochs on the {n} digit training images: "
        "without privacy, and with keras_secure.callbacks.DPSGD (clip norm "
        f"{CLIP}, Poisson-sampled batches of expected size {BATCH} from "
        "keras_secure.privacy.poisson_batches, noise calibrated with noise_multiplier_for to each "
        "target epsilon, RDP accounting). Epsilon is what the accountant reports after training. "
        "Membership inference: TensorFlow Privacy's loss-threshold, entropy-threshold and "
        f"logistic-regression attackers on {len(x_test)} training members against the "
        f"{len(x_test)} test images (keras_secure.privacy.audit_membership); AUC 0.5 means no "
        "measurable leakage. The advantage bound (e^eps - 1 + 2 delta) / (e^eps + 1) holds for "
        "any attacker against an (eps, delta)-DP training run (Kairouz et al. 2015); at a few "
        "hundred examples the audit's own sampling error is about "
        f"{1 / math.sqrt(len(x_test)):.2f} in AUC.\n\n"
        "Table - privacy / utility trade-off\n\n" + table + "\n")
