"""Robustness report: accuracy under a set of attacks, per attack and in the worst case of each
threat model (norm and budget)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import warnings
from typing import Sequence

import keras
import numpy as np

from keras_secure import distributed
from keras_secure.attacks.base import Attack
from keras_secure.classifier import as_arrays, as_classifier
from keras_secure.validation import check_bool, check_choice, check_number

PAPER_COLUMNS = ("Attack Type", "Clean Accuracy (%)", "Accuracy Under Attack (%)",
                 "Accuracy Drop (%)")


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """One row of a :class:`RobustnessReport`.

    Attributes:
        attack: the attack's label, e.g. ``"PGD-Linf (eps=0.1)"``; ``"Worst case (Linf,
            eps=0.1)"`` for the row of a threat model that counts an example as robust only if
            it survives every attack of that threat model.
        norm: ``"linf"``/``"l2"``, the norm the perturbation is measured in.
        eps: the budget in input units, or None for a minimal-norm attack run without one
            (C&W, DeepFool): such a row reports the distribution of the norms it needed and
            belongs to no worst case.
        threat_model: ``"Linf, eps=0.1"``, ``"L2, eps=1"`` or ``"L2, unbounded"``.
        num_examples: number of evaluated examples.
        clean_accuracy: accuracy on the clean inputs, in [0, 1].
        adversarial_accuracy: accuracy on the attacked inputs (an example initially
            misclassified counts as wrong), in [0, 1].
        accuracy_drop: ``clean_accuracy - adversarial_accuracy``.
        success_rate: fraction of the initially correct examples that the attack turned wrong
            (NaN when none was correct).
        mean_perturbation: mean ``norm`` of ``x_adv - x`` over the successful examples (NaN if
            none).
        median_perturbation: median of the same (NaN if none).
        p90_perturbation: 90th percentile of the same (NaN if none).
        seconds: wall-clock time of the attack over all examples.
        cumulative: True for the rows of a suite run under AutoAttack's protocol: the attack
            ran only on the examples the earlier ones left correct, and the row gives the
            accuracy after it and all earlier attacks; its perturbation statistics (and its
            kept examples) cover every example broken so far, each by the attack that broke
            it.
        flags: names of the fired gradient-masking flags that concern this row (see
            :attr:`RobustnessReport.diagnostics`); a row with flags is not evidence of
            robustness.

    Example:
        >>> row = report["PGD-Linf (eps=0.1)"]
        >>> row.adversarial_accuracy, row.success_rate
    """

    attack: str
    norm: str
    eps: float | None
    threat_model: str
    num_examples: int
    clean_accuracy: float
    adversarial_accuracy: float
    accuracy_drop: float
    success_rate: float
    mean_perturbation: float
    median_perturbation: float
    p90_perturbation: float
    seconds: float
    cumulative: bool = False
    flags: tuple = ()


def threat_model(norm: str, eps) -> str:
    """The label of a threat model: ``"Linf, eps=0.1"``, ``"L2, eps=1"``, ``"L2, unbounded"``."""
    name = "Linf" if norm == "linf" else "L2"
    return f"{name}, unbounded" if eps is None else f"{name}, eps={eps:g}"


class RobustnessReport:
    """The result of :func:`evaluate_robustness`: one :class:`AttackResult` per attack, plus one
    worst-case row per threat model (norm and budget).

    Worst cases are never taken across threat models: an L-inf attack at eps 0.1 and an L2
    attack at eps 1 answer different questions, and their union would be no threat model at
    all. Minimal-norm attacks run without a budget report the norms they needed and belong to
    no worst case.

    Printing it gives the table of Table 1 of the project's seed paper (Attack Type | Clean
    Accuracy (%) | Accuracy Under Attack (%) | Accuracy Drop (%)); :meth:`table` with
    ``full=True`` adds success rate, perturbation norms and time. :meth:`to_dict`,
    :meth:`to_dataframe` and :meth:`to_json` export it. :attr:`classifier` says how the model
    was read and attacked (output kind, adaptive path through randomized and non-differentiable
    layers).

    Example:
        >>> report = evaluate_robustness(model, x, y, [FGSM(0.1), PGD(0.1)])
        >>> print(report)
        >>> report.worst_case_for("linf", 0.1).adversarial_accuracy
        >>> report.to_dataframe()
    """

    def __init__(self, results: Sequence[AttackResult], worst_cases: Sequence[AttackResult],
                 classifier: dict | None = None, *, labels=None, clean_correct=None,
                 robust: dict | None = None, inputs=None, adversarial: dict | None = None,
                 predictions: dict | None = None, diagnostics: list | None = None,
                 suite: dict | None = None):
        self.results = list(results)
        self.worst_cases = list(worst_cases)
        self.classifier = dict(classifier or {})
        #: the evaluated labels, int64 ``(n,)`` (as the classifier contract read them)
        self.labels = labels
        #: bool ``(n,)``: correctly classified clean
        self.clean_correct = clean_correct
        #: row label -> bool ``(n,)``: correct both clean and under that attack (or, for a
        #: worst-case row, under every attack of its threat model)
        self.robust = dict(robust or {})
        #: the clean inputs, kept only with ``keep_adversarial=True`` (else None)
        self.inputs = inputs
        #: attack label -> adversarial inputs ``(n, ...)``, kept only with
        #: ``keep_adversarial=True``
        self.adversarial = dict(adversarial or {})
        #: ``"clean"`` and attack label -> predicted labels ``(n,)`` (kept with the examples)
        self.predictions = dict(predictions or {})
        #: the gradient-masking flags, one dict per indicator checked (``flag``, ``fired``
        #: True/False/None, ``threat_model``, ``message``, ``evidence``, ``reference``); None
        #: when the diagnostics were switched off
        self.diagnostics = diagnostics
        #: for a suite run: its name, the version that ran, its attacks, protocol and notes
        self.suite = suite

    @property
    def flags(self) -> list[dict]:
        """The fired gradient-masking flags (a subset of :attr:`diagnostics`)."""
        return [f for f in self.diagnostics or [] if f["fired"]]

    @property
    def masking_suspected(self) -> bool | None:
        """True if any gradient-masking flag fired, False if none did, None if the diagnostics
        were not run."""
        if self.diagnostics is None:
            return None
        return bool(self.flags)

    def diagnostics_text(self) -> str:
        """The diagnostics as Markdown: a verdict, then one line per indicator."""
        if self.diagnostics is None:
            return ("**Gradient-masking diagnostics were not run** (diagnostics=False): these "
                    "figures carry no check that the attacks worked.")
        mark = {True: "FIRED", False: "ok", None: "not checked"}
        verdict = (f"**Gradient masking suspected** ({len(self.flags)} flag(s) fired): the "
                   "flagged figures are not evidence of robustness." if self.flags else
                   "**No gradient-masking flag fired.**")
        lines = [verdict, ""]
        for f in self.diagnostics:
            where = f" [{f['threat_model']}]" if f["threat_model"] else ""
            lines.append(f"- `{f['flag']}`{where}: {mark[f['fired']]}. {f['message']}")
        return "\n".join(lines)

    @property
    def rows(self) -> list[AttackResult]:
        """All rows: one per attack, then one worst case per threat model."""
        return [*self.results, *self.worst_cases]

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on the clean inputs."""
        return self.rows[0].clean_accuracy

    @property
    def worst_case(self) -> AttackResult:
        """The worst-case row when the report has exactly one threat model.

        Raises:
            ValueError: when there are several (or none): use :meth:`worst_case_for` or
                :attr:`worst_cases`, since a worst case across threat models means nothing.
        """
        if len(self.worst_cases) != 1:
            raise ValueError(
                f"The report has {len(self.worst_cases)} worst cases, one per threat model "
                f"({[r.threat_model for r in self.worst_cases]}); use "
                "report.worst_case_for(norm, eps) or report.worst_cases.")
        return self.worst_cases[0]

    def worst_case_for(self, norm: str, eps: float) -> AttackResult:
        """The worst-case row of the threat model ``(norm, eps)``.

        Raises:
            KeyError: if no attack of the report has that threat model.
        """
        label = threat_model(norm, eps)
        for row in self.worst_cases:
            if row.threat_model == label:
                return row
        raise KeyError(f"No worst case for {label!r}; threat models: "
                       f"{[r.threat_model for r in self.worst_cases]}")

    def __getitem__(self, attack: str) -> AttackResult:
        for row in self.rows:
            if row.attack == attack:
                return row
        raise KeyError(f"No row for attack {attack!r}; rows: {[r.attack for r in self.rows]}")

    def per_class(self) -> list[dict]:
        """Clean and robust accuracy per true class.

        Returns:
            One dict per class present in the labels, in class order:
            ``{"class": c, "num_examples": n_c, "clean_accuracy": ..., "robust_accuracy":
            {row label: accuracy}}``, with a key for every row (attacks and worst cases).
            Accuracies are fractions in [0, 1] over the examples of that class.

        Raises:
            ValueError: for a report built without per-example results.

        Example:
            >>> for row in report.per_class():
            ...     print(row["class"], row["robust_accuracy"]["Worst case (Linf, eps=0.1)"])
        """
        if self.labels is None or self.clean_correct is None:
            raise ValueError("This report has no per-example results (it was not made by "
                             "evaluate_robustness), so it has no per-class accuracy.")
        rows = []
        for c in np.unique(self.labels):
            members = self.labels == c
            rows.append({
                "class": int(c), "num_examples": int(members.sum()),
                "clean_accuracy": float(self.clean_correct[members].mean()),
                "robust_accuracy": {label: float(mask[members].mean())
                                    for label, mask in self.robust.items()}})
        return rows

    def per_class_table(self, fmt: str = "markdown") -> str:
        """:meth:`per_class` as a table: one row per class, clean accuracy and one column per
        worst case (all attack rows when the report has no bounded threat model), in %.

        Raises:
            ValueError: for an unknown ``fmt`` or a report without per-example results.
        """
        per_class = self.per_class()
        columns = [r.attack for r in self.worst_cases] or [r.attack for r in self.results]
        header = ["Class", "Examples", "Clean Accuracy (%)", *[f"{c} (%)" for c in columns]]
        body = [[str(r["class"]), str(r["num_examples"]), f"{100 * r['clean_accuracy']:.1f}",
                 *[f"{100 * r['robust_accuracy'][c]:.1f}" for c in columns]]
                for r in per_class]
        return _render(header, body, fmt)

    def save_adversarial(self, path: str) -> str:
        """Write the kept examples to a NumPy ``.npz`` file.

        The file holds ``x`` (clean inputs), ``y`` (labels), ``clean_pred`` (predicted labels
        on ``x``), ``attacks`` (the attack labels, in order) and, for the i-th attack,
        ``x_adv_i`` and ``pred_i`` (its adversarial inputs and the predicted labels on them).

        Args:
            path: the file to write (``.npz`` is added by NumPy if missing).

        Returns:
            The path written.

        Raises:
            ValueError: if the report was made without ``keep_adversarial=True``.

        Example:
            >>> report = evaluate_robustness(model, x, y, attacks, keep_adversarial=True)
            >>> report.save_adversarial("adv.npz")
        """
        if self.inputs is None or not self.adversarial:
            raise ValueError("The report kept no adversarial examples: call "
                             "evaluate_robustness(..., keep_adversarial=True).")
        arrays = {"x": self.inputs, "y": self.labels, "clean_pred": self.predictions["clean"],
                  "attacks": np.array(list(self.adversarial))}
        for i, (label, x_adv) in enumerate(self.adversarial.items()):
            arrays[f"x_adv_{i}"] = x_adv
            arrays[f"pred_{i}"] = self.predictions[label]
        np.savez_compressed(path, **arrays)
        return path if str(path).endswith(".npz") else f"{path}.npz"

    def to_dict(self) -> dict:
        """``{"classifier": ..., "results": [row dicts], "worst_cases": [row dicts]}``
        (JSON-ready floats)."""
        return {"classifier": self.classifier,
                "results": [_row_dict(r) for r in self.results],
                "worst_cases": [_row_dict(r) for r in self.worst_cases],
                "diagnostics": self.diagnostics, "masking_suspected": self.masking_suspected,
                "suite": self.suite}

    def to_json(self, path: str | None = None, indent: int = 2) -> str:
        """JSON text of :meth:`to_dict` (NaN written as ``null``); written to ``path`` if given."""
        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        text = json.dumps(clean(self.to_dict()), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    def to_dataframe(self):
        """A ``pandas.DataFrame`` with one row per attack and per worst case, indexed by
        attack."""
        import pandas as pd

        return pd.DataFrame([_row_dict(r) for r in self.rows]).set_index("attack")

    def table(self, full: bool = False, fmt: str = "markdown") -> str:
        """Render the report as a table.

        Args:
            full: add threat model, success rate, mean/median/90th-percentile perturbation and
                seconds. Defaults to False (the seed paper's four columns).
            fmt: ``"markdown"`` (pipes) or ``"text"`` (aligned columns). Defaults to
                ``"markdown"``.

        Returns:
            The table as a string.

        Raises:
            ValueError: for an unknown ``fmt``.
        """
        if fmt not in ("markdown", "text"):
            raise ValueError(f"`fmt` must be 'markdown' or 'text'. Received: fmt={fmt!r}")
        header = list(PAPER_COLUMNS)
        flagged = any(r.flags for r in self.rows)
        if flagged:
            header.append("Masking Flags")
        if full:
            header += ["Threat Model", "Success Rate (%)", "Mean Pert.", "Median Pert.",
                       "P90 Pert.", "Time (s)"]

        def pct(v):
            return "n/a" if not math.isfinite(v) else f"{100 * v:.1f}"

        def num(v):
            return "n/a" if not math.isfinite(v) else f"{v:.4f}"

        body = []
        for r in self.rows:
            row = [r.attack, pct(r.clean_accuracy), pct(r.adversarial_accuracy),
                   pct(r.accuracy_drop)]
            if flagged:
                row.append(", ".join(r.flags) or "-")
            if full:
                row += [r.threat_model, pct(r.success_rate), num(r.mean_perturbation),
                        num(r.median_perturbation), num(r.p90_perturbation),
                        f"{r.seconds:.1f}"]
            body.append(row)
        return _render(header, body, fmt)

    def __str__(self) -> str:
        return self.table() + "\n\n" + self.diagnostics_text()

    def __repr__(self) -> str:
        return f"RobustnessReport({len(self.results)} attacks)\n{self.table(fmt='text')}"


def _row_dict(row: AttackResult) -> dict:
    out = dataclasses.asdict(row)
    out["flags"] = list(row.flags)
    return out


def _render(header: list[str], body: list[list[str]], fmt: str) -> str:
    """A table as Markdown (pipes) or aligned text."""
    if fmt not in ("markdown", "text"):
        raise ValueError(f"`fmt` must be 'markdown' or 'text'. Received: fmt={fmt!r}")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    if fmt == "markdown":
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"
                  for row in body]
    else:
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def _norms(delta: np.ndarray, norm: str) -> np.ndarray:
    flat = delta.reshape(delta.shape[0], int(np.prod(delta.shape[1:])))
    if norm == "linf":
        return np.abs(flat).max(axis=1)
    return np.sqrt((flat.astype(np.float64) ** 2).sum(axis=1))


