"""The fast ``iso`` gives the datetime formatting's very string (ids and messages depend on it)."""

from __future__ import annotations

import random

from engage.rules.decide import _ISO_FAST_BELOW, _iso_datetime, iso


def test_iso_matches_datetime_formatting() -> None:
    rnd = random.Random(7)
    edges = [0, 1, 999, 1000, 59_999, 60_000, 3_599_999, 3_600_000, 86_399_999, 86_400_000,
             951_782_400_000 - 1, 951_782_400_000,          # 2000-02-29, a leap day
             4_107_542_400_000, _ISO_FAST_BELOW - 1, _ISO_FAST_BELOW, _ISO_FAST_BELOW + 1]
    values = edges + [rnd.randrange(0, _ISO_FAST_BELOW) for _ in range(20_000)] \
        + [rnd.randrange(1_500_000_000_000, 2_000_000_000_000) for _ in range(20_000)]
    for ms in values:
        assert iso(ms) == _iso_datetime(ms), ms


def test_iso_outside_the_fast_range_is_the_datetime_one() -> None:
    assert iso(1_700_000_000_123.0) == _iso_datetime(1_700_000_000_123.0)   # type: ignore[arg-type]
    assert iso(-1) == _iso_datetime(-1)
    assert iso(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
