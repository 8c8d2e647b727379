"""The Gaussian generator of randomized smoothing (Box-Muller on Philox counters): the draws
follow N(0, 1) and are independent - within a draw, across the two members of a Box-Muller
pair, and between successive draws - which Cohen et al.'s certificate relies on."""

import keras
import numpy as np
import pytest
from scipy import stats

import keras_secure as ks
from keras_secure.privacy.noise import standard_normal

N = 400_000


@pytest.fixture(scope="module")
def draws():
    gen = keras.random.SeedGenerator(0)
    return [standard_normal([N], gen).numpy().astype(np.float64) for _ in range(2)]


def test_draws_follow_the_standard_normal(draws):
    z = draws[0]
    se = 1 / np.sqrt(N)
    assert abs(z.mean()) < 4 * se
    assert abs(z.var() - 1) < 4 * np.sqrt(2) * se
    assert abs(stats.kurtosis(z)) < 4 * np.sqrt(24) * se
    # tail masses at 1, 2, 3 and 4 standard deviations, each within 4 binomial standard errors
    for t in (1.0, 2.0, 3.0, 4.0):
        p = 2 * stats.norm.sf(t)
        assert abs(np.mean(np.abs(z) > t) - p) < 4 * np.sqrt(p * (1 - p) / N) + 1 / N, t
    # Kolmogorov-Smirnov statistic against the exact CDF: its 0.999 quantile is 1.95 / sqrt(N)
    assert stats.kstest(z, "norm").statistic < 1.95 / np.sqrt(N)
    # the radius cap of 24-bit uniforms: sqrt(48 log 2) = 5.77 (documented)
    assert np.abs(z).max() <= np.sqrt(48 * np.log(2)) + 1e-5


def test_draws_are_independent(draws):
    z, later = draws
    half = N // 2
    cos_part, sin_part = z[:half], z[half:]  # the two members of each Box-Muller pair
    limit = 4 / np.sqrt(half)
    # a shared radius would correlate the squares; a shared angle, the values
    assert abs(np.corrcoef(cos_part, sin_part)[0, 1]) < limit
    assert abs(np.corrcoef(cos_part ** 2, sin_part ** 2)[0, 1]) < limit
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 4 / np.sqrt(N)  # neighbours
    assert abs(np.corrcoef(z, later)[0, 1]) < 4 / np.sqrt(N)  # successive calls
    assert abs(np.corrcoef(z ** 2, later ** 2)[0, 1]) < 4 / np.sqrt(N)
    # a pair (cos, sin) is isotropic: its angle is uniform (chi-square over 16 sectors)
    sectors = np.floor((np.arctan2(sin_part, cos_part) + np.pi) / (2 * np.pi) * 16)
    counts = np.bincount(sectors.astype(int).clip(0, 15), minlength=16)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_shapes_seeds_and_reproducibility():
    a = standard_normal([3, 5, 7], keras.random.SeedGenerator(1)).numpy()  # odd size
    assert a.shape == (3, 5, 7) and a.dtype == np.float32 and np.isfinite(a).all()
    gen = keras.random.SeedGenerator(1)
    np.testing.assert_array_equal(standard_normal([3, 5, 7], gen).numpy(), a)
    assert not np.array_equal(standard_normal([3, 5, 7], gen).numpy(), a)  # a fresh seed


def test_smoothing_noise_has_the_declared_scale_at_inference():
    # identity base on one pixel: the soft vote counts of sign(x + e) ... via sample_counts,
    # the vote probability of a threshold at 0 for x = 0.3 is Phi(0.3 / sigma)
    base = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2)])
    base.layers[-1].set_weights([np.array([[-1.0, 1.0]], np.float32), np.zeros(2, np.float32)])
    sigma, n = 0.5, 20_000
    smoothed = ks.layers.RandomizedSmoothing(base, sigma=sigma, seed=4)
    counts = smoothed.sample_counts(np.array([[0.3], [0.0], [-0.6]], np.float32), n,
                                    batch_size=3000)  # chunks of 3000: 7 fresh draws
    for row, x in zip(counts, (0.3, 0.0, -0.6)):
        p = stats.norm.cdf(x / sigma)
        assert abs(row[1] / n - p) < 4 * np.sqrt(p * (1 - p) / n), (x, row)