def _stats(values: np.ndarray) -> tuple[float, float, float]:
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float(values.mean()), float(np.median(values)), float(np.percentile(values, 90))


def check_attacks(attacks, model=None) -> list:
    """Validate the attacks of a robustness report (and, given the model, that they can measure
    it), before any attack runs.

    Args:
        attacks: an :class:`~keras_secure.attacks.Attack` or a sequence of them.
        model: the model or :class:`keras_secure.Classifier` to be evaluated, or None.

    Returns:
        The attacks as a list.

    Raises:
        TypeError: for something that is not an ``Attack``.
        ValueError: for an empty list, a targeted attack, attacks with different
            ``value_range``, or minimal-norm attacks on a model with randomized layers.

    Example:
        >>> check_attacks([FGSM(0.1, value_range=(0, 1))], model)
    """
    if isinstance(attacks, Attack):
        attacks = [attacks]
    attacks = list(attacks)
    if not attacks:
        raise ValueError("`attacks` must hold at least one attack. Received: attacks=[]")
    for a in attacks:
        if not isinstance(a, Attack):
            raise TypeError("`attacks` must hold keras_secure.attacks.Attack objects. "
                            f"Received: {a!r}")
        if a.targeted:
            raise ValueError("`attacks` must be untargeted for a robustness report. "
                             f"Received: {a!r}")
    ranges = {a.value_range for a in attacks}
    if len(ranges) > 1:
        raise ValueError(
            "`attacks` must all keep inputs in the same `value_range` (the valid range of the "
            "data): a worst case over attacks with and without the range would mix inputs "
            f"that leave it. Received: value ranges {sorted(ranges, key=str)}")
    if model is not None:
        clf = as_classifier(model)
        minimal = [a.label for a in attacks if a.minimal_norm]
        if clf.randomized and minimal:
            layers = [type(layer).__name__ for layer, _ in clf.adaptive_layers]
            raise ValueError(
                f"`attacks` {minimal} look for the nearest point of the decision boundary, but "
                f"the model contains randomized layers ({layers}): there its deployed "
                "prediction is a coin flip, so their examples fail about half the time and the "
                "report would overstate robustness. Use budgeted attacks with Expectation over "
                "Transformation instead (PGD, APGD, with eot_samples) or, for randomized "
                "smoothing, its certified radius (RandomizedSmoothing.certify).")
    return attacks


