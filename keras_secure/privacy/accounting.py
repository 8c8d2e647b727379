"""Privacy accounting of DP-SGD with Google's ``dp_accounting`` (RDP and PLD accountants).

Two sampling schemes are accounted, and only what can be justified is claimed:

- ``"poisson"``: every example joins each batch independently with probability
  ``q = batch_size / num_examples`` (use :func:`keras_secure.privacy.poisson_batches`). Each
  step is a Poisson-subsampled Gaussian mechanism; ``steps`` of them are composed (Abadi et al.
  2016; Mironov et al. 2019) under add/remove-one adjacency.
- ``"shuffle"``: ordinary fixed-size batches from a shuffled dataset. Subsampling amplification
  does not follow for them, so none is claimed: an example occurs in exactly one batch per
  epoch, so each epoch is (by parallel composition) one Gaussian mechanism with sensitivity
  ``C`` under the same add/remove-one adjacency, and ``ceil(epochs)`` of them are composed. This
  is TensorFlow Privacy's conservative "each example occurring once per epoch" figure (for any
  data order); it is much larger than the Poisson figure.
"""

from __future__ import annotations

import math

from dp_accounting import dp_event, mechanism_calibration
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from keras_secure.validation import check_choice, check_number

SAMPLINGS = ("poisson", "shuffle")
ACCOUNTANTS = ("rdp", "pld")


def make_accountant(accountant: str = "rdp"):
    """A fresh ``dp_accounting`` accountant: ``"rdp"`` (Renyi DP) or ``"pld"`` (privacy loss
    distributions, tighter).

    Raises:
        ValueError: for another name.

    Example:
        >>> accountant = make_accountant("pld")
        >>> accountant.compose(dp_sgd_event(1.1, 60000, 256, 14063))
        >>> accountant.get_epsilon(1e-5)
    """
    check_choice("accountant", accountant, ACCOUNTANTS)
    if accountant == "rdp":
        return rdp_privacy_accountant.RdpAccountant()
    return pld_privacy_accountant.PLDAccountant()


def dp_sgd_event(noise_multiplier: float, num_examples: int, batch_size: int, steps: int,
                 sampling: str = "poisson") -> dp_event.DpEvent:
    """The ``DpEvent`` of ``steps`` DP-SGD steps (see the module docstring for the sampling
    schemes).

    Args:
        noise_multiplier: noise std divided by the clipping norm, >= 0.
        num_examples: training-set size N >= 1.
        batch_size: (expected) batch size, 1..N.
        steps: number of steps >= 0.
        sampling: ``"poisson"`` or ``"shuffle"``. Defaults to ``"poisson"``.

    Returns:
        The event to compose into an accountant.

    Raises:
        ValueError / TypeError: for arguments out of range.

    Example:
        >>> event = dp_sgd_event(1.1, 60000, 256, 14062)
    """
    noise_multiplier = check_number("noise_multiplier", noise_multiplier, low=0.0)
    num_examples = check_number("num_examples", num_examples, low=1, integer=True)
    batch_size = check_number("batch_size", batch_size, low=1, high=num_examples, integer=True)
    steps = check_number("steps", steps, low=0, integer=True)
    check_choice("sampling", sampling, SAMPLINGS)
    if noise_multiplier == 0:
        return dp_event.NonPrivateDpEvent() if steps else dp_event.NoOpDpEvent()
    if sampling == "poisson":
        q = batch_size / num_examples
        return dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(noise_multiplier)), steps)
    steps_per_epoch = math.ceil(num_examples / batch_size)
    epochs = math.ceil(steps / steps_per_epoch)
    return dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(noise_multiplier), epochs)


def compute_epsilon(noise_multiplier: float, num_examples: int, batch_size: int, *,
                    delta: float, epochs: float | None = None, steps: int | None = None,
                    sampling: str = "poisson", accountant: str = "rdp") -> float:
    """Epsilon of DP-SGD at ``delta`` after ``epochs`` (or ``steps``) of training.

    Args:
        noise_multiplier: noise std / clipping norm, >= 0 (0: not private, epsilon = inf).
        num_examples: training-set size N.
        batch_size: (expected) batch size.
        delta: in (0, 1).
        epochs: epochs of ``N / batch_size`` steps each (give this or ``steps``).
        steps: number of steps.
        sampling: ``"poisson"`` or ``"shuffle"``. Defaults to ``"poisson"``.
        accountant: ``"rdp"`` or ``"pld"``. Defaults to ``"rdp"``.

    Returns:
        Epsilon (``inf`` without noise).

    Raises:
        ValueError / TypeError: for arguments out of range or neither/both of ``epochs`` and
            ``steps``.

    Example:
        >>> compute_epsilon(1.1, 60000, 256, epochs=60, delta=1e-5)   # TF Privacy's tutorial
        2.5965...

    References:
        Abadi et al. (2016), "Deep Learning with Differential Privacy", CCS; Mironov, Talwar &
        Zhang (2019), "Renyi Differential Privacy of the Sampled Gaussian Mechanism".
    """
    delta = check_number("delta", delta, low=0.0, high=1.0, low_inclusive=False,
                         high_inclusive=False)
    steps = _steps(num_examples, batch_size, epochs, steps)
    acc = make_accountant(accountant)
    acc.compose(dp_sgd_event(noise_multiplier, num_examples, batch_size, steps, sampling))
    return float(acc.get_epsilon(delta))


