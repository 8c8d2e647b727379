"""Robustness curves: accuracy under attack as a function of the budget eps.

A single robust-accuracy figure answers one threat model. Plotting it against eps shows how
fast a model breaks and is one of the sanity checks of Carlini et al. (2019): under a working
attack the accuracy falls as eps grows and reaches chance or zero at a large enough eps; a
curve that rises or plateaus well above zero points at gradient masking or a broken attack.

:func:`robustness_curve` runs :func:`~keras_secure.evaluation.evaluate_robustness` once per eps
with every attack rebuilt at that budget, so every point of the curve, and the worst case over
the attacks at each eps, is the robustness report's own figure.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from keras_secure.attacks.base import Attack
from keras_secure.classifier import as_arrays
from keras_secure.evaluation.report import evaluate_robustness
from keras_secure.validation import check_number

__all__ = ["RobustnessCurve", "plot_robustness_curve", "robustness_curve"]


@dataclasses.dataclass
class RobustnessCurve:
    """Accuracy under attack at each eps: the result of :func:`robustness_curve`.

    Attributes:
        eps: the budgets, increasing, in input units, shape ``(m,)``.
        norm: ``"linf"`` or ``"l2"``, the norm every attack of the curve is bounded in.
        accuracy: attack name -> accuracy under that attack at each eps (fractions in [0, 1],
            shape ``(m,)``; an example misclassified clean counts as wrong).
        worst_case: at each eps, the accuracy when an example counts as robust only if it
            survives every attack at that eps (the report's worst-case row), shape ``(m,)``.
        clean_accuracy: accuracy on the clean inputs, in [0, 1].
        num_examples: number of evaluated examples (each point is a mean over them).
        reports: the :class:`RobustnessReport` of each eps, in order.

    Example:
        >>> curve = robustness_curve(model, x, y, {"PGD": lambda e: PGD(e)}, [0.1, 0.2])
        >>> curve.accuracy["PGD"], curve.worst_case
        >>> curve.plot(path="curve.png")
    """

    eps: np.ndarray
    norm: str
    accuracy: dict
    worst_case: np.ndarray
    clean_accuracy: float
    num_examples: int
    reports: list = dataclasses.field(repr=False, default_factory=list)

    @property
    def names(self) -> list[str]:
        """The attack names, in the order given."""
        return list(self.accuracy)

    def to_dict(self) -> dict:
        """JSON-ready: ``{"norm", "eps", "clean_accuracy", "num_examples", "accuracy": {name:
        [...]}, "worst_case": [...]}``."""
        return {"norm": self.norm, "eps": [float(e) for e in self.eps],
                "clean_accuracy": float(self.clean_accuracy),
                "num_examples": int(self.num_examples),
                "accuracy": {k: [float(v) for v in a] for k, a in self.accuracy.items()},
                "worst_case": [float(v) for v in self.worst_case]}

    def table(self, fmt: str = "markdown") -> str:
        """One row per eps, one column per attack plus the worst case, accuracies in %.

        Args:
            fmt: ``"markdown"`` or ``"text"``. Defaults to ``"markdown"``.

        Raises:
            ValueError: for an unknown ``fmt``.
        """
        from keras_secure.evaluation.report import _render

        norm = "L-inf" if self.norm == "linf" else "L2"
        header = [f"{norm} eps", *[f"{n} (%)" for n in self.names], "Worst case (%)"]
        body = [[f"{e:g}", *[f"{100 * self.accuracy[n][i]:.1f}" for n in self.names],
                 f"{100 * self.worst_case[i]:.1f}"] for i, e in enumerate(self.eps)]
        return _render(header, body, fmt)

    def plot(self, ax=None, path: str | None = None, title: str | None = None):
        """:func:`plot_robustness_curve` of this curve."""
        return plot_robustness_curve(self, ax=ax, path=path, title=title)


def robustness_curve(
    model,
    x,
    y=None,
    attacks=(),
    eps_values: Sequence[float] = (),
    *,
    batch_size: int = 256,
    verbose=0,
    diagnostics: bool = True,
) -> RobustnessCurve:
    """Accuracy under each attack, and in the worst case over them, at each eps.

    For every eps the attacks are rebuilt at that budget and evaluated together by
    :func:`~keras_secure.evaluation.evaluate_robustness` on the same examples, so the curve's
    points are exactly the rows of those reports (kept in :attr:`RobustnessCurve.reports`).

    Args:
        model: a Keras model, a callable returning class scores, or a
            :class:`keras_secure.Classifier`.
        x: inputs ``(n, ...)``; or a finite ``tf.data.Dataset`` of ``(x, y)`` (then ``y`` is
            None). Read once.
        y: labels ``(n,)``, ``(n, 1)`` or one-hot.
        attacks: what to run at each eps, one of
            - a mapping ``{name: factory}`` where ``factory(eps)`` returns a configured
              :class:`~keras_secure.attacks.Attack` with budget ``eps``;
            - a sequence of such factories (named by the attack they build, e.g.
              ``"PGD-Linf"``);
            - a sequence of configured attacks used as templates: each is rebuilt from its
              ``get_config()`` with the new eps. A template with an explicit ``step_size``
              is refused (its step would not scale with eps: pass a factory).
            Sequences may mix factories and templates.
        eps_values: the budgets, finite numbers > 0 in strictly increasing order, in the
            units of ``x``.
        batch_size: examples per batch, >= 1. Defaults to 256.
        verbose: passed to ``evaluate_robustness`` (0, 1 or 2). Defaults to 0.
        diagnostics: run ``evaluate_robustness``'s gradient-masking diagnostics for every eps
            (each report's ``diagnostics``); they cost extra attack runs per eps, so pass False
            when the threat model's own report already carries them. Defaults to True.

    Returns:
        A :class:`RobustnessCurve`.

    Raises:
        TypeError: if ``attacks`` holds something that is neither an ``Attack`` nor a callable,
            or a factory returns something that is not an ``Attack``.
        ValueError: for no attacks, bad ``eps_values``, a factory whose attack has another eps
            than asked (the curve would be drawn at the wrong budget), attacks of different
            norms (their eps are not one axis), a template with a fixed ``step_size``, and
            whatever ``evaluate_robustness`` refuses.

    Example:
        >>> from keras_secure import attacks as A
        >>> curve = robustness_curve(model, x_test, y_test, {
        ...     "FGSM": lambda e: A.FGSM(e, value_range=(0, 1)),
        ...     "PGD-20": lambda e: A.PGD(e, steps=20, value_range=(0, 1), seed=0),
        ... }, eps_values=[0.05, 0.1, 0.2, 0.3])
        >>> print(curve.table())
        >>> curve.plot(path="accuracy_vs_eps.png")

    References:
        Carlini et al. (2019), "On Evaluating Adversarial Robustness", sections 4.2 and 5.2
        (report accuracy against the perturbation budget; it must fall to chance or zero).
    """
    eps_values = _check_eps_values(eps_values)
    factories = _factories(attacks, eps_values[0])
    x, y = as_arrays(x, y)
    names, rows, worst, reports, norm = list(factories), {}, [], [], None
    for eps in eps_values:
        built = [_build(name, factory, eps) for name, factory in factories.items()]
        norms = {a.norm for a in built}
        if norm is not None:
            norms.add(norm)
        if len(norms) > 1:
            raise ValueError(
                "`attacks` must all be bounded in the same norm: a curve's eps axis is one "
                "norm's budget. Received: "
                + ", ".join(f"{n} ({a.norm})" for n, a in zip(names, built)))
        norm = built[0].norm
        report = evaluate_robustness(model, x, y, built, batch_size=batch_size, verbose=verbose,
                                     diagnostics=diagnostics)
        for name, row in zip(names, report.results):
            rows.setdefault(name, []).append(row.adversarial_accuracy)
        worst.append(report.worst_case_for(norm, built[0].eps).adversarial_accuracy)
        reports.append(report)
    return RobustnessCurve(
        eps=np.asarray(eps_values, dtype=np.float64), norm=norm,
        accuracy={k: np.asarray(v) for k, v in rows.items()},
        worst_case=np.asarray(worst), clean_accuracy=reports[0].clean_accuracy,
        num_examples=reports[0].results[0].num_examples, reports=reports)


def _check_eps_values(eps_values) -> list[float]:
    if isinstance(eps_values, (str, bytes)) or not hasattr(eps_values, "__len__"):
        raise TypeError("`eps_values` must be a sequence of numbers. "
                        f"Received: eps_values={eps_values!r}")
    values = [check_number("eps_values", e, low=0.0, low_inclusive=False) for e in eps_values]
    if not values:
        raise ValueError("`eps_values` must hold at least one budget. Received: eps_values=[]")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError("`eps_values` must be strictly increasing. "
                         f"Received: eps_values={list(eps_values)!r}")
    return values


def _factories(attacks, probe_eps: float) -> dict[str, Callable[[float], Attack]]:
    """``{name: factory}`` from a mapping, or from a sequence of factories and templates."""
    if isinstance(attacks, Mapping):
        items = list(attacks.items())
        for name, factory in items:
            if not callable(factory) or isinstance(factory, Attack):
                raise TypeError(f"`attacks[{name!r}]` must be a function eps -> Attack. "
                                f"Received: {factory!r}")
        if not items:
            raise ValueError("`attacks` must hold at least one attack. Received: attacks={}")
        return {str(name): factory for name, factory in items}
    if isinstance(attacks, Attack) or callable(attacks):
        attacks = [attacks]
    attacks = list(attacks)
    if not attacks:
        raise ValueError("`attacks` must hold at least one attack or factory. "
                         "Received: attacks=[]")
    named = []
    for item in attacks:
        if isinstance(item, Attack):
            named.append((_base_name(item), _template_factory(item)))
        elif callable(item):
            first = _build("attacks", item, probe_eps)
            named.append((_base_name(first), item))
        else:
            raise TypeError("`attacks` must hold keras_secure Attack objects or functions "
                            f"eps -> Attack. Received: {item!r}")
    out, seen = {}, {}
    for name, factory in named:  # PGD twice (e.g. two losses): "PGD-Linf", "PGD-Linf #2"
        seen[name] = seen.get(name, 0) + 1
        out[name if seen[name] == 1 else f"{name} #{seen[name]}"] = factory
    return out


def _base_name(attack: Attack) -> str:
    """The attack's label without its budget: ``"PGD-Linf"``."""
    return f"{attack.name}-{'Linf' if attack.norm == 'linf' else 'L2'}"


def _template_factory(template: Attack) -> Callable[[float], Attack]:
    config = template.get_config()
    if config.get("step_size") is not None:
        raise ValueError(
            f"`attacks` holds {template!r} with a fixed step_size={config['step_size']!r}: "
            "rebuilt at other budgets its step would not follow eps. Leave step_size=None "
            "(it then scales with eps) or pass a factory, e.g. lambda eps: "
            f"{type(template).__name__}(eps, step_size=eps / 4, ...).")
    return lambda eps: type(template).from_config({**config, "eps": eps})


def _build(name: str, factory, eps) -> Attack:
    """``factory(eps)``, checked to be an Attack with that budget."""
    attack = factory(eps)
    if not isinstance(attack, Attack):
        raise TypeError(f"`attacks`: the factory {name!r} must return a keras_secure Attack. "
                        f"Received: {attack!r}")
    if attack.eps is None or not math.isclose(attack.eps, eps, rel_tol=1e-6, abs_tol=0.0):
        raise ValueError(
            f"`attacks`: the factory {name!r} was asked for eps={eps:g} but built "
            f"{attack.label} (eps={attack.eps!r}); the curve would be drawn at the wrong "
            "budget. Pass the factory's argument on as the attack's eps.")
    return attack


def plot_robustness_curve(curve: RobustnessCurve, ax=None, path: str | None = None,
                          title: str | None = None):
    """Plot accuracy (%) against eps: one line per attack, the worst case in black and the clean
    accuracy dashed.

    Uses matplotlib's object API (no pyplot state, no GUI backend needed).

    Args:
        curve: a :class:`RobustnessCurve`.
        ax: a matplotlib ``Axes`` to draw into; None makes a new 6x4 inch figure.
        path: if given, the figure is saved there (PNG at 100 dpi, or the format of the
            extension).
        title: the axes' title. Defaults to none.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        TypeError: if ``curve`` is not a :class:`RobustnessCurve`.

    Example:
        >>> fig = plot_robustness_curve(curve, path="curve.png")
    """
    if not isinstance(curve, RobustnessCurve):
        raise TypeError(f"`curve` must be a RobustnessCurve. Received: {type(curve).__name__}")
    from matplotlib.figure import Figure

    fig = ax.figure if ax is not None else Figure(figsize=(6, 4))
    ax = ax if ax is not None else fig.add_subplot()
    for name, acc in curve.accuracy.items():
        ax.plot(curve.eps, 100 * acc, marker="o", label=name)
    if len(curve.accuracy) > 1:
        ax.plot(curve.eps, 100 * curve.worst_case, color="black", lw=2.5, marker="s",
                label="worst case")
    ax.axhline(100 * curve.clean_accuracy, color="grey", ls="--", label="clean")
    ax.set_xlabel(f"{'L-inf' if curve.norm == 'linf' else 'L2'} eps")
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig

