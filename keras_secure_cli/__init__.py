"""The front of the ``keras-secure`` command: argument parsing and cheap checks, no TensorFlow.

The console script's entry point is :func:`main` here, in a top-level package of its own,
because importing any module of ``keras_secure`` runs ``keras_secure/__init__.py``, which
imports Keras and TensorFlow (4-6 s, and TensorFlow's C++ start-up logs). So ``keras-secure
--help`` and ``--version`` answer from here without importing TensorFlow, and the user mistakes
that need no model (missing files, a file that is not an npz, ``x`` and ``y`` of different
lengths, integer data without ``--value-range``...) are reported before it is imported. The work
itself - loading the model, the classifier contract's checks, the attacks, the report - is in
:mod:`keras_secure.cli`, whose ``main`` is this one.

Every user mistake is one line on stderr, ``keras-secure COMMAND: error: ...``, and exit code 2,
without a traceback. Only validation steps are turned into such lines: an error raised while
the attacks run is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys

__all__ = ["EVALUATE_ATTACKS", "LINF_ATTACKS", "UsageError", "build_parser", "main", "version"]

#: the attacks of ``keras-secure evaluate --attacks``
EVALUATE_ATTACKS = ("fgsm", "pgd", "mifgsm", "apgd", "apgdt", "fab", "square", "cw",
                    "deepfool")
#: the attacks with an L-inf budget (``--eps``); cw and deepfool are L2 (``--l2-eps``)
LINF_ATTACKS = ("fgsm", "pgd", "mifgsm", "apgd", "apgdt", "fab", "square")
#: ``keras-secure evaluate --suite``
SUITES = ("standard", "rand")
#: the default ``--attacks``: all L-inf at ``--eps``, so one threat model and one worst case,
#: plus square for images: it is score-based, so masked gradients cannot hide a weakness from it
#: (it takes images only)
DEFAULT_ATTACKS = ("fgsm", "pgd", "apgd")
DEFAULT_IMAGE_ATTACKS = ("square",)


class UsageError(Exception):
    """A user mistake: printed as one line ``keras-secure COMMAND: error: MESSAGE``, exit 2."""


def version() -> str:
    """keras_secure's version, read without importing the package (and so TensorFlow).

    ``keras_secure.__version__`` in the source is the one truth (setup.cfg reads it from there
    too); the installed metadata, which an editable install can leave stale, is the fallback.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("keras_secure")  # finds it; does not execute it
        if spec is not None and spec.origin:
            with open(spec.origin, encoding="utf-8") as f:
                match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read(),
                                  re.MULTILINE)
            if match:
                return match.group(1)
    except (ImportError, OSError, ValueError):
        pass
    from importlib import metadata

    try:
        return metadata.version("keras-secure")
    except metadata.PackageNotFoundError:
        return "unknown"


def _version_line() -> str:
    from importlib import metadata

    parts = []
    for dist in ("keras", "tensorflow"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    python = ".".join(str(v) for v in sys.version_info[:3])
    return f"keras-secure {version()} ({', '.join(parts)}, Python {python})"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the usage first) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an integer >= 1. Received: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1. Received: {value}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number. Received: {text!r}") from None


def _budget(name: str):
    """argparse type of a budget: a finite number > 0 (worded as the library words it)."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"`{name}` must be a number > 0. Received: {name}={text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"`{name}` must be finite. Received: {name}={value!r}")
        if value <= 0:
            raise argparse.ArgumentTypeError(
                f"`{name}` must be a number > 0. Received: {name}={value!r}")
        return value

    parse.__name__ = name
    return parse


_EVALUATE_USAGE = "keras-secure evaluate MODEL.keras --data FILE.npz --eps EPS [options]"
_EVALUATE_DESCRIPTION = """\
Print the robustness table of a saved Keras 3 classifier: clean accuracy, accuracy under each
attack and, per threat model (norm and budget), the worst case, in which an example counts as
robust only if it survives every attack of that threat model. The model may output logits,
softmax probabilities, one sigmoid unit or one logit (binary); keras_secure's randomized and
non-differentiable layers inside it are attacked through their adaptive path (EOT, BPDA). The
output says how the model was read, and gradient-masking checks run on every evaluation (flags
beside the figures; --surrogate adds the transfer check). --suite standard runs AutoAttack's
standard suite instead of --attacks.

