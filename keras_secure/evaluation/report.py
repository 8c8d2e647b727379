"""Robustness report: accuracy under a set of attacks, per attack and in the worst case."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from typing import Sequence

import numpy as np
import tensorflow as tf

from keras_secure.attacks.base import Attack, check_number, logits_function

PAPER_COLUMNS = ("Attack Type", "Clean Accuracy (%)", "Accuracy Under Attack (%)",
                 "Accuracy Drop (%)")


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """One row of a :class:`RobustnessReport`.

    Attributes:
        attack: the attack's label, e.g. ``"PGD-Linf (eps=0.1)"``; ``"Worst case"`` for the row
            that counts an example as robust only if it survives every attack.
        norm: ``"linf"``/``"l2"`` (the norm the perturbation is measured in), None for the worst
            case row.
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
        seconds: wall-clock time of the attack over all examples.

    Example:
        >>> row = report["PGD-Linf (eps=0.1)"]
        >>> row.adversarial_accuracy, row.success_rate
    """

    attack: str
    norm: str | None
    num_examples: int
    clean_accuracy: float
    adversarial_accuracy: float
    accuracy_drop: float
    success_rate: float
    mean_perturbation: float
    median_perturbation: float
    seconds: float


class RobustnessReport:
    """The result of :func:`evaluate_robustness`: one :class:`AttackResult` per attack plus the
    worst case.

    Printing it gives the table of Table 1 of the project's seed paper (Attack Type | Clean
    Accuracy (%) | Accuracy Under Attack (%) | Accuracy Drop (%)); :meth:`table` with
    ``full=True`` adds success rate, perturbation norms and time. :meth:`to_dict`,
    :meth:`to_dataframe` and :meth:`to_json` export it.

    Example:
        >>> report = evaluate_robustness(model, x, y, [FGSM(0.1), PGD(0.1)])
        >>> print(report)
        >>> report.to_dataframe()
    """

    def __init__(self, results: Sequence[AttackResult], worst_case: AttackResult):
        self.results = list(results)
        self.worst_case = worst_case

    @property
    def rows(self) -> list[AttackResult]:
        """All rows: one per attack, then the worst case."""
        return [*self.results, self.worst_case]

    def __getitem__(self, attack: str) -> AttackResult:
        for row in self.rows:
            if row.attack == attack:
                return row
        raise KeyError(f"No row for attack {attack!r}; rows: {[r.attack for r in self.rows]}")

    def to_dict(self) -> dict:
        """``{"results": [row dicts...], "worst_case": row dict}`` (JSON-ready floats)."""
        return {"results": [dataclasses.asdict(r) for r in self.results],
                "worst_case": dataclasses.asdict(self.worst_case)}

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
        """A ``pandas.DataFrame`` with one row per attack and the worst case, indexed by attack."""
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(r) for r in self.rows]).set_index("attack")

    def table(self, full: bool = False, fmt: str = "markdown") -> str:
        """Render the report as a table.

        Args:
            full: add success rate, mean/median perturbation and seconds. Defaults to False
                (the seed paper's four columns).
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
        if full:
            header += ["Success Rate (%)", "Mean Pert.", "Median Pert.", "Norm", "Time (s)"]

        def pct(v):
            return "n/a" if not math.isfinite(v) else f"{100 * v:.1f}"

        def num(v):
            return "n/a" if not math.isfinite(v) else f"{v:.4f}"

        body = []
        for r in self.rows:
            row = [r.attack, pct(r.clean_accuracy), pct(r.adversarial_accuracy),
                   pct(r.accuracy_drop)]
            if full:
                row += [pct(r.success_rate), num(r.mean_perturbation),
                        num(r.median_perturbation), r.norm or "-", f"{r.seconds:.1f}"]
            body.append(row)
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

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"RobustnessReport({len(self.results)} attacks)\n{self.table(fmt='text')}"


def _norms(delta: np.ndarray, norm: str) -> np.ndarray:
    flat = delta.reshape(delta.shape[0], int(np.prod(delta.shape[1:])))
    if norm == "linf":
        return np.abs(flat).max(axis=1)
    return np.sqrt((flat.astype(np.float64) ** 2).sum(axis=1))


def _stats(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(np.median(values))


def evaluate_robustness(
    model,
    x,
    y,
    attacks: Sequence[Attack],
    batch_size: int = 256,
    verbose: bool = False,
) -> RobustnessReport:
    """Measure a classifier's accuracy under each attack and in the worst case over all.

    Every attack runs on every example (batched); an example counts as robust under an attack
    if it is classified correctly both clean and attacked, and as robust in the worst case only
    if it survives every attack. Run a diverse set - gradient attacks (PGD, APGD), minimal-norm
    ones (C&W, DeepFool) and a score-based one (Square) - so that gradient masking in one does
    not overstate robustness: a defence that is only robust to gradient attacks shows up as a
    Square/worst-case row much lower than the PGD row.

    Args:
        model: a Keras model or callable returning logits (see
            :func:`keras_secure.attacks.logits_function`).
        x: inputs ``(n, ...)``.
        y: integer labels ``(n,)`` or one-hot ``(n, classes)``.
        attacks: non-empty sequence of configured :class:`keras_secure.attacks.Attack` objects
            (untargeted).
        batch_size: examples per batch, >= 1. Defaults to 256.
        verbose: print one progress line per attack to stderr. Defaults to False.

    Returns:
        A :class:`RobustnessReport`.

    Raises:
        TypeError: if ``attacks`` holds something that is not an ``Attack``.
        ValueError: for an empty or targeted attack list, mismatched ``x``/``y``, or a bad
            ``batch_size``.

    Example:
        >>> from keras_secure import attacks
        >>> report = evaluate_robustness(model, x_test, y_test,
        ...     [attacks.FGSM(0.1, value_range=(0, 1)), attacks.PGD(0.1, value_range=(0, 1))])
        >>> print(report)

    References:
        Carlini et al. (2019), "On Evaluating Adversarial Robustness" (worst case over a diverse
        set of attacks); Croce & Hein (2020) (AutoAttack's worst-case robust accuracy).
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
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` and `y` must have the same number of examples. Received: "
                         f"x.shape[0]={x.shape[0]}, y.shape[0]={y.shape[0]}")
    n = x.shape[0]
    logits_fn = logits_function(model)
    predict = tf.function(lambda b: tf.argmax(logits_fn(b), axis=-1), reduce_retracing=True)

    def predictions(inputs):
        return np.concatenate([predict(tf.cast(inputs[i:i + batch_size], tf.float32)).numpy()
                               for i in range(0, n, batch_size)])

    clean_correct = predictions(x) == y
    clean_acc = float(clean_correct.mean())
    robust_all = clean_correct.copy()
    labels = _unique_labels([a.label for a in attacks])
    results = []
    total_seconds = 0.0
    for index, (attack, label) in enumerate(zip(attacks, labels), start=1):
        if verbose:
            print(f"[{index}/{len(attacks)}] {label} on {n} examples ...", end="", flush=True,
                  file=sys.stderr)
        start = time.perf_counter()
        x_adv = np.concatenate([np.asarray(attack(model, x[i:i + batch_size],
                                                  y[i:i + batch_size]))
                                for i in range(0, n, batch_size)])
        seconds = time.perf_counter() - start
        total_seconds += seconds
        adv_correct = (predictions(x_adv) == y) & clean_correct
        robust_all &= adv_correct
        fooled = clean_correct & ~adv_correct
        mean_norm, median_norm = _stats(_norms(x_adv[fooled] - x[fooled].astype(np.float32),
                                               attack.norm))
        results.append(AttackResult(
            attack=label, norm=attack.norm, num_examples=n, clean_accuracy=clean_acc,
            adversarial_accuracy=float(adv_correct.mean()),
            accuracy_drop=clean_acc - float(adv_correct.mean()),
            success_rate=_rate(fooled, clean_correct), mean_perturbation=mean_norm,
            median_perturbation=median_norm, seconds=seconds))
        if verbose:
            print(f" accuracy {100 * adv_correct.mean():.1f}% ({seconds:.1f} s)",
                  file=sys.stderr, flush=True)
    worst = AttackResult(
        attack="Worst case", norm=None, num_examples=n, clean_accuracy=clean_acc,
        adversarial_accuracy=float(robust_all.mean()),
        accuracy_drop=clean_acc - float(robust_all.mean()),
        success_rate=_rate(clean_correct & ~robust_all, clean_correct),
        mean_perturbation=float("nan"), median_perturbation=float("nan"),
        seconds=total_seconds)
    return RobustnessReport(results, worst)


def _rate(hits: np.ndarray, among: np.ndarray) -> float:
    return float(hits.sum() / among.sum()) if among.sum() else float("nan")


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out
