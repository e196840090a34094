"""Conversion statistics against published reference values (Newcombe 1998) and scipy."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engage.attribution.stats import (Rate, Uplift, newcombe_diff, two_proportion_p_value,
                                      wilson)

# R. G. Newcombe, Statistics in Medicine 17 (1998) 857-872, Table II, method 3
# (score interval without continuity correction): the worked examples.
WILSON_REFERENCE = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
    ((29, 29), (0.8830, 1.0)),
]

# R. G. Newcombe, Statistics in Medicine 17 (1998) 873-890, Table II, method 10
# (hybrid score interval without continuity correction): the examples (a)-(h).
NEWCOMBE_REFERENCE = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0)),
    ((10, 10, 0, 10), (0.6075, 1.0)),
]


@pytest.mark.parametrize("counts, expected", WILSON_REFERENCE)
def test_wilson_matches_newcombe_1998a(counts, expected) -> None:
    assert tuple(round(x, 4) for x in wilson(*counts)) == expected


@pytest.mark.parametrize("counts, expected", NEWCOMBE_REFERENCE)
def test_hybrid_score_difference_matches_newcombe_1998b(counts, expected) -> None:
    _, lo, hi = newcombe_diff(*counts)
    assert (round(lo, 4), round(hi, 4)) == expected


def test_wilson_by_hand() -> None:
    # 10 of 100, z = 1.96: centre (0.1 + 1.9208/100) / 1.038416, half-width
    # 1.96 * sqrt(0.0009 + 0.00009604) / 1.038416 -> 0.0552 .. 0.1744
    lo, hi = wilson(10, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.0552, 0.1744)


def test_z_test_by_hand_and_against_scipy() -> None:
    # 56/70 vs 48/80: pooled 104/150, se = sqrt(p(1-p)(1/70+1/80)) = 0.075467, z = 0.2 / se = 2.6502
    p = two_proportion_p_value(56, 70, 48, 80)
    assert math.isclose(p, math.erfc(2.6502 / math.sqrt(2)), rel_tol=1e-3)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert math.isclose(p, 2 * scipy_stats.norm.sf(2.6501720), rel_tol=1e-4)
    assert two_proportion_p_value(0, 10, 0, 10) == 1.0


def test_uplift_verdicts_follow_the_interval() -> None:
    assert Uplift.of(56, 70, 48, 80).verdict == "better"
    assert Uplift.of(48, 80, 56, 70).verdict == "worse"
    assert Uplift.of(5, 56, 0, 29).verdict == "unclear"
    assert Uplift.of(1, 0 + 1, 0, 0) is None


@pytest.mark.parametrize("call, message", [
    (lambda: wilson(5, 4), "exceed"),
    (lambda: wilson(-1, 4), "non-negative"),
    (lambda: newcombe_diff(0, 0, 1, 2), "at least one trial"),
    (lambda: Rate.of(1, 0), "exceed"),
])
def test_bad_counts_are_refused_with_a_reason(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
       st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_intervals_contain_their_estimate_and_stay_in_range(a, b) -> None:
    lo, hi = wilson(*a)
    assert 0 <= lo <= a[0] / a[1] <= hi <= 1
    d, dlo, dhi = newcombe_diff(*a, *b)
    assert -1 <= dlo <= d <= dhi <= 1
