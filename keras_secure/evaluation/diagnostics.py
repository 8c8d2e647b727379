"""Gradient-masking diagnostics: indicators that a robustness figure is not evidence of
robustness, computed automatically by :func:`~keras_secure.evaluation.evaluate_robustness`.

Each indicator is a :class:`Flag`. A fired flag means the attacks behind a figure failed in a
way a real adversary would not, so the figure overstates robustness: gradients that vanish or
point nowhere useful, a gradient-free or transferred attack doing better than the white-box
ones, an unbounded attack that cannot reach 0% accuracy, more steps that still help, a
randomized model attacked without Expectation over Transformation. They follow Athalye,
Carlini & Wagner (2018), Carlini et al. (2019) and Pintor et al. (2022).

The checks that need extra attack runs work on at most ``max_examples`` examples (a seeded
sample) so that they stay cheap next to the evaluation; their evidence says how many.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from keras_secure.attacks.apgd import APGD
from keras_secure.attacks.base import log_sum_exp_margin
from keras_secure.attacks.pgd import PGD
from keras_secure.attacks.square import Square

#: A flag fires when an indicator concerns at least this many examples...
MIN_COUNT = 2
#: ... and at least this fraction of the examples it was checked on.
MIN_FRACTION = 0.03
#: Vanishing gradients: per-example L2 norm at or below this counts as zero.
VANISHING_NORM = 1e-10
#: ... and the flag fires when at least this fraction of examples has one.
VANISHING_FRACTION = 0.10
#: Unstable gradients: fires when the loss fails to increase along the PGD path for at least
#: this fraction of examples, or successive gradients are nearly orthogonal on average.
NOT_INCREASING_FRACTION = 0.10
MIN_MEAN_COSINE = 0.05
#: Unbounded attack: fires when accuracy stays above this under a budget that covers (or is
#: 10x) the threat model's.
UNBOUNDED_MAX_ACCURACY = 0.02
UNBOUNDED_STEPS = 10
#: Queries of the Square attack the black-box check runs when the report has no gradient-free
#: attack (on at most ``max_examples`` examples that survived the white-box attacks).
BLACK_BOX_QUERIES = 250
#: Minimal-norm attacks without a budget must break at least this fraction of the correctly
#: classified examples.
MINIMAL_NORM_SUCCESS = 0.99

NO_GRADIENT = ("Not checked: the model has no input gradient (a gradient attack cannot run; "
               "see vanishing_gradients).")
NOT_EVIDENCE = ("the figures of this threat model are not evidence of robustness: the attacks "
                "failed in a way a real adversary would not")

REFERENCES = {
    "randomness_without_eot": "Athalye, Carlini & Wagner (2018), section 4.2 (EOT)",
    "vanishing_gradients": "Athalye et al. (2018) section 4.1; Carlini & Wagner (2016), "
                           "defensive distillation",
    "unstable_gradients": "Carlini et al. (2019) section 5.2; Zou et al. (2026), seed 002",
    "black_box_beats_white_box": "Carlini et al. (2019) section 4.2; Croce & Hein (2020)",
    "transfer_beats_white_box": "Athalye et al. (2018); Carlini et al. (2019) section 4.2",
    "unbounded_attack_fails": "Carlini et al. (2019) section 4.4; Pintor et al. (2022)",
    "not_converged": "Carlini et al. (2019) section 4.3; Pintor et al. (2022)",
}


@dataclasses.dataclass(frozen=True)
class Flag:
    """One gradient-masking indicator.

    Attributes:
        flag: its name (a key of :data:`REFERENCES`).
        fired: True if the indicator was seen, False if checked and not seen, None if it could
            not be checked (the message says why).
        threat_model: the threat model it concerns (``"Linf, eps=0.3"``), ``"Linf"`` / ``"L2"``
            for a whole norm, or None for the model as a whole.
        message: one or two sentences for the report.
        evidence: the numbers behind it (counts, fractions, accuracies, settings).
        reference: the paper(s) that describe the indicator.
    """

    flag: str
    fired: bool | None
    threat_model: str | None
    message: str
    evidence: dict
    reference: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _flag(name, fired, threat_model, message, **evidence) -> Flag:
    return Flag(name, fired, threat_model, message, evidence, REFERENCES[name])


def _enough(count: int, among: int) -> bool:
    return among > 0 and count >= MIN_COUNT and count / among >= MIN_FRACTION


class Evidence:
    """What :func:`diagnose` needs from an evaluation: the classifier, the data and, per
    attack, which examples it ran on and which it broke."""

    def __init__(self, clf, x, y, clean_correct, attacks, ran, broke, batch_size, seed,
                 max_examples, labels=None):
        self.clf, self.x, self.y = clf, x, y
        self.clean_correct = clean_correct
        self.attacks, self.ran, self.broke = attacks, ran, broke
        #: the report's row label of each attack (unique: "C&W-L2 #2" for a second C&W)
        self.labels = list(labels) if labels is not None else [a.label for a in attacks]
        self.batch_size, self.seed, self.max_examples = batch_size, seed, max_examples
        self._rng = np.random.default_rng(0 if seed is None else seed)

    def sample(self, mask: np.ndarray) -> np.ndarray:
        """Indices of at most ``max_examples`` examples of ``mask`` (seeded, sorted)."""
        index = np.flatnonzero(mask)
        if index.size > self.max_examples:
            index = np.sort(self._rng.choice(index, self.max_examples, replace=False))
        return index

    def correct_after(self, attack, index: np.ndarray, source=None) -> np.ndarray | None:
        """Whether each example of ``index`` stays correctly classified under ``attack`` (run
        on ``source``, default the evaluated model); None if the gradient attack cannot run
        because ``source`` has no input gradient."""
        try:
            parts = [np.asarray(attack(source if source is not None else self.clf,
                                       self.x[index[i:i + self.batch_size]],
                                       self.y[index[i:i + self.batch_size]]))
                     for i in range(0, index.size, self.batch_size)]
        except TypeError as err:
            if "not differentiable" not in str(err):
                raise
            return None
        x_adv = np.concatenate(parts)
        return self.clf.predict_labels(x_adv, self.batch_size) == self.y[index]


def diagnose(evidence: Evidence, groups: dict, surrogate=None) -> list[Flag]:
    """Compute every indicator.

    Args:
        evidence: the evaluation's :class:`Evidence`.
        groups: threat-model label -> list of attack indices of that (bounded) threat model.
        surrogate: a model of the same task trained normally (same architecture, same data),
            or None. Its PGD examples are transferred to the evaluated model.

    Returns:
        The flags: global ones first, then per norm and per threat model.
    """
    flags = [_randomness_without_eot(evidence)]
    flags += _gradient_flags(evidence, groups)
    flags += _minimal_norm_flags(evidence)
    norms_done = set()
    for label, members in groups.items():
        attacks = [evidence.attacks[i] for i in members]
        norm = attacks[0].norm
        if norm not in norms_done:
            norms_done.add(norm)
            flags.append(_unbounded(evidence, groups, norm))
        flags.append(_black_box(evidence, label, members))
        flags.append(_transfer(evidence, label, members, surrogate))
        flags.append(_not_converged(evidence, label, members))
    return flags


# -- the indicators ----------------------------------------------------------------------------
def _randomness_without_eot(ev: Evidence) -> Flag:
    name = "randomness_without_eot"
    if not ev.clf.randomized:
        return _flag(name, False, None, "The model has no randomized layers.")
    layers = sorted({type(layer).__name__ for layer, _ in ev.clf.adaptive_layers})
    without = [a.label for a in ev.attacks
               if a.uses_gradients and getattr(a, "eot_samples", 1) <= 1]
    if without:
        return _flag(
            name, True, None,
            f"The model has randomized layers ({', '.join(layers)}) but {', '.join(without)} "
            "ran without Expectation over Transformation (eot_samples=1): their gradients "
            f"follow one random draw, so {NOT_EVIDENCE}. Use eot_samples >= 20 (the suite's "
            "'rand' version does).", randomized_layers=layers, attacks_without_eot=without)
    return _flag(name, False, None,
                 f"The model has randomized layers ({', '.join(layers)}); every gradient "
                 "attack averaged its gradients over random draws (EOT).",
                 randomized_layers=layers)


def _gradient_flags(ev: Evidence, groups: dict) -> list[Flag]:
    """Vanishing and unstable input gradients on correctly classified examples."""
    index = ev.sample(ev.clean_correct)
    if index.size == 0:
        message = "No correctly classified example to measure gradients on."
        return [_flag("vanishing_gradients", None, None, message),
                _flag("unstable_gradients", None, None, message)]
    x = tf.constant(ev.x[index], tf.float32)
    y = tf.constant(ev.y[index], tf.int32)
    ce_norms, attack_norms = _input_gradient_norms(ev.clf.logits, x, y)
    ce_zero = ~np.isfinite(ce_norms) | (ce_norms <= VANISHING_NORM)
    attack_zero = ~np.isfinite(attack_norms) | (attack_norms <= VANISHING_NORM)
    m = index.size
    evidence = dict(examples=m, cross_entropy_vanishing=float(ce_zero.mean()),
                    attack_direction_vanishing=float(attack_zero.mean()),
                    non_finite=float((~np.isfinite(attack_norms)).mean()),
                    median_gradient_norm=float(np.median(attack_norms[np.isfinite(
                        attack_norms)])) if np.isfinite(attack_norms).any() else float("nan"))
    if attack_zero.mean() >= VANISHING_FRACTION:
        vanishing = _flag(
            "vanishing_gradients", True, None,
            f"The input gradient the attacks follow is zero or not finite on "
            f"{100 * attack_zero.mean():.0f}% of {m} correctly classified examples: gradient "
            f"attacks cannot move them, so {NOT_EVIDENCE}. A shattered or non-differentiable "
            "layer without a straight-through (BPDA) gradient is the usual cause.", **evidence)
    elif ce_zero.mean() >= VANISHING_FRACTION:
        vanishing = _flag(
            "vanishing_gradients", True, None,
            f"The cross-entropy's input gradient is exactly zero in float32 on "
            f"{100 * ce_zero.mean():.0f}% of {m} correctly classified examples (saturated "
            "softmax, as after defensive distillation): attacks on the cross-entropy stall "
            "there. keras_secure's attacks follow the log-sum-exp margin, which does not "
            "vanish, but any figure measured with the plain cross-entropy (other tools, "
            f"hand-written PGD) is masked, and {NOT_EVIDENCE} until the other indicators "
            "agree.", **evidence)
    else:
        vanishing = _flag("vanishing_gradients", False, None,
                          f"Input gradients are non-zero and finite on "
                          f"{100 * (1 - attack_zero.mean()):.0f}% of {m} examples.", **evidence)
    if ev.clf.randomized:
        unstable = _flag("unstable_gradients", None, None,
                         "Not measured on a randomized model: successive gradients differ by "
                         "design (see randomness_without_eot).")
        return [vanishing, unstable]
    if not groups:
        return [vanishing, _flag("unstable_gradients", None, None,
                                 "No bounded threat model to follow a PGD path in.")]
    first = ev.attacks[next(iter(groups.values()))[0]]
    cosines, increased = _pgd_path(ev.clf.logits, x, y, first.eps, first.norm,
                                   first.value_range)
    not_increasing = float((~increased).mean())
    mean_cos = float(cosines[np.isfinite(cosines)].mean()) if np.isfinite(cosines).any() \
        else float("nan")
    evidence = dict(examples=m, steps=10, path_threat_model=_tm(first),
                    loss_not_increasing=not_increasing, mean_successive_cosine=mean_cos)
    if not_increasing >= NOT_INCREASING_FRACTION or not mean_cos >= MIN_MEAN_COSINE:
        why = (f"the attack loss did not increase along a 10-step PGD path on "
               f"{100 * not_increasing:.0f}% of {m} examples"
               if not_increasing >= NOT_INCREASING_FRACTION else
               f"successive input gradients along a 10-step PGD path are nearly orthogonal "
               f"(mean cosine {mean_cos:.2f})")
        unstable = _flag("unstable_gradients", True, None,
                         f"Gradient directions are unstable: {why}, so local gradient steps do "
                         f"not find the worst case and {NOT_EVIDENCE}.", **evidence)
    else:
        unstable = _flag("unstable_gradients", False, None,
                         f"The attack loss increased along the PGD path on "
                         f"{100 * (1 - not_increasing):.0f}% of {m} examples (mean cosine of "
                         f"successive gradients {mean_cos:.2f}).", **evidence)
    return [vanishing, unstable]


def _minimal_norm_flags(ev: Evidence) -> list[Flag]:
    flags = []
    for attack, broke, row in zip(ev.attacks, ev.broke, ev.labels):
        if attack.eps is not None:
            continue
        correct = int(ev.clean_correct.sum())
        rate = broke.sum() / correct if correct else float("nan")
        fired = bool(correct and rate < MINIMAL_NORM_SUCCESS)
        message = (
            f"{attack.label} found adversarial examples for {100 * rate:.1f}% of {correct} "
            "correctly classified inputs. An unbounded attack must reach about 100%: the "
            "examples it missed are an attack failure, not robustness; rerun it with more "
            "steps." if fired else
            f"{attack.label} found adversarial examples for {100 * rate:.1f}% of {correct} "
            "correctly classified inputs.")
        flags.append(_flag("unbounded_attack_fails", fired,
                           f"{'Linf' if attack.norm == 'linf' else 'L2'}, unbounded", message,
                           attack=row, success_rate=float(rate), examples=correct))
    return flags


def _unbounded(ev: Evidence, groups: dict, norm: str) -> Flag:
    """A PGD whose budget covers the whole valid range (any valid input is within it) must
    bring the accuracy near 0%. Without a value range no budget covers every input, so the
    check is not made (a large but finite budget can leave honest, exactly robust examples)."""
    value_range = next(ev.attacks[i].value_range for members in groups.values()
                       for i in members)
    label = "Linf" if norm == "linf" else "L2"
    if value_range is None:
        return _flag("unbounded_attack_fails", None, label,
                     "Not checked: without a value_range no budget reaches every input.")
    width = value_range[1] - value_range[0]
    big = width if norm == "linf" else width * math.sqrt(float(np.prod(ev.x.shape[1:])))
    eot = max([getattr(ev.attacks[i], "eot_samples", 1) for members in groups.values()
               for i in members] + [1])
    attack = PGD(big, steps=UNBOUNDED_STEPS, norm=norm, value_range=value_range, seed=ev.seed,
                 eot_samples=eot)
    index = ev.sample(ev.clean_correct)
    if index.size == 0:
        return _flag("unbounded_attack_fails", None, label,
                     "No correctly classified example to attack.")
    correct = ev.correct_after(attack, index)
    if correct is None:
        return _flag("unbounded_attack_fails", None, label, NO_GRADIENT)
    accuracy = float(correct.mean())
    fired = accuracy > UNBOUNDED_MAX_ACCURACY and int(round(accuracy * index.size)) >= MIN_COUNT
    message = (f"PGD-{UNBOUNDED_STEPS} with a budget of {big:g} ({label}) leaves "
               f"{100 * accuracy:.0f}% of {index.size} correctly classified examples correct. "
               f"That budget covers the whole valid range, so any input can be reached and "
               f"accuracy must approach 0%: "
               f"{NOT_EVIDENCE}."
               if fired else
               f"PGD-{UNBOUNDED_STEPS} with a budget of {big:g} ({label}) brings accuracy to "
               f"{100 * accuracy:.0f}% of {index.size} correctly classified examples.")
    return _flag("unbounded_attack_fails", fired, label, message, eps=big,
                 steps=UNBOUNDED_STEPS,
                 accuracy=accuracy, examples=int(index.size))


def _white_box_survivors(ev: Evidence, members) -> tuple[np.ndarray, list, list]:
    gradient = [i for i in members if ev.attacks[i].uses_gradients]
    free = [i for i in members if not ev.attacks[i].uses_gradients]
    eligible = ev.clean_correct.copy()
    for i in gradient:
        eligible &= ev.ran[i] & ~ev.broke[i]
    return eligible, gradient, free


def _black_box(ev: Evidence, label, members) -> Flag:
    name = "black_box_beats_white_box"
    survivors, gradient, free = _white_box_survivors(ev, members)
    if not gradient:
        return _flag(name, None, label, "No gradient attack in this threat model to compare.")
    white = ", ".join(ev.attacks[i].label for i in gradient)
    if free:
        ran_all = survivors & np.logical_and.reduce([ev.ran[i] for i in free])
        broken = ran_all & np.logical_or.reduce([ev.broke[i] for i in free])
        count, among = int(broken.sum()), int(ran_all.sum())
        black = ", ".join(ev.attacks[i].label for i in free)
    else:
        first = ev.attacks[members[0]]
        if first.norm != "linf" or ev.x.ndim != 4:
            return _flag(name, None, label,
                         "Not checked: keras_secure's gradient-free attack (Square) is L-inf "
                         "and image-only.")
        attack = Square(first.eps, queries=BLACK_BOX_QUERIES, p_init=0.3,
                        value_range=first.value_range,
                        seed=ev.seed)
        index = ev.sample(survivors)
        black = f"{attack.label} ({BLACK_BOX_QUERIES} queries, run by the diagnostics)"
        if index.size == 0:
            return _flag(name, False, label, "No example survived the white-box attacks.",
                         white_box=white)
        still = ev.correct_after(attack, index)
        count = int((~still).sum())
        among = int(index.size)
    fired = _enough(count, among)
    message = (f"{black} broke {count} of {among} examples that survived every gradient attack "
               f"({white}): {NOT_EVIDENCE}." if fired else
               f"{black} broke {count} of {among} examples that survived the gradient attacks.")
    return _flag(name, fired, label, message, black_box=black, white_box=white, broken=count,
                 examples=among)


def _transfer(ev: Evidence, label, members, surrogate) -> Flag:
    name = "transfer_beats_white_box"
    if surrogate is None:
        return _flag(name, None, label,
                     "Not checked: no surrogate model. Pass surrogate= (the same architecture "
                     "trained normally on the same data) to compare transfer with white-box.")
    survivors, gradient, _ = _white_box_survivors(ev, members)
    if not gradient:
        return _flag(name, None, label, "No white-box (gradient) attack in this threat model "
                                        "to compare.")
    first = ev.attacks[members[0]]
    index = ev.sample(survivors)
    attack = PGD(first.eps, steps=20, norm=first.norm, value_range=first.value_range,
                 seed=ev.seed)
    if index.size == 0:
        return _flag(name, False, label, "No example survived the white-box attacks.")
    still = ev.correct_after(attack, index, source=surrogate)
    if still is None:
        return _flag(name, None, label, "Not checked: the surrogate has no input gradient.")
    count, among = int((~still).sum()), int(index.size)
    fired = _enough(count, among)
    message = (f"PGD-20 examples made on the surrogate model broke {count} of {among} examples "
               f"that survived every white-box attack: {NOT_EVIDENCE}." if fired else
               f"PGD-20 examples transferred from the surrogate broke {count} of {among} "
               "examples that survived the white-box attacks.")
    return _flag(name, fired, label, message, broken=count, examples=among)


def _not_converged(ev: Evidence, label, members) -> Flag:
    name = "not_converged"
    survivors = ev.clean_correct.copy()
    for i in members:
        survivors &= ev.ran[i] & ~ev.broke[i]
    gradient = [i for i in members if ev.attacks[i].uses_gradients
                and ev.attacks[i].eps is not None]
    if not gradient:
        return _flag(name, None, label, "No gradient attack in this threat model.")
    strongest = max(gradient, key=lambda i: (ev.broke[i].sum(), i))
    base = ev.attacks[strongest]
    config = base.get_config()
    seed = (ev.seed or 0) + 1
    if "steps" in config and not base.minimal_norm:
        stronger = type(base).from_config({**config, "steps": 2 * config["steps"],
                                           "seed": seed})
        how = f"{base.label} with twice the steps from new random starts"
    else:
        stronger = APGD(base.eps, norm=base.norm, steps=50,
                        value_range=base.value_range, seed=seed,
                        eot_samples=getattr(base, "eot_samples", 1))
        how = (f"{stronger.label} with 50 steps (a budgeted attack, where {base.label} "
               f"{'looks for minimal perturbations' if base.minimal_norm else 'has no steps'})")
    index = ev.sample(survivors)
    if index.size == 0:
        return _flag(name, False, label, "No example survived the attacks.", stronger=how)
    still = ev.correct_after(stronger, index)
    if still is None:
        return _flag(name, None, label, NO_GRADIENT, stronger=how)
    count = int((~still).sum())
    among = int(index.size)
    fired = _enough(count, among)
    message = (f"{how} broke {count} of {among} examples that survived every attack: the "
               f"attacks had not converged, so {NOT_EVIDENCE}; run more steps and restarts."
               if fired else
               f"{how} broke {count} of {among} surviving examples.")
    return _flag(name, fired, label, message, stronger=how, broken=count, examples=among)


# -- gradient measurements ----------------------------------------------------------------------
def _tm(attack) -> str:
    return f"{'Linf' if attack.norm == 'linf' else 'L2'}, eps={attack.eps:g}"


def _input_gradient_norms(logits_fn, x, y):
    """Per-example L2 norms of the input gradients of the cross-entropy and of the direction
    the attacks follow (the log-sum-exp margin)."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        logits = logits_fn(x)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        surrogate = log_sum_exp_margin(logits, y)
    norms = []
    for value in (ce, surrogate):
        grad = tape.gradient(value, x)
        if grad is None:
            grad = tf.zeros_like(x)
        flat = tf.reshape(grad, [tf.shape(grad)[0], -1])
        norms.append(tf.norm(flat, axis=1).numpy())
    del tape
    return norms[0], norms[1]


