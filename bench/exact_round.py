"""Python's ``round(x, 6)`` by float arithmetic, bit for bit (numpy arrays and scalars).

Why it is exact. ``round(x, 6)`` is the double nearest ``k * 10**-6``, where ``k`` is the
exact value ``P = x * 10**6`` rounded half-to-even (CPython rounds the exact binary value to
6 decimals, then reads the decimal back correctly rounded). For ``|k| < 2**53``, ``k / 1e6``
in IEEE arithmetic is that same double (both operands exact, the division correctly
rounded). Let ``p = x * 1e6`` as computed, ``|p| < 2**52``, ``u`` its ulp (``u <= 0.5``, a
power of two): ``p`` and every half-integer are multiples of ``u``, so a ``p`` that is not
itself a half-integer is at least ``u`` from each, while ``|P - p| <= u / 2``; ``P`` lies in
the same interval between half-integers and ``rint(p)`` is ``k``. Only when ``p`` is exactly
a half-integer does the multiplication's error ``e = P - p`` decide: up if ``e > 0``, down
if ``e < 0``, half-to-even (``rint``) if ``P`` is the tie itself. ``e`` is computed exactly
(Dekker's product: ``x`` split into two 26-bit halves, ``1e6`` has 14 significant bits, so
each partial product is exact). Non-finite values and ``|p| >= 2**52`` go to Python's
``round``. ``tests/test_exact_round.py`` checks millions of random and adversarial values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FAST_LIMIT", "round6"]

#: ``|x * 1e6|`` below which the float rule applies (above: Python's ``round``).
FAST_LIMIT = 2.0 ** 52
_SPLIT = 2.0 ** 27 + 1.0


def _product_error(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``x * 10**6 - p`` exactly, for ``p = x * 1e6`` as computed (Dekker)."""
    c = x * _SPLIT
    hi = c - (c - x)
    lo = x - hi
    return (hi * 1e6 - p) + lo * 1e6


def round6(x: Any) -> np.ndarray:
    """``[round(v, 6) for v in x]`` as a float64 array, bit-identical, vectorised."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        p = x * 1e6
        k = np.rint(p)
        fast = np.abs(p) < FAST_LIMIT
        half = np.flatnonzero(fast & (np.abs(p - k) == 0.5))
        if len(half):
            e = _product_error(x[half], p[half])
            near = np.where(e == 0, k[half], p[half] + np.copysign(0.5, e))
            k[half] = np.copysign(near, p[half])  # -0.5 rounded up is -0.0, as in Python
        out = k / 1e6
    slow = ~fast
    if slow.any():
        out[slow] = [round(v, 6) for v in x[slow].tolist()]
    return out