_UNSET = object()


def evaluate_robustness(
    model,
    x,
    y=None,
    attacks: Sequence[Attack] = (),
    batch_size: int = 256,
    verbose=0,
    keep_adversarial: bool = False,
    *,
    suite: str | None = None,
    eps: float | None = None,
    norm: str = "linf",
    value_range=_UNSET,
    seed: int | None = 0,
    surrogate=None,
    diagnostics: bool = True,
    diagnostic_examples: int = 100,
    strategy=None,
) -> RobustnessReport:
    """Measure a classifier's accuracy under attack, per attack and in the worst case of each
    threat model, with gradient-masking diagnostics.

    Two ways to choose the attacks:

    - ``attacks=[...]``: every attack runs on every example (batched); an example counts as
      robust under an attack if it is classified correctly both clean and attacked, and as
      robust in the worst case of a threat model (norm and budget) only if it survives every
      attack of that threat model. Run a diverse set - gradient attacks (PGD, APGD),
      minimal-norm ones (C&W, DeepFool, FAB) and a score-based one (Square).
    - ``suite="standard"`` with ``eps``, ``norm`` and ``value_range``: AutoAttack's standard
      suite (:func:`~keras_secure.evaluation.suite.standard_suite`: APGD-CE, APGD-T, FAB-T,
      Square) under AutoAttack's protocol: each attack runs only on the examples that every
      earlier attack left correctly classified, and its row (labelled ``"+ ..."`` after the
      first) is cumulative: the accuracy after it and all earlier ones. For a model with
      randomized layers the ``"rand"`` version (APGD-CE and APGD-DLR with EOT over 20 draws)
      runs instead, automatically; the report's :attr:`~RobustnessReport.suite` says which
      version ran and why.

    **Diagnostics.** Unless ``diagnostics=False``, the report carries gradient-masking flags
    (:mod:`keras_secure.evaluation.diagnostics`): vanishing or unstable gradients, a
    gradient-free attack or a transferred one beating the white-box attacks, an unbounded
    attack not reaching 0%, attacks that had not converged, randomness without EOT. A fired
    flag is printed beside the figures it concerns and means those figures are not evidence of
    robustness. The checks that need extra attack runs use at most ``diagnostic_examples``
    examples.

    The model is read through the classifier contract (:class:`keras_secure.Classifier`):
    logits, softmax, one sigmoid unit or one logit; predicted labels are the model's own
    (Keras's thresholding for binary models); keras_secure's randomized and non-differentiable
    layers anywhere inside it are attacked through their adaptive path, which the report's
    :attr:`~RobustnessReport.classifier` names.

    Args:
        model: a Keras model, a callable returning class scores, or a
            :class:`keras_secure.Classifier` (to declare ``from_logits``).
        x: inputs ``(n, ...)``, finite; or a finite ``tf.data.Dataset`` of ``(x, y)``
            (then ``y`` is None).
        y: labels ``(n,)``, ``(n, 1)`` or one-hot ``(n, classes)``.
        attacks: configured untargeted :class:`keras_secure.attacks.Attack` objects; empty
            when ``suite`` is given.
        batch_size: examples per batch, >= 1. Defaults to 256.
        verbose: 0 silent, 1 a ``keras.utils.Progbar`` per attack, 2 one line per attack.
            Defaults to 0.
        keep_adversarial: keep the clean inputs, every attack's adversarial inputs and the
            predicted labels in the report (:attr:`RobustnessReport.adversarial`,
            :meth:`RobustnessReport.save_adversarial`); memory grows with one copy of ``x``
            per attack. Defaults to False.
        suite: ``"standard"`` (AutoAttack; its ``"rand"`` version for randomized models) or
            ``"rand"``, or None to run ``attacks``. Defaults to None.
        eps: the suite's budget in input units, > 0 (suite only).
        norm: the suite's norm, ``"linf"`` or ``"l2"`` (suite only). Defaults to ``"linf"``.
        value_range: the suite's ``(low, high)`` valid input range, or None for none; required
            with ``suite`` (an attack that leaves the valid range overstates what an adversary
            can do).
        seed: seed of the suite's attacks and of the diagnostics. Defaults to 0.
        surrogate: a model of the same task trained normally (same architecture and data), or
            None. The diagnostics transfer its PGD examples to ``model``; without it the
            transfer flag is reported as not checked.
        diagnostics: compute the gradient-masking flags. Defaults to True.
        diagnostic_examples: examples the diagnostics' extra attacks run on, >= 1. Defaults
            to 100.
        strategy: a ``tf.distribute.Strategy`` whose replicas share the attack batches
            (``MirroredStrategy`` over several devices, ``MultiWorkerMirroredStrategy``), or
            None for the strategy of the enclosing scope (one device outside any). Every
            attack runs on equal units of at most ``batch_size`` examples (and at most the
            attack's own ``batch_size``), one unit per replica at a time through
            ``strategy.run``; each unit
            draws its randomness from seeds derived from the attack's seed and the unit's index,
            so the report is identical for any number of replicas, one included. Predictions
            and the diagnostics run on one device. Defaults to None.

    Returns:
        A :class:`RobustnessReport`.

    Raises:
        TypeError: if ``attacks`` holds something that is not an ``Attack``.
        ValueError: for an empty or targeted attack list, attacks with different
            ``value_range``, minimal-norm attacks (C&W, DeepFool, FAB) on a model with
            randomized layers, NaN / inf inputs, labels that are not class labels of the model,
            mismatched ``x``/``y``, a bad ``batch_size``, both or neither of ``attacks`` and
            ``suite``, or a suite without ``eps`` / ``value_range``; with a ``strategy`` of
            several replicas, a model with randomized layers or an attack with its own
            ``__call__`` (e.g. ``explain.AdaptivePGD``), and an unsupported strategy
            (``ParameterServerStrategy``, ``TPUStrategy``).
        TypeError: also for a ``strategy`` that is not a ``tf.distribute.Strategy``.

    Example:
        >>> from keras_secure import attacks
        >>> report = evaluate_robustness(model, x_test, y_test,
        ...     [attacks.FGSM(0.1, value_range=(0, 1)), attacks.PGD(0.1, value_range=(0, 1))])
        >>> print(report)
        >>> report = evaluate_robustness(model, x_test, y_test, suite="standard", eps=0.3,
        ...                              value_range=(0, 1))
        >>> report.masking_suspected
        >>> # the attack batches shared by two devices: the same report
        >>> report = evaluate_robustness(model, x_test, y_test, suite="standard", eps=0.3,
        ...     value_range=(0, 1), strategy=tf.distribute.MirroredStrategy())

    References:
        Carlini et al. (2019), "On Evaluating Adversarial Robustness" (worst case over a diverse
        set of attacks, per threat model, and the indicators of failed evaluations); Croce &
        Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of diverse
        parameter-free attacks" (AutoAttack); Athalye, Carlini & Wagner (2018), "Obfuscated
        gradients give a false sense of security".
    """
    from keras_secure.evaluation import diagnostics as diag
    from keras_secure.evaluation.suite import SUITES, standard_suite

    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    verbose = check_choice("verbose", int(verbose) if isinstance(verbose, (bool, int)) else
                           verbose, (0, 1, 2))
    keep_adversarial = check_bool("keep_adversarial", keep_adversarial)
    diagnostics = check_bool("diagnostics", diagnostics)
    diagnostic_examples = check_number("diagnostic_examples", diagnostic_examples, low=1,
                                       integer=True)
    seed = check_number("seed", seed, integer=True, allow_none=True)
    strategy = distributed.check_strategy(strategy)
    if suite is None:
        unused = [(name, value) for name, value in (("eps", eps), ("value_range", value_range))
                  if value is not None and value is not _UNSET]
        if norm != "linf":
            unused.append(("norm", norm))
        if unused:
            name, value = unused[0]
            raise ValueError(f"`{name}` is a setting of `suite`; without a suite give it to "
                             f"each attack. Received: suite=None, {name}={value!r}")
        attacks = check_attacks(attacks)
    else:
        check_choice("suite", suite, SUITES)
        if isinstance(attacks, Attack) or list(attacks):
            raise ValueError("Give either `attacks` or `suite`, not both. Received: "
                             f"suite={suite!r} and {len(check_attacks(attacks))} attack(s)")
        if eps is None:
            raise ValueError(f"`eps` is required with suite={suite!r} (the budget in input "
                             "units, e.g. 8/255 or 0.3). Received: eps=None")
        if value_range is _UNSET:
            raise ValueError(f"`value_range` is required with suite={suite!r}: the valid range "
                             "of the inputs, e.g. (0.0, 1.0), or None if they have none. "
                             "Received: no value_range")
    x, y = as_arrays(x, y)
    if y is None:
        raise ValueError("`y` is required: robust accuracy needs labels (or pass a "
                         "tf.data.Dataset of (x, y) as `x`). Received: y=None")
    clf = as_classifier(model)
    x, y = clf.check(x, y)
    if surrogate is not None:
        if not diagnostics:
            raise ValueError("`surrogate` is used by the diagnostics' transfer check, which "
                             "diagnostics=False switches off. Received: a surrogate with "
                             "diagnostics=False")
        other = as_classifier(surrogate)
        if other.num_classes != clf.num_classes:
            raise ValueError(f"`surrogate` must have the model's {clf.num_classes} classes. "
                             f"Received: a surrogate with {other.num_classes} classes")
        try:
            other.check(x[:1])
        except ValueError as err:
            raise ValueError(f"`surrogate` must take the model's inputs: {err}") from None
    suite_info = None
    if suite is not None:
        version = "rand" if clf.randomized else suite
        attacks, notes = standard_suite(eps, norm=norm, num_classes=clf.num_classes,
                                        version=version, value_range=value_range,
                                        images=x.ndim == 4, seed=seed)
        suite_info = {"suite": suite, "version": version, "attacks": [a.label for a in attacks],
                      "protocol": "AutoAttack: each attack runs on the examples every earlier "
                                  "attack left correctly classified; rows are cumulative",
                      "notes": notes}
        if suite == "rand" and not clf.randomized:
            suite_info["notes"] = [
                "The 'rand' version (EOT over 20 draws) ran on a model without randomized "
                "layers: its EOT averages identical gradients; 'standard' is the suite for "
                "deterministic models.", *notes]
        if version != suite:
            layers = sorted({type(layer).__name__ for layer, _ in clf.adaptive_layers})
            suite_info["notes"] = [
                f"The model has randomized layers ({', '.join(layers)}), so the 'rand' version "
                "ran (APGD-CE and APGD-DLR with EOT over 20 draws) instead of "
                f"{suite!r}.", *notes]
    check_attacks(attacks, clf)
    if strategy.num_replicas_in_sync > 1:
        _check_distributable(attacks, clf, strategy)
    for attack in attacks:  # every mistake (value range, target classes, ...) before any work
        attack.check_data(clf, x, y)
    description = clf.describe()
    if clf.logits_from_log_probabilities and any(a.uses_gradients for a in attacks):
        saturated = int(clf.saturated(x, batch_size).sum())
        if saturated:
            message = (
                f"{saturated} of {x.shape[0]} examples have a top probability that rounds to 1 "
                "in float32: the attacks read this model's logits as log-probabilities, which "
                "have no gradient there, so gradient attacks cannot move those examples and "
                "the figures may overstate robustness. Give keras_secure the logits: a model "
                "that outputs them (declare from_logits=True), or one whose last layer is a "
                "softmax/sigmoid keras_secure can see.")
            warnings.warn(message, UserWarning, stacklevel=2)
            description["warnings"] = [message]
    cascade = suite is not None
    n = x.shape[0]
    y_attack = np.asarray(y, np.int32)
    clean_pred = clf.predict_labels(x, batch_size)
    clean_correct = clean_pred == y
    clean_acc = float(clean_correct.mean())
    kept, predictions = {}, {"clean": clean_pred}
    labels = _unique_labels([a.label for a in attacks])
    if cascade:
        labels = [label if i == 0 else f"+ {label}" for i, label in enumerate(labels)]
    results, survived, ran, broke = [], [], [], []
    active = clean_correct.copy()  # cascade: still correct after every attack so far
    # cascade: per example, the adversarial input of the attack that broke it (else x)
    combined, combined_pred = x.astype(np.float32, copy=True), clean_pred.copy()
    out = sys.stdout if verbose == 1 else sys.stderr
    for index, (attack, label) in enumerate(zip(attacks, labels), start=1):
        todo = np.flatnonzero(active) if cascade else np.arange(n)
        if verbose:
            print(f"[{index}/{len(attacks)}] {label} on {todo.size} examples", file=out,
                  flush=True, end="\n" if verbose == 1 else " ...")
        bar = keras.utils.Progbar(todo.size, unit_name="example") if verbose == 1 else None
        start = time.perf_counter()
        x_adv = x.astype(np.float32, copy=True)
        adv_pred = clean_pred.copy()
        if todo.size and distributed.overrides_call(attack):  # its own __call__: one device
            parts = []
            for i in range(0, todo.size, batch_size):
                chunk = todo[i:i + batch_size]
                parts.append(np.asarray(attack(clf, x[chunk], y[chunk])))
                if bar is not None:
                    bar.update(min(todo.size, i + batch_size))
            x_adv[todo] = np.concatenate(parts)
        elif todo.size:
            # units of at most `batch_size` (and the attack's own), one per replica at a
            # time, each seeded by its index: the same figures for any number of replicas
            unit = min(batch_size, attack.batch_size or batch_size)
            x_adv[todo] = distributed.attack_units(
                attack, clf, x_adv[todo], y_attack[todo], unit, strategy,
                progress=None if bar is None else bar.update)
        if todo.size:
            adv_pred[todo] = clf.predict_labels(x_adv[todo], batch_size)
        seconds = time.perf_counter() - start
        ran_mask = np.zeros(n, bool)
        ran_mask[todo] = True
        adv_correct = (adv_pred == y) & clean_correct
        fooled = ran_mask & clean_correct & ~adv_correct
        if cascade:
            active &= ~fooled
            robust_now = active.copy()
            combined[fooled], combined_pred[fooled] = x_adv[fooled], adv_pred[fooled]
            # the row is cumulative: its examples, predictions and norms are those of every
            # attack so far (each example's from the attack that broke it)
            x_adv, adv_pred = combined.copy(), combined_pred.copy()
            shown = clean_correct & ~robust_now
        else:
            robust_now = adv_correct
            shown = fooled
        ran.append(ran_mask)
        broke.append(fooled)
        survived.append(robust_now)
        if keep_adversarial:
            kept[label], predictions[label] = x_adv, adv_pred
        mean_norm, median_norm, p90_norm = _stats(
            _norms(x_adv[shown] - x[shown].astype(np.float32), attack.norm))
        accuracy = float(robust_now.mean())
        results.append(AttackResult(
            attack=label, norm=attack.norm, eps=attack.eps,
            threat_model=threat_model(attack.norm, attack.eps), num_examples=n,
            clean_accuracy=clean_acc, adversarial_accuracy=accuracy,
            accuracy_drop=clean_acc - accuracy,
            success_rate=_rate(clean_correct & ~robust_now, clean_correct),
            mean_perturbation=mean_norm, median_perturbation=median_norm,
            p90_perturbation=p90_norm, seconds=seconds, cumulative=cascade))
        if verbose == 2:
            print(f" accuracy {100 * accuracy:.1f}% ({seconds:.1f} s)", file=sys.stderr,
                  flush=True)
    worst, worst_masks = _worst_cases(results, survived, clean_correct)
    flags = []
    if diagnostics:
        groups: dict = {}
        for i, row in enumerate(results):
            if row.eps is not None:
                groups.setdefault(row.threat_model, []).append(i)
        if verbose:
            print("[diagnostics] gradient-masking checks", file=out, flush=True,
                  end="\n" if verbose == 1 else " ...")
        start = time.perf_counter()
        evidence = diag.Evidence(clf, x, y, clean_correct, attacks, ran, broke, batch_size,
                                 seed, diagnostic_examples, labels=labels)
        flags = diag.diagnose(evidence, groups, surrogate=surrogate)
        if verbose == 2:
            fired = sum(bool(f.fired) for f in flags)
            print(f" {fired} flag(s) fired ({time.perf_counter() - start:.1f} s)",
                  file=sys.stderr, flush=True)
        results = [_with_flags(row, flags) for row in results]
        worst = [_with_flags(row, flags) for row in worst]
    robust = {row.attack: mask for row, mask in zip(results, survived)}
    robust.update({row.attack: mask for row, mask in zip(worst, worst_masks)})
    return RobustnessReport(results, worst, description, labels=y, clean_correct=clean_correct,
                            robust=robust, inputs=x if keep_adversarial else None,
                            adversarial=kept,
                            predictions=predictions if keep_adversarial else {},
                            diagnostics=[f.to_dict() for f in flags] if diagnostics else None,
                            suite=suite_info)