Required: MODEL.keras, --data FILE.npz, and --eps EPS, the L-inf budget of fgsm, pgd, mifgsm,
apgd, apgdt, fab and square (the default --attacks are all L-inf; --attacks cw,deepfool needs no
--eps).
cw also needs --value-range, and so does integer data (e.g. --value-range 0 255). Square takes
images only: x of shape (n, height, width, channels)."""
_EVALUATE_EPILOG = """\
example:
  keras-secure evaluate model.keras --data test.npz --eps 0.03 --value-range 0 1
  keras-secure evaluate model.keras --data test.npz --eps 0.03 --value-range 0 1 \\
      --attacks fgsm,pgd,apgd,square,cw --l2-eps 0.5 --max-samples 1000 --output report.json
  keras-secure evaluate model.keras --data test.npz --suite standard --eps 0.3 \
      --value-range 0 1 --surrogate plain_model.keras --report report.html

The model is loaded after `import keras_secure`, so models with keras_secure's layers load;
models with other custom layers must be evaluated from Python after importing the code that
registers them (keras_secure.evaluation.evaluate_robustness).
Set TF_CPP_MIN_LOG_LEVEL=0 to see TensorFlow's C++ logs (silenced by default)."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``keras-secure`` (building it imports nothing heavy)."""
    parser = _Parser(
        prog="keras-secure",
        description="Attack, defend and measure Keras models (keras_secure).",
        epilog="keras-secure evaluate MODEL.keras --data FILE.npz --eps EPS: see "
               "'keras-secure evaluate --help' for what it needs.")
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,evaluate}")

    demo = sub.add_parser("demo", help="run the end-to-end demo and write a report",
                          description="Run the demo's chapters on data that ships with the "
                                      "install and write report.html (one self-contained "
                                      "page), report.md, results.json and the plots.")
    demo.add_argument("--quick", action="store_true",
                      help="small budgets on 8x8 digits: under 2 minutes on 2 CPU cores "
                           "(default: full budgets, chapters 1-3 on MNIST at L-inf eps 0.3)")
    demo.add_argument("--chapters", default=None, metavar="LIST",
                      help="run only these chapters: comma-separated numbers, ranges or short "
                           "names, e.g. 1,3 or 1-3 or attacks,training (default: all)")
    demo.add_argument("--output", default="keras_secure_report",
                      help="directory for report.html, report.md, results.json and plots "
                           "(default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")

    ev = sub.add_parser("evaluate", help="robustness table of a saved .keras model",
                        usage=_EVALUATE_USAGE, description=_EVALUATE_DESCRIPTION,
                        epilog=_EVALUATE_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("model", metavar="MODEL.keras",
                    help="a model saved by Keras 3's model.save('model.keras')")
    ev.add_argument("--data", required=True, metavar="FILE.npz",
                    help="a .npz file with arrays `x` (inputs, the model's input shape) and `y` "
                         "(labels: (n,), (n, 1) or one-hot), e.g. np.savez(FILE, x=x, y=y) "
                         "(required)")
    ev.add_argument("--eps", type=_budget("eps"), default=None,
                    help="L-inf budget of fgsm/pgd/mifgsm/apgd/square, in input units "
                         "(required by them, and so by the default --attacks)")
    ev.add_argument("--attacks", default=None,
                    help=f"comma-separated subset of {','.join(EVALUATE_ATTACKS)} "
                         f"(default: {','.join(DEFAULT_ATTACKS)}, and "
                         f"{','.join(DEFAULT_IMAGE_ATTACKS)} when x holds images (n, height, "
                         "width, channels))")
    ev.add_argument("--suite", choices=SUITES, default=None,
                    help="run the AutoAttack standard suite (APGD-CE, APGD-T, FAB-T, Square-5000; "
                         "each attack on the examples still correct) at --eps and --norm "
                         "instead of --attacks; 'rand' (APGD-CE and APGD-DLR with EOT) runs "
                         "automatically for models with randomized layers. Needs --value-range")
    ev.add_argument("--norm", choices=("linf", "l2"), default="linf",
                    help="the norm of --suite's budget --eps (default: %(default)s)")
    ev.add_argument("--surrogate", default=None, metavar="SURROGATE.keras",
                    help="a model of the same task trained normally (same architecture and "
                         "data): the gradient-masking checks transfer its PGD examples to MODEL")
    ev.add_argument("--no-diagnostics", action="store_true",
                    help="skip the gradient-masking checks (the report then says its figures "
                         "carry no check that the attacks worked)")
    ev.add_argument("--l2-eps", type=_budget("l2_eps"), default=None,
                    help="L2 budget of cw/deepfool (default: unbounded minimal-norm attacks, "
                         "which report the norms they needed and belong to no worst case)")
    ev.add_argument("--value-range", type=_float, nargs=2, default=None,
                    metavar=("LOW", "HIGH"),
                    help="valid input range, e.g. 0 1; adversarial inputs are clipped to it "
                         "(recommended; required by cw and for integer data)")
    ev.add_argument("--steps", type=_positive_int, default=20,
                    help="iterations of pgd/mifgsm/apgd/deepfool; cw runs 5x as many, square "
                         "gets 50x as many queries (default: %(default)s)")
    ev.add_argument("--batch-size", type=_positive_int, default=256,
                    help="examples per batch (default: %(default)s)")
    ev.add_argument("--max-samples", type=_positive_int, default=None,
                    help="evaluate only the first N examples (default: all)")
    ev.add_argument("--seed", type=int, default=0,
                    help="seed of the randomized attacks (default: %(default)s)")
    ev.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                    help="0 silent, 1 a progress bar per attack, 2 one line per attack "
                         "(default: 1 on a terminal, else 2, as in Keras)")
    ev.add_argument("--output", default=None, metavar="REPORT.json",
                    help="also write the report as JSON here")
    ev.add_argument("--report", default=None, metavar="REPORT.html",
                    help="also write one self-contained HTML page: the tables, per-class "
                         "accuracy, the gradient-masking checks, how the model was read, the "
                         "settings, versions and run time, and for images a picture grid of "
                         "clean vs adversarial inputs (keeps the adversarial examples in "
                         "memory: one copy of x per attack)")
    ev.add_argument("--save-adv", default=None, metavar="FILE.npz",
                    help="save the clean inputs, labels, every attack's adversarial examples "
                         "and the predicted labels to a .npz file (x, y, clean_pred, attacks, "
                         "x_adv_<i>, pred_<i>)")
    return parser


