"""Chapter 3: adversarial training and defensive distillation (the seed paper's Table 2 rows
"Adversarial Training" and "Defensive Distillation"), with robust accuracy monitored per epoch.
Quick mode: 8x8 digits at L-inf eps 0.1; full mode: MNIST at L-inf eps 0.3 (Madry et al. 2018)."""

from __future__ import annotations

import keras

from keras_secure import attacks as A
from keras_secure import models
from keras_secure.callbacks import AdversarialTraining, RobustnessMonitor, defensive_distillation
from keras_secure.demo.common import VALUE_RANGE, compiled_cnn, demo_data
from keras_secure.evaluation import evaluate_robustness


def run(ctx) -> None:
    data = demo_data(ctx)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    eps, l2_eps = data.linf_eps, data.l2_eps
    x_eval, y_eval = (x_test[:100], y_test[:100]) if ctx.quick else (x_test[:100], y_test[:100])
    epochs = 4 if ctx.quick else 8
    # At MNIST's eps 0.3 training starts on a linear eps ramp (Gowal et al. 2018 use one too):
    # from the full budget at the first step, the small CNN stays at chance.
    warmup = 0 if ctx.quick else 3
    train_attack = A.PGD(eps, steps=5 if ctx.quick else 7, value_range=VALUE_RANGE,
                         seed=ctx.seed)
    configs = [
        ("Standard training", []),
        (f"Adversarial training (PGD-{train_attack.steps}, Madry)",
         [AdversarialTraining(train_attack, warmup_epochs=warmup)]),
        ("TRADES (beta = 6)", [AdversarialTraining(train_attack, mode="trades", beta=6.0,
                                                   warmup_epochs=warmup)]),
        ("Fast adversarial training (FGSM + random start)",
         [AdversarialTraining(train_attack, mode="fast", warmup_epochs=warmup)]),
    ]
    trained, curves = {}, {}
    for name, callbacks in configs:
        ctx.log(f"training: {name} ({epochs} epochs) ...")
        monitor = RobustnessMonitor(x_test, y_test, A.PGD(eps, steps=10, value_range=VALUE_RANGE,
                                                          seed=ctx.seed), max_samples=100)
        model = compiled_cnn(ctx.seed, keras.optimizers.Adam(2e-3), data.input_shape, data.width)
        model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0,
                  callbacks=[*callbacks, monitor])
        trained[name] = model
        curves[name] = [v for _, v in monitor.history]
    ctx.log(f"training: Defensive distillation (T = 50, 2 x {epochs} epochs) ...")
    _, student = defensive_distillation(lambda: models.small_cnn(data.input_shape,
                                                                 width=data.width,
                                                                 seed=ctx.seed), x_train,
                                        y_train, temperature=50.0, epochs=epochs, seed=ctx.seed)
    trained["Defensive distillation (T = 50)"] = student

    steps = 10 if ctx.quick else 20
    evaluation = [
        A.FGSM(eps, value_range=VALUE_RANGE),
        A.PGD(eps, steps=steps, value_range=VALUE_RANGE, seed=ctx.seed),
        A.PGD(eps, steps=steps, loss="margin", value_range=VALUE_RANGE, seed=ctx.seed),
    ]
    if not ctx.quick:  # the quick demo's time budget: C&W in full mode only
        evaluation.append(A.CarliniWagnerL2(value_range=VALUE_RANGE, eps=l2_eps, steps=50,
                                            binary_search_steps=4, initial_const=0.1,
                                            learning_rate=0.1))
    rows = []
    for name, model in trained.items():
        ctx.log(f"attacking: {name}")
        report = evaluate_robustness(model, x_eval, y_eval, evaluation, seed=ctx.seed)
        fgsm, pgd, margin, *cw = report.results
        rows.append([name, fgsm.clean_accuracy, fgsm.adversarial_accuracy,
                     pgd.adversarial_accuracy, margin.adversarial_accuracy,
                     cw[0].adversarial_accuracy if cw else float("nan"),
                     report.worst_case_for("linf", eps).adversarial_accuracy,
                     [f["flag"] for f in report.flags]])
    table = ("| Training | Clean (%) | FGSM (%) | PGD-CE (%) | PGD-margin (%) | C&W-L2 (%) | "
             f"Worst case L-inf {eps:g} (%) | Masking flags |\n|---|---|---|---|---|---|---|---|\n"
             + "\n".join("| " + " | ".join([r[0]] + [_pct(v) for v in r[1:-1]]
                                           + [", ".join(r[-1]) or "none"]) + " |"
                         for r in rows))
    print("\nTable 2 (Adversarial Training, Defensive Distillation) - accuracy under attack, "
          f"{len(x_eval)} test images of {data.name}\n")
    print(table, flush=True)
    ctx.results["chapter3_training"] = [
        dict(zip(["training", "clean", "fgsm", "pgd_ce", "pgd_margin", "cw", "worst_case_linf",
                  "flags"], r))
        for r in rows]
    ctx.results["chapter3_val_robust_accuracy"] = curves
    plot = ctx.line_plot("ch3_robust_accuracy_per_epoch.png", list(range(1, epochs + 1)),
                         curves, "epoch", "val_robust_accuracy (%)", size=(7, 4))
    ctx.section(
        f"Each model is the same small CNN trained for {epochs} epochs on {data.name}; the "
        f"adversarial modes generate PGD-{train_attack.steps} / FGSM examples at L-inf eps={eps:g} "
        "on the fly "
        "inside `fit` (keras_secure.callbacks.AdversarialTraining"
        + (f", with eps ramped up linearly over the first {warmup} epochs" if warmup else "")
        + f"). Evaluation on {len(x_eval)} test images: FGSM, PGD with the "
        "cross-entropy and with the margin loss, and C&W-L2 within L2 "
        f"{l2_eps:g}" + (" (full mode only: n/a in the quick demo)" if ctx.quick else "")
        + ". Defensive distillation saturates its softmax, which zeroes the plain float32 "
        "gradient of the cross-entropy (gradient masking against a naive attacker); "
        "keras_secure's PGD on the cross-entropy steps along the log-sum-exp margin instead "
        "and, like the margin loss and C&W, is not fooled.\n\n"
        "Table 2 - Adversarial Training and Defensive Distillation (accuracy %)\n\n" + table
        + "\n\nRobust accuracy under PGD-10 on 100 test images after each epoch "
        "(keras_secure.callbacks.RobustnessMonitor, logged as `val_robust_accuracy`):\n\n"
        f"![robust accuracy per epoch]({plot})\n")


def _pct(value) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}"  # NaN: not run in quick mode
