"""Event-time sliding windows as sparse bucketed counters, rolled up as they age.

A window of length ``W`` is kept at a granularity ``g`` (one minute for
windows up to an hour, one hour up to two days, one day beyond). Its value at
reference time ``T`` is the sum of the buckets ``floor(t/g)`` of all counted
events with ``floor(T/g) - W/g < floor(t/g) <= floor(T/g)``: a window that
slides in steps of ``g``. That definition is exact (no decay, no sampling), so
a brute-force count over the same events gives the same number; the property
tests check exactly that.

Each amount is kept once, at the finest granularity that some window still
needs for it: the last hour by the minute, the last day by the hour, older
days by the day. Pruning rolls buckets that slid out of their level's reach
into the next coarser level, and a window sums every level at or below its
own granularity. One bucket update per event instead of one per level (the
hot path), and documents without the same recent counts three times over.

Where an amount lives depends only on its event time and the pruning
reference, never on arrival order, so the stored document is canonical.
Buckets are sparse dicts, so a customer who views one sofa a week costs a few
entries, not 60 + 24 + 30 empty slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

Levels = list[dict[str, dict[str, float]]]
"""Per granularity of a :class:`WindowSet`: ``{bucket index: {counter: amount}}``.

All counters of one customer share their buckets, so pruning a customer
visits a handful of buckets, not every counter. Bucket indexes are kept as
decimal strings: the documents go to Redis as JSON, and serialising string
keys costs half as much as converting integer keys on every write.
"""


def parse_duration(text: str | int) -> int:
    """Milliseconds in a duration such as ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``.

    >>> parse_duration("7d")
    604800000
    >>> parse_duration("90s")
    90000
    """
    if isinstance(text, int):
        return text
    units = {"ms": 1, "s": 1000, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}
    text = text.strip()
    for suffix in ("ms", "s", "m", "h", "d", "w"):
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            try:
                value = float(number)
                if value < 0:
                    break
                return int(value * units[suffix])
            except (ValueError, OverflowError):
                break
    raise ValueError(f"bad duration {text!r}: use a number and one of ms, s, m, h, d, w (e.g. '24h')")


def format_duration(ms: int) -> str:
    """The shortest exact name of a duration, used to label windows.

    >>> format_duration(604800000), format_duration(3600000), format_duration(90000)
    ('7d', '1h', '90s')
    """
    for suffix, unit in (("d", DAY_MS), ("h", HOUR_MS), ("m", MINUTE_MS), ("s", 1000)):
        if ms % unit == 0:
            return f"{ms // unit}{suffix}"
    return f"{ms}ms"


def granularity_for(length_ms: int) -> int:
    """The bucket size used for a window of ``length_ms``.

    >>> granularity_for(3_600_000) == MINUTE_MS, granularity_for(7 * DAY_MS) == DAY_MS
    (True, True)
    """
    if length_ms <= HOUR_MS:
        return MINUTE_MS
    if length_ms <= 2 * DAY_MS:
        return HOUR_MS
    return DAY_MS


@dataclass(frozen=True)
class Window:
    """A named sliding window: its length and the granularity it slides by."""

    name: str
    length_ms: int
    granularity_ms: int
    level: int  # index into the Levels of its WindowSet

    @property
    def buckets(self) -> int:
        """How many buckets the window spans."""
        return max(1, -(-self.length_ms // self.granularity_ms))


@dataclass(frozen=True)
class WindowSet:
    """The windows kept for one kind of counter (event counts, or spend).

    >>> ws = WindowSet.of(["1h", "7d"])
    >>> levels = ws.empty()
    >>> ws.add(levels, 10 * DAY_MS, ("view",), 1)
    >>> ws.add(levels, 10 * DAY_MS - 2 * HOUR_MS, ("view", "view|sofa"), 1)
    >>> ws.value(levels, "view", "1h", 10 * DAY_MS), ws.value(levels, "view", "7d", 10 * DAY_MS)
    (1.0, 2.0)
    """

    windows: tuple[Window, ...]
    granularities: tuple[int, ...]
    horizons: tuple[int, ...] = field(default=())  # buckets kept per level

    @staticmethod
    def of(lengths: list[str] | list[int]) -> "WindowSet":
        """Build a set from durations such as ``["1h", "24h", "7d", "30d"]``."""
        named: list[tuple[str, int, int]] = []
        for raw in lengths:
            length = parse_duration(raw)
            if length <= 0:
                raise ValueError(f"window {raw!r} must be longer than zero")
            name = raw.strip() if isinstance(raw, str) else format_duration(length)
            named.append((name, length, granularity_for(length)))
        # Levels run fine to coarse: pruning rolls each into the next.
        grans = sorted({gran for _, _, gran in named})
        horizons = {g: 0 for g in grans}
        windows: list[Window] = []
        for name, length, gran in named:
            window = Window(name, length, gran, grans.index(gran))
            windows.append(window)
            horizons[gran] = max(horizons[gran], window.buckets)
        return WindowSet(tuple(windows), tuple(grans), tuple(horizons[g] for g in grans))

    def empty(self) -> Levels:
        """Fresh, empty levels for one customer."""
        return [{} for _ in self.granularities]

    def _place(self, ts: int, ref_ts: int, first: int) -> int:
        """The finest level from ``first`` on that still keeps amounts at ``ts``, or -1.

        A level keeps the buckets within its horizon of the reference; what is
        older only matters to coarser windows (or to none).
        """
        grans = self.granularities
        horizons = self.horizons
        for li in range(first, len(grans)):
            gran = grans[li]
            if ts // gran > ref_ts // gran - horizons[li]:
                return li
        return -1

    def add(self, levels: Levels, ts: int, names: tuple[str, ...], amount: float,
            ref_ts: int = 0) -> None:
        """Count ``amount`` for each counter in ``names`` at event time ``ts``.

        The amount goes to the bucket where :meth:`prune` at ``ref_ts`` would
        have rolled it, and nowhere if no window can reach it: the levels then
        hold the same buckets whatever order events and pruning happened in.
        """
        li = self._place(ts, ref_ts, 0)
        if li < 0:
            return
        level = levels[li]
        idx = str(ts // self.granularities[li])
        bucket = level.get(idx)
        if bucket is None:
            bucket = level[idx] = {}
        for name in names:
            bucket[name] = bucket.get(name, 0) + amount

    def window(self, name: str) -> Window:
        """The window called ``name`` (e.g. ``"7d"``)."""
        for w in self.windows:
            if w.name == name:
                return w
        raise KeyError(f"no window {name!r}; known: {', '.join(w.name for w in self.windows)}")

    def value(self, levels: Levels, counter: str, window: str, ref_ts: int) -> float:
        """Sum of ``counter`` over the window called ``window``, seen at event time ``ref_ts``.

        ``ref_ts`` must not be earlier than the last pruning reference (what
        was rolled up or dropped by then is no longer at its finest grain).
        """
        w = self.window(window)
        gran = w.granularity_ms
        top = ref_ts // gran
        low = top - w.buckets
        total: float = 0.0
        for li in range(w.level + 1):
            span = _key_span(low, top, gran // self.granularities[li])
            if span is None:
                continue
            first, last = span
            for i, bucket in levels[li].items():
                if _key_at_least(i, first) and _key_at_least(last, i):
                    total += bucket.get(counter, 0)
        return total

    def next_exit(self, levels: Levels, window: str, ref_ts: int) -> int | None:
        """The earliest time after ``ref_ts`` at which a bucket now in ``window`` slides out.

        >>> ws = WindowSet.of(["7d"])
        >>> levels = ws.empty()
        >>> ws.add(levels, 3 * DAY_MS + 5, ("view",), 1)
        >>> ws.next_exit(levels, "7d", 4 * DAY_MS) == 10 * DAY_MS
        True
        """
        w = self.window(window)
        gran = w.granularity_ms
        top = ref_ts // gran
        low = top - w.buckets
        oldest: int | None = None
        for li in range(w.level + 1):
            ratio = gran // self.granularities[li]
            span = _key_span(low, top, ratio)
            if span is None:
                continue
            first, last = span
            found: str | None = None
            for i in levels[li]:
                if _key_at_least(i, first) and _key_at_least(last, i) and (
                        found is None or _key_at_least(found, i)):
                    found = i
            if found is not None:
                at = int(found) // ratio
                if oldest is None or at < oldest:
                    oldest = at
        # Bucket ``at`` counts while at > floor(T/gran) - buckets.
        return None if oldest is None else (oldest + w.buckets) * gran

    def values(self, levels: Levels, ref_ts: int) -> dict[str, dict[str, float]]:
        """Every counter's value in every window at ``ref_ts``: ``{counter: {window: n}}``."""
        out: dict[str, dict[str, float]] = {}
        for w in self.windows:
            gran = w.granularity_ms
            top = ref_ts // gran
            low = top - w.buckets
            for li in range(w.level + 1):
                span = _key_span(low, top, gran // self.granularities[li])
                if span is None:
                    continue
                first, last = span
                for i, bucket in levels[li].items():
                    if _key_at_least(i, first) and _key_at_least(last, i):
                        for name, n in bucket.items():
                            per = out.setdefault(name, {x.name: 0 for x in self.windows})
                            per[w.name] += n
        return out

    def prune(self, levels: Levels, ref_ts: int) -> None:
        """Roll up (or drop) buckets that slid out of their level's reach at ``ref_ts``.

        Safe because the reference time of every later query is at least
        ``ref_ts``. Callers pass a deterministic reference (the start of an
        event-time hour), so what is kept never depends on arrival order.
        """
        grans = self.granularities
        # Fine to coarse: a bucket rolled into a coarser level goes straight
        # to the level that keeps it at this reference.
        for li in range(len(grans)):
            level = levels[li]
            gran = grans[li]
            low = ref_ts // gran - self.horizons[li]
            if low < 0:
                continue   # bucket indexes are never negative: nothing is that old
            bound = str(low)
            stale = [i for i in level if _key_at_least(bound, i)]
            for i in stale:
                bucket = level.pop(i)
                start = int(i) * gran
                target = self._place(start, ref_ts, li + 1)
                if target >= 0:
                    _add_bucket(levels[target], str(start // grans[target]), bucket)

    def merge_into(self, target: Levels, other: Levels, ref_ts: int = 0) -> None:
        """Add every bucket of ``other`` still in reach at ``ref_ts`` into ``target``.

        ``ref_ts`` is at least ``other``'s own pruning reference (the merged
        state takes the later of the two), so a bucket of ``other`` only ever
        moves to a coarser level, never to a finer one.
        """
        grans = self.granularities
        for li in range(len(grans)):
            gran = grans[li]
            for i, o_bucket in other[li].items():
                start = int(i) * gran
                level = self._place(start, ref_ts, li)
                if level >= 0:
                    idx = i if level == li else str(start // grans[level])
                    _add_bucket(target[level], idx, o_bucket)


def _key_at_least(key: str, bound: str) -> bool:
    """``int(key) >= int(bound)`` for bucket indexes, without parsing either.

    Bucket indexes are written by ``str()`` of a non-negative int (event
    times are after 1970), so they have no sign and no leading zeros: the
    longer string is the larger number, and strings of one length compare
    as their digits do. Parsing every key was most of the cost of a
    windowed count (a tag condition reads one after most events).
    """
    n, m = len(key), len(bound)
    return n > m or (n == m and key >= bound)


def _key_span(low: int, top: int, ratio: int) -> tuple[str, str] | None:
    """The bucket indexes ``k`` of a level with ``low < k // ratio <= top``, as the
    first and last index (strings for :func:`_key_at_least`); None when there are none.

    ``ratio``: how many of the level's buckets make one of the window's
    (a whole number: granularities are a minute, an hour or a day).
    """
    first = max((low + 1) * ratio, 0)
    last = (top + 1) * ratio - 1
    if last < first:
        return None
    return str(first), str(last)


def _add_bucket(level: dict[str, dict[str, float]], idx: str, bucket: dict[str, float]) -> None:
    """Add ``bucket``'s counters into ``level[idx]`` (a copy, never shared)."""
    mine = level.get(idx)
    if mine is None:
        level[idx] = dict(bucket)
    else:
        for name, n in bucket.items():
            mine[name] = mine.get(name, 0) + n


def levels_from_doc(doc: list[dict[str, dict[str, float]]]) -> Levels:
    """Window levels read back from their JSON form (a copy)."""
    return [{i: dict(b) for i, b in level.items()} for level in doc]