def _pgd_path(logits_fn, x, y, eps, norm, value_range, steps: int = 10):
    """Follow ``steps`` PGD steps from ``x`` (no random start); return the mean cosine of
    successive input gradients per example and whether the attack loss ended above its start."""
    from keras_secure.attacks.base import project_and_clip, steepest_direction

    def grad_at(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = log_sum_exp_margin(logits_fn(z), y)
        g = tape.gradient(value, z)
        return value, (tf.zeros_like(z) if g is None else g)

    start, grad = grad_at(x)
    z = x
    cosines = []
    step = 2.5 * eps / steps
    for _ in range(steps):
        z = project_and_clip(z + step * steepest_direction(grad, norm), x, eps, norm,
                             value_range)
        value, new = grad_at(z)
        a = tf.reshape(grad, [tf.shape(grad)[0], -1])
        b = tf.reshape(new, [tf.shape(new)[0], -1])
        denominator = tf.norm(a, axis=1) * tf.norm(b, axis=1)
        cos = tf.where(denominator > 0, tf.reduce_sum(a * b, axis=1)
                       / tf.maximum(denominator, 1e-30), float("nan"))
        cosines.append(cos.numpy())
        grad = new
    stacked = np.stack(cosines)
    finite = np.isfinite(stacked)
    counts = finite.sum(axis=0)
    per_example = np.where(counts > 0, np.where(finite, stacked, 0.0).sum(axis=0)
                           / np.maximum(counts, 1), np.nan)
    increased = (value.numpy() > start.numpy())
    return per_example, increased