def _check_distributable(attacks, clf, strategy) -> None:
    """Refuse, before any work, what cannot be split across ``strategy``'s replicas with the
    single-device figures."""
    own = [a.label for a in attacks if distributed.overrides_call(a)]
    if own:
        raise ValueError(
            f"`strategy` splits attack batches across replicas, but the attacks {own} run "
            "their own __call__ (outside the shared attack loop), which cannot be split. "
            "Evaluate them without a strategy. "
            f"Received: strategy={type(strategy).__name__} with "
            f"{strategy.num_replicas_in_sync} replicas")
    if clf.randomized:
        layers = sorted({type(layer).__name__ for layer, _ in clf.adaptive_layers})
        raise ValueError(
            f"`strategy` cannot evaluate a model with randomized layers ({', '.join(layers)}): "
            "their random draws come from one generator that the replicas would share, so the "
            "figures would depend on the number of replicas and on timing. Evaluate it without "
            f"a strategy. Received: strategy={type(strategy).__name__} with "
            f"{strategy.num_replicas_in_sync} replicas")


def _with_flags(row: AttackResult, flags) -> AttackResult:
    """The row with the names of the fired flags that concern it: global ones, its norm's and
    its threat model's."""
    norm_label = "Linf" if row.norm == "linf" else "L2"
    names = tuple(dict.fromkeys(
        f.flag for f in flags if f.fired and f.threat_model in (None, norm_label,
                                                                row.threat_model)))
    if row.eps is None:  # minimal-norm rows: only their own attack-failure flag
        names = tuple(f.flag for f in flags if f.fired and f.threat_model == row.threat_model
                      and f.evidence.get("attack") == row.attack)
    return dataclasses.replace(row, flags=names)


