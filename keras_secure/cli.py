"""The ``keras-secure`` command.

``keras-secure demo [--quick]`` runs the library's story end to end on data that ships with the
install and writes a report; ``keras-secure evaluate MODEL.keras --data FILE.npz --eps EPS``
prints the robustness table of a saved model.

The console script starts in :mod:`keras_secure_cli`, outside this package, so that ``--help``
and ``--version`` answer without importing TensorFlow; it parses the arguments, runs the checks
that need no model, and then calls :func:`run` here. :func:`main` is the same command for use
in-process: ``keras_secure.cli.main(["evaluate", "model.keras", "--data", ...])``.

Importing this module imports ``keras_secure``, which registers its serializable layers: a
``.keras`` file with keras_secure layers loads only after that import.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile

import keras_secure_cli as _front
from keras_secure_cli import UsageError

EVALUATE_ATTACKS = _front.EVALUATE_ATTACKS

__all__ = ["EVALUATE_ATTACKS", "build_attacks", "main", "run"]


def main(argv=None) -> int:
    """Run ``keras-secure`` with ``argv`` (the arguments without the program name).

    Returns 0 on success; a user mistake prints one line to stderr and raises
    ``SystemExit(2)`` (see :func:`keras_secure_cli.main`).

    Example:
        >>> main(["evaluate", "model.keras", "--data", "test.npz", "--eps", "0.03",
        ...       "--value-range", "0", "1", "--output", "report.json"])
    """
    return _front.main(argv)


def run(args, data=None) -> int:
    """Run a parsed command; ``data`` is the checked ``(x, y)`` of ``evaluate``."""
    if args.command == "demo":
        return _demo(args)
    return _evaluate(args, *data)


def _demo(args) -> int:
    import tensorflow as tf

    from keras_secure.demo import run_demo

    from keras_secure.demo.runner import select_chapters

    tf.get_logger().setLevel("ERROR")
    try:
        select_chapters(args.chapters)
    except ValueError as err:
        raise UsageError(f"--chapters: {_one_line(err)}") from None
    run_demo(quick=args.quick, seed=args.seed, output_dir=args.output, chapters=args.chapters)
    return 0


def build_attacks(names, args) -> list:
    """The configured attacks of ``keras-secure evaluate`` (``args`` as parsed)."""
    from keras_secure import attacks as A

    vr = tuple(args.value_range) if args.value_range else None
    seed = args.seed
    built = []
    for name in names:
        if name == "fgsm":
            built.append(A.FGSM(args.eps, value_range=vr, seed=seed))
        elif name == "pgd":
            built.append(A.PGD(args.eps, steps=args.steps, value_range=vr, seed=seed))
        elif name == "mifgsm":
            built.append(A.MIFGSM(args.eps, steps=args.steps, value_range=vr, seed=seed))
        elif name == "apgd":
            built.append(A.APGD(args.eps, steps=max(args.steps, 10), value_range=vr, seed=seed))
        elif name == "apgdt":
            built.append(A.APGDT(args.eps, steps=max(args.steps, 10), value_range=vr,
                                 seed=seed))
        elif name == "fab":
            built.append(A.FAB(eps=args.eps, steps=max(args.steps, 10), value_range=vr,
                               seed=seed))
        elif name == "square":
            built.append(A.Square(args.eps, queries=50 * args.steps, value_range=vr, seed=seed))
        elif name == "cw":
            built.append(A.CarliniWagnerL2(value_range=vr, eps=args.l2_eps,
                                           steps=5 * args.steps, seed=seed))
        elif name == "deepfool":
            built.append(A.DeepFool(value_range=vr, eps=args.l2_eps, steps=args.steps,
                                    seed=seed))
    return built


def _one_line(err: BaseException, limit: int = 500) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _load_error(path: str, err: BaseException) -> str:
    """One line saying why ``path`` did not load (Keras's messages dump whole configs)."""
    from keras_secure_cli import version

    text = f"{err} {err.__context__ or ''}"
    missing = re.search(r"Could not locate class '([^']+)'", text)
    if missing:
        cls = missing.group(1)
        after = text[missing.end():]
        registered = re.search(r"'registered_name': '([^']+)'", after)
        name = registered.group(1) if registered else cls
        if name.startswith("keras_secure>"):
            return (f"cannot load MODEL {path!r}: it uses {name!r}, which this keras_secure "
                    f"({version()}) does not define; was it saved with another version?")
        return (f"cannot load MODEL {path!r}: it uses the custom class {name!r}, which is not "
                "registered. keras-secure imports keras_secure, so keras_secure's own layers "
                "load; for other custom objects, load the model in Python after importing the "
                "code that registers them and call keras_secure.evaluation.evaluate_robustness")
    return (f"cannot load MODEL {path!r}: {_one_line(err)} (keras-secure imports keras_secure "
            "before loading, so keras_secure's own layers load)")


def _load_model(path: str, what: str = "MODEL"):
    import keras

    import keras_secure  # noqa: F401  (registers keras_secure's serializable layers)

    try:
        return keras.saving.load_model(path)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as err:
        raise UsageError(_load_error(path, err).replace("MODEL", what, 1)) from None


def _preflight(attacks, clf, x, y) -> None:
    """Each attack's own checks of the data (e.g. Square takes images, an L2 budget within the
    value range's diameter), on one example, so that they are reported before anything runs
    instead of as a traceback from inside the evaluation. The value range itself was checked
    on all of ``x`` (keras_secure_cli)."""
    from keras_secure.evaluation import check_attacks

    check_attacks(attacks, clf)  # the report's own refusals (value ranges, randomized models)
    for attack in attacks:
        attack.check_data(clf, x[:1], y[:1])


def _describe(report, args, n: int) -> str:
    """How the model was read (the classifier contract's description) and what was run."""
    info = report.classifier
    classes = info.get("num_classes")
    lines = [f"Model {args.model!r}: {info.get('output', '?')}"
             + (f"; {classes} classes" if classes else "")]
    path = info.get("adaptive_path") or []
    if path:
        lines.append("Adaptive path (what the attacks differentiate):")
        lines += [f"  - {step}" for step in path]
    else:
        lines.append("Adaptive path: none needed (no keras_secure randomized or "
                     "non-differentiable layers)")
    if args.value_range:
        vr = f"[{args.value_range[0]:g}, {args.value_range[1]:g}]"
    else:
        vr = "not given (adversarial inputs are not clipped)"
    lines.append(f"Data {args.data!r}: {n} examples; value range {vr}")
    return "\n".join(lines)


def _evaluate(args, x, y) -> int:
    import time

    from keras_secure.classifier import as_classifier
    from keras_secure.evaluation import evaluate_robustness

    start = time.perf_counter()
    try:
        attack_list = build_attacks(args.attack_names, args)
    except (TypeError, ValueError) as err:
        raise UsageError(_one_line(err)) from None
    model = _load_model(args.model)
    surrogate = None if args.surrogate is None else _load_model(args.surrogate, "--surrogate")
    suite = {}
    if args.suite is not None:
        suite = dict(suite=args.suite, eps=args.eps, norm=args.norm,
                     value_range=tuple(args.value_range), seed=args.seed)
    try:
        clf = as_classifier(model)
        clf.check(x, y)  # the classifier contract's checks of the model, x and y
        if surrogate is not None:
            other = as_classifier(surrogate)
            other.check(x[:1])
            if other.num_classes != clf.num_classes:
                raise ValueError(f"--surrogate must have MODEL's {clf.num_classes} classes. "
                                 f"Received: a surrogate with {other.num_classes} classes")
        if suite:
            from keras_secure.evaluation import standard_suite

            attack_list, _ = standard_suite(
                args.eps, norm=args.norm, num_classes=clf.num_classes,
                version="rand" if clf.randomized else args.suite,
                value_range=suite["value_range"], images=x.ndim == 4, seed=args.seed)
        _preflight(attack_list, clf, x, y)
    except (TypeError, ValueError) as err:
        raise UsageError(_one_line(err)) from None

    # the HTML page shows a grid of adversarial images, so it keeps them for image data
    keep = bool(args.save_adv) or (bool(args.report) and x.ndim == 4)
    report = evaluate_robustness(model, x, y, [] if suite else attack_list,
                                 batch_size=args.batch_size, verbose=args.verbose,
                                 keep_adversarial=keep, surrogate=surrogate,
                                 diagnostics=not args.no_diagnostics, **suite)
    print(_describe(report, args, int(x.shape[0])))
    print(report.table(full=True))
    if report.suite:
        print(f"\nStandard suite ({report.suite['version']} version): "
              f"{report.suite['protocol']}." + "".join(f" {n}" for n in report.suite["notes"]))
    print("\n" + report.diagnostics_text())
    run_info = {
        "keras_secure": _front.version(),
        "model": args.model,
        "data": args.data,
        "num_examples": int(x.shape[0]),
        "value_range": list(args.value_range) if args.value_range else None,
        "attacks": [{"class": type(a).__name__, **a.get_config()} for a in attack_list],
        "suite": report.suite,
    }
    if args.output:
        text = json.dumps({"run": run_info, **json.loads(report.to_json())}, indent=2,
                          default=str)
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"report written to {args.output}")
    if args.save_adv:
        print(f"adversarial examples written to {report.save_adversarial(args.save_adv)}")
    if args.report:
        _html_report(args, report, run_info, time.perf_counter() - start)
        print(f"HTML report written to {args.report}")
    return 0


def _html_report(args, report, run_info: dict, seconds: float) -> None:
    """``--report``: the evaluation as one self-contained HTML page."""
    import os

    from keras_secure.reporting import HtmlReport

    settings = {"model": args.model, "data": args.data,
                "examples": run_info["num_examples"],
                "value range": run_info["value_range"] or "not given (not clipped)",
                "L-inf eps": args.eps if args.eps is not None else "-",
                "L2 eps": args.l2_eps if args.l2_eps is not None else "unbounded",
                "steps": args.steps, "batch size": args.batch_size, "seed": args.seed}
    for i, attack in enumerate(run_info["attacks"], start=1):
        settings[f"attack {i}"] = attack
    page = HtmlReport("keras-secure evaluate",
                      subtitle=f"{os.path.basename(args.model)} on "
                               f"{os.path.basename(args.data)}: {run_info['num_examples']} "
                               "examples",
                      settings=settings)
    section = page.section("Robustness", anchor="robustness")
    page.add_robustness_report(section, report, os.path.basename(args.model))
    page.write(args.report, run_seconds=seconds)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
