"""Rates, intervals and verdicts for conversion reports; the standard library only.

* a **proportion** (conversion rate, redemption rate) gets the Wilson score
  interval: unlike the textbook Wald interval p ± z·√(p(1−p)/n), it stays
  inside [0, 1] and keeps close to its nominal 95% coverage at the small
  rates and counts marketing sees (a 2% conversion rate over 150 messages);
* a **difference of proportions** (uplift of a variant over control, B over
  A) gets Newcombe's hybrid score interval (method 10 of Newcombe 1998),
  built from the two Wilson intervals, for the same reason;
* **significance**: the verdict reads the interval (``better`` when it lies
  above 0, ``worse`` below, else ``unclear``), so what is printed and what is
  concluded agree; the pooled two-proportion z-test's two-sided p-value is
  given beside it. The two can disagree very near the 5% edge; the interval
  wins because it is what the reader sees.

References: R. G. Newcombe, "Two-sided confidence intervals for the single
proportion: comparison of seven methods", Statistics in Medicine 17 (1998)
857-872; "Interval estimation for the difference between independent
proportions: comparison of eleven methods", ibid. 873-890. Their worked
examples are the unit tests' reference values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The two-sided 95% normal quantile (Φ⁻¹(0.975)).
Z95 = 1.959963984540054


def _check_counts(k: int, n: int, where: str) -> None:
    for name, v in (("successes", k), ("trials", n)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{where}: {name} must be a non-negative int, got {v!r}")
    if k > n:
        raise ValueError(f"{where}: successes ({k}) exceed trials ({n})")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials; (0, 1) when n is 0.

    >>> lo, hi = wilson(81, 263)          # Newcombe (1998a), example (a)
    >>> round(lo, 4), round(hi, 4)
    (0.2553, 0.3662)
    """
    _check_counts(k, n, "wilson")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At k = 0 or k = n the exact bound is 0 or 1; rounding must not leave it a hair off.
    return (0.0 if k == 0 else max(0.0, centre - half),
            1.0 if k == n else min(1.0, centre + half))


def newcombe_diff(k1: int, n1: int, k2: int, n2: int,
                  z: float = Z95) -> tuple[float, float, float]:
    """p1 − p2 with Newcombe's hybrid score interval (method 10): ``(diff, lo, hi)``.

    >>> d, lo, hi = newcombe_diff(56, 70, 48, 80)   # Newcombe (1998b), example (a)
    >>> round(d, 4), round(lo, 4), round(hi, 4)
    (0.2, 0.0524, 0.3339)
    """
    _check_counts(k1, n1, "newcombe_diff (first group)")
    _check_counts(k2, n2, "newcombe_diff (second group)")
    if n1 == 0 or n2 == 0:
        raise ValueError("newcombe_diff: both groups need at least one trial "
                         f"(got n1={n1}, n2={n2})")
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, lo, hi


def two_proportion_p_value(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (1.0 when nothing varies).

    >>> round(two_proportion_p_value(56, 70, 48, 80), 4)   # z = 2.650
    0.008
    """
    _check_counts(k1, n1, "two_proportion_p_value (first group)")
    _check_counts(k2, n2, "two_proportion_p_value (second group)")
    if n1 == 0 or n2 == 0:
        raise ValueError("two_proportion_p_value: both groups need at least one trial")
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` with its Wilson 95% interval; ``rate`` is None when ``n`` is 0."""

    k: int
    n: int
    rate: float | None
    lo: float | None
    hi: float | None

    @staticmethod
    def of(k: int, n: int) -> "Rate":
        """The rate of ``k`` in ``n``.

        >>> Rate.of(0, 0).rate is None, Rate.of(1, 4).rate
        (True, 0.25)
        """
        if n == 0:
            _check_counts(k, n, "Rate.of")
            return Rate(k, n, None, None, None)
        lo, hi = wilson(k, n)
        return Rate(k, n, k / n, lo, hi)


@dataclass(frozen=True)
class Uplift:
    """Rate of a group minus a baseline's, with its 95% interval, p-value and verdict."""

    diff: float
    lo: float
    hi: float
    p_value: float
    verdict: str          # "better", "worse" or "unclear"

    @staticmethod
    def of(k: int, n: int, base_k: int, base_n: int) -> "Uplift | None":
        """``k/n − base_k/base_n``; None when either group is empty.

        >>> Uplift.of(56, 70, 48, 80).verdict, Uplift.of(5, 56, 0, 29).verdict
        ('better', 'unclear')
        """
        if n == 0 or base_n == 0:
            return None
        d, lo, hi = newcombe_diff(k, n, base_k, base_n)
        verdict = "better" if lo > 0 else "worse" if hi < 0 else "unclear"
        return Uplift(d, lo, hi, two_proportion_p_value(k, n, base_k, base_n), verdict)


def ratio(num: float, den: float) -> float | None:
    """``num / den``, or None when ``den`` is 0 (a rate of nothing is not 0).

    >>> ratio(3, 4), ratio(1, 0)
    (0.75, None)
    """
    return num / den if den else None
