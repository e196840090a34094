"""The rules of contact that need no shared ledger: consent, channel, local time.

Pure functions of a customer's state and the policy. Caps and conflict
groups need every decision already taken for the customer and live in the
contact ledger (:mod:`engage.state.contact`, and its Redis twin).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from engage.rules.model import Cap, QuietHours

#: Channels tried, in order, after the customer's preferred one.
FALLBACK_CHANNELS = ("push", "email", "sms", "wechat")
DAY_MS = 86_400_000


def consent_allows(consent: dict[str, list[Any]], channel: str) -> bool:
    """Whether ``channel`` may be used, given ``{channel: [granted, ts]}``.

    Consent not recorded counts as not withdrawn (the storefront collected it
    at sign-up); an explicit ``granted: false``, for the channel or for
    ``all``, is never overridden, except by a later grant of that channel.

    >>> consent_allows({"all": [False, 5], "sms": [True, 9]}, "sms")
    True
    >>> consent_allows({"all": [False, 5], "sms": [True, 2]}, "sms")
    False
    """
    if channel == "webhook":
        return True  # a call to the retailer's own system, not a message to the person
    specific = consent.get(channel)
    if specific is not None and specific[0] is False:
        return False
    everything = consent.get("all")
    if everything is not None and everything[0] is False:
        return specific is not None and specific[0] is True and specific[1] > everything[1]
    return True


def choose_channel(wanted: str, consent: dict[str, list[Any]], preferred: str | None) -> str | None:
    """The channel to use: ``wanted`` if consented; for ``preferred``, the customer's
    preferred channel if consented, else the first consented fallback."""
    if wanted != "preferred":
        return wanted if consent_allows(consent, wanted) else None
    for channel in ((preferred,) if preferred else ()) + FALLBACK_CHANNELS:
        if consent_allows(consent, channel):
            return channel
    return None


@lru_cache(maxsize=512)
def zone(name: str | None, default: str) -> ZoneInfo:
    """The customer's time zone, or the policy's default when unknown or invalid."""
    for candidate in (name, default):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ValueError, KeyError, OSError):
                continue
    return ZoneInfo("UTC")


def local(ts_ms: int, tz: ZoneInfo) -> datetime:
    """Event time as a local date and time."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).astimezone(tz)


def quiet_until(ts_ms: int, quiet: QuietHours, tz: ZoneInfo) -> int | None:
    """When the quiet window around ``ts_ms`` ends (epoch ms), or None if it is not quiet.

    >>> q = QuietHours(21 * 60, 8 * 60)
    >>> quiet_until(1_790_000_000_000, q, ZoneInfo("UTC")) is None   # 14:13 UTC
    True
    >>> quiet_until(1_790_028_000_000, q, ZoneInfo("UTC"))           # 22:00 UTC -> 08:00
    1790064000000
    """
    now = local(ts_ms, tz)
    minute = now.hour * 60 + now.minute
    if not quiet.contains(minute):
        return None
    end = now.replace(hour=quiet.end_minute // 60, minute=quiet.end_minute % 60,
                      second=0, microsecond=0)
    if end <= now:
        end = (now + timedelta(days=1)).replace(hour=quiet.end_minute // 60,
                                                minute=quiet.end_minute % 60)
    return int(end.timestamp() * 1000)


def calendar_bounds(ts_ms: int, cap: Cap, tz: ZoneInfo) -> tuple[int, int]:
    """The calendar period of ``cap`` that holds ``ts_ms``: a local day, week or month.

    >>> lo, hi = calendar_bounds(1_790_000_000_000, Cap(2, 7 * DAY_MS, True), ZoneInfo("UTC"))
    >>> local(lo, ZoneInfo("UTC")).strftime("%a %H:%M"), (hi - lo) // DAY_MS
    ('Mon 00:00', 7)
    """
    now = local(ts_ms, tz)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if cap.per_ms >= 28 * DAY_MS:
        start = start.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    elif cap.per_ms >= 7 * DAY_MS:
        start = start - timedelta(days=start.weekday())
        end = start + timedelta(days=7)
    else:
        end = start + timedelta(days=1)
    # Local midnights, converted back through the zone (DST days are 23 or 25 hours).
    start = start.replace(tzinfo=None).replace(tzinfo=tz)
    end = end.replace(tzinfo=None).replace(tzinfo=tz)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