def noise_multiplier_for(target_epsilon: float, num_examples: int, batch_size: int, *,
                         delta: float, epochs: float | None = None, steps: int | None = None,
                         sampling: str = "poisson", accountant: str = "rdp") -> float:
    """The smallest noise multiplier that keeps DP-SGD within ``(target_epsilon, delta)``
    (``dp_accounting.mechanism_calibration``, tolerance 1e-4).

    With ``accountant="pld"`` the search is bounded so that it runs in ordinary memory: a
    privacy loss distribution grows without bound as the noise multiplier goes to 0 (an
    unbounded search from sigma = 0.001 tried to allocate 38 GiB for 50 steps at q = 0.1). The
    RDP calibration (cheap at any sigma) gives a first guess; the PLD bracket is then found by
    steps of a factor 1.25 around it, so no PLD is built for a sigma below 0.8 times the answer.
    The returned sigma is calibrated with the PLD accountant itself, so
    ``compute_epsilon(sigma, ..., accountant="pld") <= target_epsilon``.

    Args:
        target_epsilon: > 0.
        num_examples, batch_size, delta, epochs, steps, sampling, accountant: as in
            :func:`compute_epsilon`.

    Returns:
        The noise multiplier.

    Raises:
        ValueError / TypeError: for arguments out of range.

    Example:
        >>> noise_multiplier_for(3.0, 1437, 64, epochs=30, delta=1e-5)
    """
    target_epsilon = check_number("target_epsilon", target_epsilon, low=0.0,
                                  low_inclusive=False)
    delta = check_number("delta", delta, low=0.0, high=1.0, low_inclusive=False,
                         high_inclusive=False)
    steps = _steps(num_examples, batch_size, epochs, steps)
    check_choice("accountant", accountant, ACCOUNTANTS)

    def event(sigma):
        return dp_sgd_event(sigma, num_examples, batch_size, steps, sampling)

    def calibrate(name, bracket):
        return float(mechanism_calibration.calibrate_dp_mechanism(
            lambda: make_accountant(name), event, target_epsilon, delta,
            bracket_interval=bracket, tol=1e-4))

    sigma = calibrate("rdp", mechanism_calibration.LowerEndpointAndGuess(1e-3, 1.0))
    if accountant == "rdp" or steps == 0:
        return sigma

    def pld_epsilon(s):
        acc = make_accountant("pld")
        acc.compose(event(s))
        return acc.get_epsilon(delta)

    # Bracket [low, high] with pld_epsilon(low) > target >= pld_epsilon(high), approached
    # from large sigma (small PLDs) in steps of 1.25: PLD is usually below RDP, so the RDP
    # answer is an upper end; otherwise move up from it.
    factor, high = 1.25, sigma
    while pld_epsilon(high) > target_epsilon:
        high *= factor
    low = high / factor
    while pld_epsilon(low) <= target_epsilon:
        high, low = low, low / factor
    return calibrate("pld", mechanism_calibration.ExplicitBracketInterval(low, high))


def max_steps_within(target_epsilon: float, noise_multiplier: float, num_examples: int,
                     batch_size: int, *, delta: float, sampling: str = "poisson",
                     accountant: str = "rdp", limit: int = 10_000_000) -> int:
    """The largest number of DP-SGD steps whose epsilon stays <= ``target_epsilon``.

    Args:
        target_epsilon: > 0.
        noise_multiplier: > 0.
        num_examples, batch_size, delta, sampling, accountant: as in :func:`compute_epsilon`.
        limit: upper end of the search. Defaults to 10,000,000.

    Returns:
        The number of steps (0 if even one step exceeds the budget).

    Example:
        >>> max_steps_within(3.0, 1.1, 1437, 64, delta=1e-5)
    """
    check_number("target_epsilon", target_epsilon, low=0.0, low_inclusive=False)
    check_number("noise_multiplier", noise_multiplier, low=0.0, low_inclusive=False)

    def eps(steps):
        return compute_epsilon(noise_multiplier, num_examples, batch_size, steps=steps,
                               delta=delta, sampling=sampling, accountant=accountant)

    if eps(1) > target_epsilon:
        return 0
    low, high = 1, 2
    while high < limit and eps(high) <= target_epsilon:
        low, high = high, high * 2
    if high >= limit and eps(limit) <= target_epsilon:
        return limit
    while high - low > 1:  # invariant: eps(low) <= target < eps(high)
        mid = (low + high) // 2
        if eps(mid) <= target_epsilon:
            low = mid
        else:
            high = mid
    return low


def _steps(num_examples, batch_size, epochs, steps) -> int:
    if (epochs is None) == (steps is None):
        raise ValueError("Give exactly one of `epochs` and `steps`. "
                         f"Received: epochs={epochs!r}, steps={steps!r}")
    if steps is not None:
        return check_number("steps", steps, low=0, integer=True)
    epochs = check_number("epochs", epochs, low=0.0)
    num_examples = check_number("num_examples", num_examples, low=1, integer=True)
    batch_size = check_number("batch_size", batch_size, low=1, high=num_examples, integer=True)
    return int(math.ceil(epochs * num_examples / batch_size))
