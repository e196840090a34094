"""A synthetic population whose churn behaviour is known: some customers fade, some stay.

Each customer buys as a Poisson process (purchases only: a transaction log).
*Stayers* keep their rate; *faders* start at the same rate but it decays
exponentially from a personal moment on, so their gaps grow until they stop.
A model that reads the customer's recent history can tell the two apart
before the recency baseline can (gaps growing against the customer's own
rhythm), and the tests hold it to that.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator

DAY_MS = 86_400_000
#: 2025-01-01T00:00:00Z: where the synthetic history starts.
START_MS = 1_735_689_600_000


@dataclass(frozen=True)
class Purchase:
    """One row of the transaction log."""

    customer: str
    ts: int
    amount: float


def population(customers: int, days: int, seed: int = 11, fade_share: float = 0.5,
               mean_gap_days: float = 20.0) -> list[Purchase]:
    """Purchases of ``customers`` over ``days``, sorted by time.

    >>> rows = population(50, 120, seed=1)
    >>> rows == sorted(rows, key=lambda r: (r.ts, r.customer)) and len(rows) > 50
    True
    """
    rng = random.Random(seed)
    rows: list[Purchase] = []
    for i in range(customers):
        cid = f"c-{i}"
        fades = rng.random() < fade_share
        joined = rng.uniform(0, days * 0.6)
        fade_from = joined + rng.uniform(10, days * 0.5)
        half_life = rng.uniform(8, 30)   # days for the rate to halve, once fading
        gap = mean_gap_days * rng.uniform(0.5, 1.5)
        basket = rng.uniform(40, 400)
        t = joined
        while t < days:
            rate = 1.0 / gap
            if fades and t > fade_from:
                rate *= 0.5 ** ((t - fade_from) / half_life)
            if rate < 1e-4:
                break
            # Thinning would be exact; stepping by the current rate is close
            # enough for a slowly changing rate, and deterministic.
            t += rng.expovariate(rate)
            if t >= days:
                break
            amount = round(basket * math.exp(rng.gauss(0, 0.4)), 2)
            rows.append(Purchase(cid, START_MS + int(t * DAY_MS), amount))
    rows.sort(key=lambda r: (r.ts, r.customer))
    return rows


def write_csv(rows: list[Purchase], path: str) -> None:
    """The rows as the ``customer_id,date,amount`` log ``engage eval-churn`` reads."""
    import datetime as dt  # noqa: PLC0415

    with open(path, "w", encoding="utf-8") as f:
        f.write("customer_id,date,amount\n")
        for r in rows:
            day = dt.datetime.fromtimestamp(r.ts / 1000, tz=dt.timezone.utc)
            f.write(f"{r.customer},{day.isoformat(timespec='seconds').replace('+00:00', 'Z')},"
                    f"{r.amount}\n")


def as_events(rows: list[Purchase]) -> Iterator[dict]:
    """The purchases as contract events (``order_paid``, keyed by customer)."""
    for n, r in enumerate(rows):
        yield {"event_id": f"p-{n}", "type": "order_paid", "ts": r.ts, "user_id": r.customer,
               "anonymous_id": None, "channel": "web",
               "properties": {"order_id": f"o-{n}", "amount": r.amount}}