# --------------------------------------------------------------------------------------------
# Cheap checks of `evaluate` (NumPy only)
# --------------------------------------------------------------------------------------------
def _readable_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{what} {path!r} is a directory, not a file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise UsageError(f"cannot read {what} {path!r}: {err.strerror or err}") from None


def _check_model_path(path: str, what: str = "MODEL") -> None:
    import zipfile

    if os.path.splitext(path)[1].lower() != ".keras":
        hint = ""
        if os.path.isdir(path):
            hint = " (a TensorFlow SavedModel directory cannot be loaded by Keras 3)"
        elif path.lower().endswith((".h5", ".hdf5")):
            hint = " (legacy HDF5: load it in Python and re-save it as .keras)"
        raise UsageError(f"{what} must be a .keras file written by Keras 3's "
                         f"model.save('model.keras'){hint}. Received: {path!r}")
    _readable_file(path, what)
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{what} {path!r} is not a .keras archive (model.save writes a zip "
                         "file); it may be truncated or another format")


def _check_output_path(path: str | None, option: str = "--output",
                       example: str = "report.json") -> None:
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a directory; give a file name, e.g. "
                         f"{os.path.join(path, example)!r}")
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {path!r}: the directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path!r}: the directory {parent!r} is not writable")


def _check_chapters(text: str | None) -> None:
    """The syntax of ``demo --chapters`` (which names exist is known once the demo is
    imported)."""
    if text is None:
        return
    tokens = [t.strip() for t in text.split(",")]
    if not all(tokens):
        raise UsageError(f"--chapters must be comma-separated chapter numbers or names, e.g. "
                         f"1,3 or attacks,training; received {text!r}")


