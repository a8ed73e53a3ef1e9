"""bench/exact_round.py: round6 is Python's round(x, 6), bit for bit, over millions of
random and adversarial values (ties, near ties, huge, negative, non-finite), and the
exact-half products, where the multiplication's error decides, are really exercised."""

from __future__ import annotations

import numpy as np

from bench.exact_round import round6


def _python(x: np.ndarray) -> np.ndarray:
    return np.array([round(v, 6) for v in x.tolist()], dtype=np.float64)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(((a.view(np.int64) == b.view(np.int64)) | both_nan).all())


def _adversarial(rng: np.random.Generator) -> np.ndarray:
    k = rng.integers(-10**12, 10**12, 200_000).astype(np.float64)
    near = (k + 0.5) / 1e6  # the double nearest a tie: x * 1e6 lands on or next to .5
    exact = rng.integers(-10**6, 10**6, 100_000) * 2 + 1
    exact_ties = exact * (15625 / 128)  # x * 10**6 is exactly an odd multiple of 1/2
    small = (rng.integers(-10**6, 10**6, 100_000) + 0.5) / 1e6
    cases = [near, exact_ties, small]
    for c in list(cases):
        cases += [np.nextafter(c, np.inf), np.nextafter(c, -np.inf),
                  np.nextafter(np.nextafter(c, np.inf), np.inf)]
    huge = np.concatenate([2.0 ** 52 / 1e6 * rng.uniform(0.5, 2, 50_000),
                           10.0 ** rng.uniform(9, 300, 50_000),
                           -(10.0 ** rng.uniform(9, 300, 50_000))])
    tiny = np.concatenate([10.0 ** rng.uniform(-320, -6, 50_000),
                           -(10.0 ** rng.uniform(-320, -6, 50_000))])
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-7, -5e-7, 4.9999999e-7,
                        0.5, 2.5e-6, 1.5e-6, 2.675, -2.675, 1e308, -1e308, 5e-324])
    return np.concatenate(cases + [huge, tiny, special])


def test_round6_is_pythons_round_on_random_values() -> None:
    rng = np.random.default_rng(6)
    bits = rng.integers(0, 2 ** 63, 1_000_000, dtype=np.uint64) | (
        rng.integers(0, 2, 1_000_000, dtype=np.uint64) << np.uint64(63))
    any_double = bits.view(np.float64)  # every exponent, NaNs and infinities included
    prev = rng.integers(0, 10**9, 1_000_000) / 1e6  # an earlier step's result
    demo_like = 0.9 * prev + 0.1 * rng.integers(0, 1000, 1_000_000)  # the Scorer's step
    wide = rng.uniform(-1e7, 1e7, 1_000_000)
    for x in (any_double, demo_like, wide):
        assert _same_bits(round6(x), _python(x))
    # the Scorer's kind of values: ~6 % of them have an exact-half product x * 1e6
    assert np.count_nonzero(_exact_half(demo_like)) > 10_000


def _exact_half(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        p = x * 1e6
        return np.abs(p - np.rint(p)) == 0.5


def test_round6_is_pythons_round_on_ties_and_edges() -> None:
    x = _adversarial(np.random.default_rng(7))
    assert len(x) > 1_000_000
    assert _same_bits(round6(x), _python(x))


def test_the_products_error_is_needed() -> None:
    """rint(x * 1e6) / 1e6 alone differs from Python where the product is an exact half
    (the error of the multiplication decides), and only there."""
    x = _adversarial(np.random.default_rng(8))
    with np.errstate(invalid="ignore", over="ignore"):
        unguarded = np.rint(x * 1e6) / 1e6
    finite = np.isfinite(x) & (np.abs(x) < 1e9)
    half = _exact_half(x) & finite
    want = _python(x)
    assert not _same_bits(unguarded[half], want[half])
    assert _same_bits(unguarded[finite & ~half], want[finite & ~half])
    assert np.count_nonzero(half) > 100_000
