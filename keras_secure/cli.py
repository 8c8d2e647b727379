"""The ``keras-secure`` command.

``keras-secure demo [--quick]`` runs the library's story end to end on data that ships with the
install and writes a report; ``keras-secure evaluate MODEL.keras --data FILE.npz`` prints the
robustness table of a saved model.
"""

from __future__ import annotations

import argparse
import os
import sys

EVALUATE_ATTACKS = ("fgsm", "pgd", "mifgsm", "apgd", "square", "cw", "deepfool")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-secure",
        description="Attack, defend and measure Keras models (keras_secure).")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the end-to-end demo and write a report")
    demo.add_argument("--quick", action="store_true",
                      help="small budgets: under 2 minutes on 2 CPU cores")
    demo.add_argument("--output", default="keras_secure_report",
                      help="directory for report.md, results.json and plots "
                           "(default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")

    ev = sub.add_parser("evaluate", help="robustness table of a saved .keras model")
    ev.add_argument("model", help="path of a .keras model that outputs logits (or softmax)")
    ev.add_argument("--data", required=True,
                    help="a .npz file with arrays `x` (inputs) and `y` (integer labels)")
    ev.add_argument("--attacks", default="fgsm,pgd,cw",
                    help=f"comma-separated subset of {','.join(EVALUATE_ATTACKS)} "
                         "(default: %(default)s)")
    ev.add_argument("--eps", type=float, required=True,
                    help="L-inf budget of fgsm/pgd/mifgsm/apgd/square, in input units")
    ev.add_argument("--l2-eps", type=float, default=None,
                    help="L2 budget of cw/deepfool (default: unbounded minimal-norm attacks)")
    ev.add_argument("--value-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                    help="valid input range, e.g. 0 1 (required by cw)")
    ev.add_argument("--steps", type=int, default=20, help="iterations of iterative attacks")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--max-samples", type=int, default=None,
                    help="evaluate only the first N examples")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--output", default=None, help="also write the report as JSON here")
    return parser


def _build_attacks(names, args):
    from keras_secure import attacks as A

    vr = tuple(args.value_range) if args.value_range else None
    built = []
    for name in names:
        if name == "fgsm":
            built.append(A.FGSM(args.eps, value_range=vr))
        elif name == "pgd":
            built.append(A.PGD(args.eps, steps=args.steps, value_range=vr, seed=args.seed))
        elif name == "mifgsm":
            built.append(A.MIFGSM(args.eps, steps=args.steps, value_range=vr))
        elif name == "apgd":
            built.append(A.APGD(args.eps, steps=max(args.steps, 10), value_range=vr,
                                seed=args.seed))
        elif name == "square":
            built.append(A.Square(args.eps, queries=50 * args.steps, value_range=vr,
                                  seed=args.seed))
        elif name == "cw":
            built.append(A.CarliniWagnerL2(value_range=vr, eps=args.l2_eps,
                                           steps=5 * args.steps))
        elif name == "deepfool":
            built.append(A.DeepFool(value_range=vr, eps=args.l2_eps, steps=args.steps))
    return built


def _evaluate(args) -> int:
    import numpy as np

    names = [n.strip().lower() for n in args.attacks.split(",") if n.strip()]
    unknown = [n for n in names if n not in EVALUATE_ATTACKS]
    if not names or unknown:
        raise SystemExit(f"keras-secure evaluate: error: --attacks must name some of "
                         f"{','.join(EVALUATE_ATTACKS)}; received {args.attacks!r}")
    if not os.path.exists(args.data):
        raise SystemExit(f"keras-secure evaluate: error: --data {args.data!r} does not exist")
    with np.load(args.data) as data:
        missing = [k for k in ("x", "y") if k not in data]
        if missing:
            raise SystemExit(f"keras-secure evaluate: error: {args.data!r} lacks arrays "
                             f"{missing}; it has {sorted(data.keys())}")
        x, y = data["x"], data["y"]
    if args.max_samples is not None:
        x, y = x[:args.max_samples], y[:args.max_samples]
    try:
        attack_list = _build_attacks(names, args)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"keras-secure evaluate: error: {err}") from None

    import keras

    import keras_secure  # noqa: F401  (registers serializable objects)
    from keras_secure.evaluation import evaluate_robustness

    model = keras.saving.load_model(args.model)
    report = evaluate_robustness(model, x, y, attack_list, batch_size=args.batch_size,
                                 verbose=True)
    print(report.table(full=True))
    if args.output:
        report.to_json(args.output)
        print(f"report written to {args.output}")
    return 0


def main(argv=None) -> int:
    """Entry point of the ``keras-secure`` console script."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "demo":
        import tensorflow as tf

        from keras_secure.demo import run_demo

        tf.get_logger().setLevel("ERROR")
        run_demo(quick=args.quick, seed=args.seed, output_dir=args.output)
        return 0
    return _evaluate(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