def _attack_names(args, x_rank: int | None = None) -> list[str]:
    """The attacks to run (the default depends on whether ``x`` holds images); ``[]`` with
    ``--suite``."""
    if args.suite is not None:
        if args.attacks is not None:
            raise UsageError("give either --suite or --attacks, not both")
        if args.eps is None:
            raise UsageError(f"--suite {args.suite} needs --eps, its budget in the units of x "
                             f"(in the {args.norm} norm, see --norm)")
        if args.value_range is None:
            raise UsageError(f"--suite {args.suite} needs --value-range LOW HIGH, the valid "
                             "range of x (e.g. --value-range 0 1): an attack that leaves it "
                             "overstates what an adversary can do")
        return []
    if args.norm != "linf":
        raise UsageError("--norm is the norm of --suite's budget; the L2 attacks of --attacks "
                         "(cw, deepfool) take --l2-eps")
    if args.attacks is None:
        names = list(DEFAULT_ATTACKS)
        if x_rank == 4:
            names += DEFAULT_IMAGE_ATTACKS
    else:
        names = [n.strip().lower() for n in args.attacks.split(",") if n.strip()]
        unknown = [n for n in names if n not in EVALUATE_ATTACKS]
        if not names or unknown:
            raise UsageError(f"--attacks must name some of {','.join(EVALUATE_ATTACKS)}; "
                             f"received {args.attacks!r}")
        if "square" in names and x_rank is not None and x_rank != 4:
            raise UsageError(f"--attacks square takes images, x of shape (n, height, width, "
                             f"channels); x has rank {x_rank}")
    linf = [n for n in names if n in LINF_ATTACKS]
    if linf and args.eps is None:
        raise UsageError(f"--eps is required by the L-inf attacks {','.join(linf)}: their "
                         "budget, in the units of x (--attacks cw,deepfool needs none)")
    if "cw" in names and args.value_range is None:
        raise UsageError("--attacks cw needs --value-range LOW HIGH (C&W optimises inside "
                         "that box), e.g. --value-range 0 1")
    return names


def _check_value_range(value_range):
    import math

    if value_range is None:
        return None
    low, high = value_range
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise UsageError(f"--value-range must be finite with LOW < HIGH. Received: "
                         f"{low:g} {high:g}")
    return float(low), float(high)


def _load_data(path: str):
    """``(x, y)`` of a .npz file, or a UsageError saying what the file is instead."""
    import zipfile

    import numpy as np

    _readable_file(path, "--data")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UsageError(f"--data {path!r} is not a .npz file of arrays (write one with "
                         f"np.savez(FILE, x=x, y=y)): {' '.join(str(err).split())}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UsageError(f"--data {path!r} is a single .npy array, not a .npz archive with "
                         "arrays `x` and `y`; write one with np.savez(FILE, x=x, y=y)")
    with data:
        keys = sorted(data.keys())
        if not keys:
            raise UsageError(f"--data {path!r} is an empty .npz file: it holds no arrays; it "
                             "needs `x` (inputs) and `y` (labels), np.savez(FILE, x=x, y=y)")
        missing = [k for k in ("x", "y") if k not in keys]
        if missing:
            raise UsageError(f"--data {path!r} lacks arrays {missing}; it has {keys} (it needs "
                             "`x` (inputs) and `y` (labels))")
        arrays = []
        for key in ("x", "y"):
            try:
                arrays.append(data[key])
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
                raise UsageError(f"cannot read array `{key}` of --data {path!r}: "
                                 f"{' '.join(str(err).split())}") from None
    return arrays[0], arrays[1]


def _check_data(x, y, args):
    """Checks that need no model; returns ``(x, y)`` cut to ``--max-samples``.

    The labels' and inputs' own checks (numbers, rank, shape, integer-valued labels in range)
    are the classifier contract's, run once the model is loaded.
    """
    import numpy as np

    path = args.data
    if x.ndim >= 1 and x.shape[0] == 0:
        raise UsageError(f"`x` in --data {path!r} is empty. Received: x.shape={x.shape}")
    if x.ndim >= 1 and y.ndim >= 1 and x.shape[0] != y.shape[0]:
        raise UsageError(f"`x` and `y` in --data {path!r} must have the same number of "
                         f"examples. Received: x has {x.shape[0]}, y has {y.shape[0]}")
    if args.max_samples is not None and x.ndim >= 1 and y.ndim >= 1:
        x, y = x[:args.max_samples], y[:args.max_samples]
    value_range = _check_value_range(args.value_range)
    numeric = np.issubdtype(x.dtype, np.number) and x.size > 0
    if np.iscomplexobj(x):
        raise UsageError(f"`x` in --data {path!r} must hold real numbers. "
                         f"Received: x.dtype={x.dtype}")
    if numeric and np.issubdtype(x.dtype, np.integer) and value_range is None:
        raise UsageError(f"`x` holds integers ({x.dtype}, values in [{x.min()}, {x.max()}]): "
                         "integer images need --value-range LOW HIGH (e.g. --value-range 0 "
                         "255) so that the attacks know their scale and clip to it")
    if numeric and value_range is not None:
        low, high = value_range
        seen = x[np.isfinite(x)] if x.dtype.kind in "fc" else x  # NaN: the contract's error
        lo, hi = (float(seen.min()), float(seen.max())) if seen.size else (low, high)
        tol = 1e-6 * max(1.0, high - low)
        if lo < low - tol or hi > high + tol:
            raise UsageError(f"`x` must lie in --value-range {low:g} {high:g}. Received: x with "
                             f"values in [{lo:g}, {hi:g}] (pass the range the model's inputs "
                             "live in)")
    return x, y


