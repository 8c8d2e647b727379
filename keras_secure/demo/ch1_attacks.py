"""Chapter 1: train a small CNN and measure it under every attack (Table 1), per class, with
pictures of adversarial examples and accuracy-vs-eps curves. Quick mode: 8x8 digits at L-inf eps
0.1; full mode: MNIST at L-inf eps 0.3 (Madry et al. 2018)."""

from __future__ import annotations

from keras_secure import attacks as A
from keras_secure.demo.common import VALUE_RANGE, demo_data, train_cnn
from keras_secure.evaluation import evaluate_robustness
from keras_secure.evaluation.curves import robustness_curve

#: the quick mode's budgets (8x8 digits); full mode takes MNIST's from demo_data
LINF_EPS = 0.1
L2_EPS = 1.0


def table1_attacks(quick: bool, seed: int, linf_eps: float = LINF_EPS,
                   l2_eps: float = L2_EPS) -> list[A.Attack]:
    """The attacks of the demo's Table 1 at the given budgets (smaller budgets if ``quick``)."""
    vr = VALUE_RANGE
    return [
        A.FGSM(linf_eps, value_range=vr),
        A.PGD(linf_eps, steps=10 if quick else 20, value_range=vr, seed=seed),
        A.MIFGSM(linf_eps, steps=10, value_range=vr),
        A.APGD(linf_eps, steps=20 if quick else 50, value_range=vr, seed=seed),
        A.Square(linf_eps, queries=300 if quick else 500, value_range=vr, seed=seed),
        # Digit pixels sit at 0/1, where C&W's tanh change of variables saturates; a larger
        # learning rate than the paper's 0.01 reaches the minimal perturbations in 50 steps.
        A.CarliniWagnerL2(value_range=vr, eps=l2_eps, steps=50,
                          binary_search_steps=5 if quick else 4, initial_const=0.1,
                          learning_rate=0.1),
        A.DeepFool(value_range=vr, eps=l2_eps),
    ]


def run(ctx) -> None:
    data = demo_data(ctx)
    linf, l2 = data.linf_eps, data.l2_eps
    n_eval = 200
    x_test, y_test = data.x_test[:n_eval], data.y_test[:n_eval]
    epochs = 10 if ctx.quick else 8
    ctx.log(f"training a small CNN on {len(data.x_train)} images of {data.name} ...")
    model = train_cnn(data, epochs, ctx.seed)
    ctx.log(f"attacking {len(x_test)} test images: L-inf eps={linf:g}, L2 eps={l2:g}")
    report = evaluate_robustness(model, x_test, y_test,
                                 table1_attacks(ctx.quick, ctx.seed, linf, l2), verbose=2,
                                 keep_adversarial=True)
    table = report.table(full=True)
    print(f"\nTable 1 - accuracy of a standard CNN under attack ({data.name})\n", flush=True)
    print(table, flush=True)
    ctx.results["chapter1"] = report.to_dict()
    ctx.results["chapter1_per_class"] = report.per_class()

    eps_grid = [0.05, 0.1, 0.2] if ctx.quick else [0.1, 0.2, 0.3]
    n_curve = 100
    ctx.log(f"accuracy vs eps for FGSM / PGD / APGD / Square on {n_curve} images ...")
    curve = robustness_curve(model, x_test[:n_curve], y_test[:n_curve], {
        "FGSM": lambda e: A.FGSM(e, value_range=VALUE_RANGE),
        "PGD": lambda e: A.PGD(e, steps=10 if ctx.quick else 20, value_range=VALUE_RANGE,
                               seed=ctx.seed),
        "APGD-CE": lambda e: A.APGD(e, steps=20, value_range=VALUE_RANGE, seed=ctx.seed),
        "Square": lambda e: A.Square(e, queries=200,
                                     value_range=VALUE_RANGE, seed=ctx.seed),
    }, eps_grid, diagnostics=False)  # Table 1's report carries the masking checks
    ctx.results["chapter1_eps_curve"] = {"eps": eps_grid, **{
        name: [float(v) for v in acc] for name, acc in curve.accuracy.items()},
        "worst_case": [float(v) for v in curve.worst_case]}
    bars = _plot(ctx, report)
    curve_file = "ch1_accuracy_vs_eps.png"
    curve.plot(path=ctx.path(curve_file))
    ctx.section(
        f"A small CNN trained on {data.name}, attacked on held-out test images. L-inf "
        f"attacks use eps={linf:g}"
        + ("" if ctx.quick else " (the canonical MNIST threat model of Madry et al. 2018)")
        + f"; the minimal-norm L2 attacks (C&W, DeepFool) count as successful only within an "
        f"L2 budget of {l2:g}. There is one worst-case row per threat model (L-inf eps "
        f"{linf:g}, L2 eps {l2:g}): it counts an example as robust only if it survives every "
        "attack of that threat model; worst cases are never taken across threat models. The "
        "per-class table shows which digits the attacks break most easily, and the pictures "
        "show what the most successful attack did to the first images it fooled.")
    ctx.robustness_report(report, "Table 1 - accuracy under attack",
                          grid_file="ch1_adversarial_examples.png")
    ctx.section(
        f"![accuracy under attack]({bars})\n\n"
        f"Accuracy against the L-inf budget on {n_curve} test images "
        "(keras_secure.evaluation.curves.robustness_curve; the black line is the worst case "
        "over the four attacks at each eps):\n\n" + curve.table() + "\n\n"
        f"![accuracy vs eps]({curve_file})\n")


def _plot(ctx, report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.attack for r in report.rows]
    acc = [100 * r.adversarial_accuracy for r in report.rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(names[::-1], acc[::-1], color="tab:red")
    ax.axvline(100 * report.clean_accuracy, color="k", ls="--", label="clean")
    ax.set_xlabel("accuracy under attack (%)")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right")
    fig.tight_layout()
    bars = "ch1_accuracy_under_attack.png"
    fig.savefig(ctx.path(bars), dpi=100)
    plt.close(fig)
    return bars