def _worst_cases(results, survived, clean_correct):
    """One row per bounded threat model (robust only if it survives all of its attacks), and
    the per-example robust masks of those rows."""
    groups: dict = {}
    for row, robust in zip(results, survived):
        if row.eps is None:
            continue  # minimal-norm attack without a budget: no threat model to be worst in
        # grouped by the label the user reads: an eps of np.float32(0.1) is the budget 0.1
        groups.setdefault(row.threat_model, []).append((row, robust))
    worst, masks = [], []
    clean_acc = float(clean_correct.mean())
    for label, members in groups.items():
        robust = np.logical_and.reduce([r for _, r in members]) & clean_correct
        masks.append(robust)
        norm, eps = members[0][0].norm, members[0][0].eps
        worst.append(AttackResult(
            attack=f"Worst case ({label})", norm=norm, eps=eps, threat_model=label,
            num_examples=len(clean_correct), clean_accuracy=clean_acc,
            adversarial_accuracy=float(robust.mean()),
            accuracy_drop=clean_acc - float(robust.mean()),
            success_rate=_rate(clean_correct & ~robust, clean_correct),
            mean_perturbation=float("nan"), median_perturbation=float("nan"),
            p90_perturbation=float("nan"), seconds=sum(r.seconds for r, _ in members)))
    return worst, masks


def _rate(hits: np.ndarray, among: np.ndarray) -> float:
    return float(hits.sum() / among.sum()) if among.sum() else float("nan")


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out