# --------------------------------------------------------------------------------------------
# TensorFlow's start-up logs
# --------------------------------------------------------------------------------------------
_TF_LOG_LINE = re.compile(r"^([IWE])\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] ")
_TF_LOG_SEVERITY = {"I": 1, "W": 2, "E": 3}  # dropped from this TF_CPP_MIN_LOG_LEVEL on
_ABSL_PREAMBLE = ("WARNING: All log messages before absl::InitializeLog() is called are written "
                  "to STDERR")


def _tf_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def _filter_tf_logs(text: str, level: int) -> str:
    """``text`` without the C++ log lines that ``TF_CPP_MIN_LOG_LEVEL=level`` would silence:
    INFO from 1, WARNING from 2, ERROR from 3 (FATAL and everything else are kept)."""
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        match = _TF_LOG_LINE.match(line)
        if match:
            dropping = level >= _TF_LOG_SEVERITY[match.group(1)]
        elif line.rstrip("\n") == _ABSL_PREAMBLE:
            dropping = level >= 2
        elif not (dropping and line.startswith("To enable the following instructions")):
            dropping = False  # (that line continues the CPU-feature INFO line)
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _quiet_tensorflow_import():
    """Apply ``TF_CPP_MIN_LOG_LEVEL`` to the lines TensorFlow writes to fd 2 while it loads.

    TensorFlow 2.21 honours ``TF_CPP_MIN_LOG_LEVEL`` once its logging is initialized, but its
    start-up lines (oneDNN, CUDA stub) come from static initializers before that, whatever the
    variable says. They are captured and filtered here; everything else written to stderr
    meanwhile is passed on afterwards. With ``TF_CPP_MIN_LOG_LEVEL=0`` nothing is captured (a
    process that aborts while TensorFlow loads, e.g. on a CPU it was not built for, would lose
    its captured message: set 0 to see it).
    """
    level = _tf_log_level()
    if "tensorflow" in sys.modules or level <= 0:
        yield
        return
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            rest = _filter_tf_logs(tmp.read().decode("utf-8", errors="replace"), level)
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """Entry point of the ``keras-secure`` console script (and of ``keras_secure.cli.main``).

    Args:
        argv: the arguments without the program name; None reads ``sys.argv[1:]``.

    Returns:
        0 on success.

    Raises:
        SystemExit: with code 2 after printing one line ``keras-secure COMMAND: error: ...``
            to stderr, for a user mistake; with code 0 after ``--help`` / ``--version``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"keras-secure {args.command}"
    if "tensorflow" not in sys.modules:
        # Before TensorFlow is imported; an explicit setting (e.g. 0 to debug) is kept.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        data = None
        if args.command == "demo":
            _check_chapters(args.chapters)
        if args.command == "evaluate":
            _attack_names(args)
            data = _check_data(*_load_data(args.data), args)
            _check_model_path(args.model)
            if args.surrogate is not None:
                _check_model_path(args.surrogate, "--surrogate")
            _check_output_path(args.output)
            _check_output_path(args.report, "--report", "report.html")
            _check_output_path(args.save_adv, "--save-adv", "adversarial.npz")
            outputs = [p for p in (args.output, args.report, args.save_adv) if p]
            if len({os.path.abspath(p) for p in outputs}) < len(outputs):
                raise UsageError("--output, --report and --save-adv must be different files")
            args.attack_names = _attack_names(args, data[0].ndim)
            if args.verbose is None:
                args.verbose = 1 if sys.stdout.isatty() else 2
        with _quiet_tensorflow_import():
            from keras_secure import cli
        return cli.run(args, data)
    except UsageError as err:
        parser.exit(2, f"{prog}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{prog}: interrupted\n")
    except BrokenPipeError:  # output piped into a reader that closed it early (| head)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 1
