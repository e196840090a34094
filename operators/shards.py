"""Stateful steps that own a shard of customers (or devices) each.

Why shards and not one Bytewax key per customer: event-time timers must fire
for customers who send nothing more (the cart left for 24 h), and Bytewax's
own timers run on the wall clock. A shard holds many customers, a timer heap
and the watermark, so one tick of event time reaches every timer it owns.
It also means one Python call per shard per batch instead of one per event.

State is kept hot here and snapshotted by Bytewax recovery at every epoch, so
a restart resumes from a consistent cut of state and input offsets. Redis is
the materialised view, overwritten with whole documents: replaying the events
after a snapshot rewrites the same documents, never adds twice.

Redis is read only to bootstrap state that an earlier deployment wrote (see
:class:`Bootstrap`); a shard never reads per event.

The shards are plain classes, compiled with mypyc (setup.py);
:mod:`engage.operators.steps` wraps them in Bytewax's StatefulBatchLogic.
"""

from __future__ import annotations

import heapq
import logging
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import orjson

from engage.events import Event, anon_key
from engage.monitoring import metrics
from engage.operators.event_time import NO_WATERMARK, Watermark
from engage.rules.decide import mark
from engage.operators.records import Emit, Forget, Merge, ModelCommand, Order, StateWrites, Tick
from engage.operators.routing import shard_of
from engage.state.customer import CustomerState, StateConfig
from engage.state.keys import (base_key, contact_keys, id_digest, link_key, model_key,
                               state_key)
from engage.state.profile import Population, memberships

log = logging.getLogger(__name__)
CLOCK_STEP_MS = 60_000
#: Timer kind of the profile's own timer (the rule runner's kinds are single letters too).
PROFILE_TIMER = "p"
#: Timer kind of the models' timer (prediction ticks, labels coming due).
MODEL_TIMER = "m"
#: Write the models' summary to Redis at most this often (wall clock), and at the end.
MODEL_SUMMARY_EVERY_S = 10.0
#: What Bytewax's StatefulBatchLogic.RETAIN means: keep the shard after this call.
RETAIN = False

Loader = Callable[[list[str]], list[bytes | None]]
"""Reads the Redis documents of several keys in one round trip (bootstrap only)."""


@dataclass(frozen=True)
class ShardConfig:
    """What every shard needs to know; built once per run."""

    state: StateConfig
    lateness_ms: int
    idle_after_s: float
    lineage: str
    max_links_per_device: int = 3
    actions_topic: str = "engage.actions"
    audit_topic: str = "engage.audit"
    #: Live engines stamp decisions with the wall clock; replays with event time.
    live: bool = True
    #: At the end of bounded input, let event time reach the last event.
    finish_on_eof: bool = True
    #: Sources, ``(partition, via)``, every shard waits to hear from before time moves.
    sources: tuple[tuple[int, int], ...] = ()
    #: Write changed customers to Redis at most this often (wall clock; 0 =
    #: after every batch). A customer touched by several events in between
    #: is serialised and written once.
    flush_every_ms: int = 0
    #: The rules in force (a RuleBook: ``.current`` is swapped on reload);
    #: None runs no rules at all.
    rules: Any = None
    #: Lifecycle, RFM and tier thresholds (a ProfileConfig); None keeps no profile.
    profile: Any = None
    #: Tag definitions when no rules run (backfill): a RuleBook, or None.
    tags: Any = None
    profile_topic: str = "engage.profile_changes"
    #: The churn and repurchase models (a ModelConfig); None keeps no models.
    models: Any = None
    #: Customer shards in the flow (a shard works out its own number from a key).
    customer_shards: int = 32


def runner_in_force(cfg: ShardConfig, current: Any) -> Any:
    """A RuleRunner of the rules in force: ``current`` while they are unchanged,
    a new one after a reload, None when no rules run."""
    book = cfg.rules
    if book is None:
        return None
    if current is not None and current.rules is book.current:
        return current
    from engage.rules.decide import RuleRunner  # noqa: PLC0415 - not compiled

    return RuleRunner(book.current, cfg.state, cfg.live)


class Bootstrap:
    """Loads state written by an earlier deployment the first time a key is seen.

    A document stamped with our own lineage but absent from our snapshot was
    written after that snapshot by a run that then crashed: using it would
    count the replayed events twice, so it is ignored (or its ``base`` copy,
    the earlier deployment's version, is used instead).
    """

    def __init__(self, loader: Loader, lineage: str, cfg: StateConfig) -> None:
        self.loader = loader
        self.lineage = lineage
        self.cfg = cfg

    def load(self, keys: list[str]) -> dict[str, tuple[CustomerState, bytes | None]]:
        """States found for ``keys``, each with the foreign bytes to keep as base copy."""
        found: dict[str, tuple[CustomerState, bytes | None]] = {}
        redis_keys = [state_key(k) for k in keys] + [base_key(k) for k in keys]
        values = self.loader(redis_keys)
        n = len(keys)
        for i, key in enumerate(keys):
            raw, base = values[i], values[n + i]
            if raw is not None:
                doc = orjson.loads(raw)
                if doc.get("lin") != self.lineage:
                    found[key] = (CustomerState.from_doc(doc, self.cfg), raw)
                    continue
            if base is not None:
                found[key] = (CustomerState.from_doc(orjson.loads(base), self.cfg), base)
        return found

    def links(self, devices: list[str]) -> dict[str, str]:
        """The customers that ``devices`` were linked to by the earlier deployment."""
        values = self.loader([link_key(d) for d in devices])
        return {d: v.decode() for d, v in zip(devices, values) if v is not None}


class _Shard:
    """Shared machinery: hot states, watermark, expiry, batched writes, snapshots."""

    step = "shard"
    #: Whether this shard's keys belong to membership sets (customers do, devices not).
    keeps_members = False

    def __init__(self, cfg: ShardConfig, resume: bytes | None,
                 bootstrap: Bootstrap | None = None) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.states: dict[str, CustomerState] = {}
        # Snapshots are incremental in cost: a customer is serialised again
        # only when it changed since the last snapshot, and kept as bytes.
        self.frozen: dict[str, bytes] = {}
        self.changed: set[str] = set()
        self.written_before: set[str] = set()
        self.rewrite: set[str] = set()
        self.watermark = Watermark(cfg.lateness_ms, cfg.idle_after_s, cfg.sources)
        self.expiry: list[tuple[int, str]] = []
        self.timers: list[tuple[int, str, str, str]] = []   # (due, key, kind, ref): see rules.decide
        # (ts, partition, offset, arrival, item): waiting for the watermark
        # to pass them, so that they are applied in event-time order.
        self.held: list[tuple[int, int, int, int, Any]] = []
        self.arrivals = 0
        # Erased customers and devices, as digests (never the ids): their
        # later events, replays included, are dropped.
        self.forgotten: set[str] = set()
        self.bases: dict[str, bytes] = {}   # bootstrap copies still to write once
        self.last_clock = self.watermark.value
        self.dirty: set[str] = set()
        self.writes: dict[str, bytes | None] = {}   # this batch's Redis writes
        self.members: dict[str, str] = {}           # this batch's membership changes
        # What was last sent per customer. Not snapshotted: after a restart
        # everything touched is sent again, and the sets converge (the Redis
        # side diffs against its own index).
        self.members_sent: dict[str, str] = {}
        self.members_dirty: set[str] = set()        # profile changed since the last flush
        # Not 0.0: the monotonic clock starts near zero on a freshly booted
        # machine, and the first batch must flush whatever the uptime.
        self.flushed_at = float("-inf")
        if resume is not None:
            self._restore(pickle.loads(resume))

    # -- hooks for subclasses
    def _restore(self, snap: dict[str, Any]) -> None:
        # States thaw one by one on first use: a restart does not unpickle
        # customers that never come back.
        self.frozen = snap["frozen"]
        # What was written in the last two epochs may not have reached Redis
        # (the writer runs up to a batch behind): write it again.
        self.rewrite = set(snap["written"])
        self.watermark = snap["watermark"]
        self.expiry = snap["expiry"]
        self.timers = snap["timers"]
        self.bases = snap["bases"]
        self.held = snap["held"]
        self.arrivals = snap["arrivals"]
        self.forgotten = snap.get("forgotten", set())
        self.last_clock = self.watermark.value

    def _snapshot_dict(self) -> dict[str, Any]:
        # Changed but not yet flushed counts as written: after a restore it
        # is written again like everything else of this epoch.
        self.changed |= self.dirty
        # The Redis writer can still hold the last batch of the previous
        # epoch when this one closes: name both epochs' keys for a restore.
        written = list(self.changed | self.written_before)
        self.written_before = set(self.changed)
        for key in self.changed:
            state = self.states.get(key)
            if state is None:
                self.frozen.pop(key, None)
            else:
                self.frozen[key] = state.freeze()
        self.changed.clear()
        return {"frozen": self.frozen, "watermark": self.watermark, "expiry": self.expiry,
                "timers": self.timers, "bases": self.bases, "written": written,
                "held": self.held, "arrivals": self.arrivals, "forgotten": self.forgotten}

    def _is_forgotten(self, some_id: str | None) -> bool:
        return bool(self.forgotten) and some_id is not None and id_digest(some_id) in self.forgotten

    def _unhold(self, drop: Callable[[Any], bool]) -> None:
        """Forget held items for which ``drop`` is true."""
        kept = [h for h in self.held if not drop(h[4])]
        if len(kept) != len(self.held):
            heapq.heapify(kept)
            self.held = kept

    def _hold(self, item: Any, ts: int, partition: int, offset: int) -> None:
        """Keep ``item`` until the watermark passes ``ts``; ties go by partition and offset."""
        self.arrivals += 1
        heapq.heappush(self.held, (ts, partition, offset, self.arrivals, item))

    def snapshot(self) -> bytes:
        """An immutable copy (bytes) of the whole shard for Bytewax recovery."""
        return pickle.dumps(self._snapshot_dict(), protocol=pickle.HIGHEST_PROTOCOL)

    def _tag_rules(self) -> Any:
        """The rule set whose tag definitions are in force (the rules', else the tag
        book's, as last reloaded), or None when there is neither."""
        book = self.cfg.rules if self.cfg.rules is not None else self.cfg.tags
        return book.current if book is not None else None

    def _lookup(self, key: str) -> CustomerState | None:
        """The hot state of ``key``, thawing it from the last snapshot if needed."""
        state = self.states.get(key)
        if state is None:
            raw = self.frozen.get(key)
            if raw is not None:
                state = self.states[key] = CustomerState.thaw(raw)
        return state

    def _drop(self, key: str) -> None:
        """Forget ``key`` here (its Redis key is handled by the caller)."""
        self.states.pop(key, None)
        self.frozen.pop(key, None)
        self.changed.add(key)
        self.dirty.discard(key)
        self.bases.pop(key, None)

    # -- state access
    def _prefetch(self, keys: Iterable[str]) -> None:
        if self.bootstrap is None:
            return
        missing = [k for k in set(keys) if self._lookup(k) is None]
        if not missing:
            return
        for key, (state, raw) in self.bootstrap.load(missing).items():
            self.states[key] = state
            heapq.heappush(self.expiry, (state.max_ts + self.cfg.state.inactive_ttl_ms, key))
            if raw is not None:
                self.bases[key] = raw

    def _state(self, key: str) -> CustomerState:
        state = self.states.get(key) or self._lookup(key)
        if state is None:
            state = self.states[key] = CustomerState(key, self.cfg.state)
            # Looked at on the next advance (its events are applied by then),
            # then re-armed at last event + TTL (see _expire_one).
            heapq.heappush(self.expiry, (0, key))
        return state

    # -- time
    def _expire(self, out: list[Any]) -> None:
        """Drop what has been inactive for the TTL, in event time."""
        wm = self.watermark.value
        heap = self.expiry
        while heap and heap[0][0] <= wm:
            _, key = heapq.heappop(heap)
            rearm = self._expire_one(key, wm, out)
            if rearm is not None:
                heapq.heappush(heap, (rearm, key))

    def _expire_one(self, key: str, wm: int, out: list[Any]) -> int | None:
        """Expire ``key`` if inactive, else return when to look again."""
        state = self._lookup(key)
        if state is None:
            return None
        ttl = self.cfg.state.inactive_ttl_ms
        if state.max_ts + ttl > wm:
            return state.max_ts + ttl
        self._drop(key)
        metrics.CUSTOMERS_EXPIRED.inc()
        self.writes[state_key(key)] = None
        self._leave_sets(key)
        return None

    def _leave_sets(self, key: str) -> None:
        """``key`` is gone: it leaves every membership set."""
        if self.keeps_members:
            self.members[key] = ""
            self.members_sent.pop(key, None)

    def _flush(self, out: list[Any], force: bool = False) -> None:
        if self.cfg.flush_every_ms and not force:
            now = time.monotonic()
            if (now - self.flushed_at) * 1000 < self.cfg.flush_every_ms:
                return
            self.flushed_at = now
        lineage = self.cfg.lineage
        cfg = self.cfg.state
        dumps = orjson.dumps
        writes = self.writes
        if self.rewrite:
            for key in self.rewrite:
                if self._lookup(key) is not None:
                    self.dirty.add(key)
                else:
                    self.writes.setdefault(state_key(key), None)
                    self._leave_sets(key)
            self.rewrite = set()
        self.changed |= self.dirty
        members = self.members
        for key in self.dirty:
            state = self.states.get(key)
            if state is None:
                continue
            doc = state.to_doc(cfg)
            doc["lin"] = lineage
            writes[state_key(key)] = dumps(doc)
            base = self.bases.pop(key, None)
            if base is not None:
                writes[base_key(key)] = base
            # Only when the profile changed (or nothing was sent since start-up).
            if self.keeps_members and (key in self.members_dirty or key not in self.members_sent):
                now_in = memberships(state.derived)
                if self.members_sent.get(key) != now_in:
                    members[key] = self.members_sent[key] = now_in
        self.dirty.clear()
        self.members_dirty.clear()
        # The published clock is a reading aid for `engage profile`; a minute
        # of event time is fine enough and spares a write per shard per batch.
        clock = 0
        if self.watermark.value >= self.last_clock + CLOCK_STEP_MS:
            self.last_clock = clock = self.watermark.value
        if writes or clock or members:
            out.append(StateWrites(writes, clock, members or None))
            self.writes = {}
            self.members = {}
        metrics.CUSTOMERS_HOT.labels(self.step).set(max(len(self.states), len(self.frozen)))

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        """Input ended: write what is pending; for bounded input, let event time
        reach the last event and fire what is due by then."""
        out: list[Any] = []
        if self.cfg.finish_on_eof:
            self.watermark.finish()
            self._advance(out)
        self._flush(out, force=True)
        return out, RETAIN

    def _advance(self, out: list[Any]) -> None:
        self._expire(out)


class CustomerShard(_Shard):
    """Customers' state, and the rules that decide what to send them.

    Takes :class:`Event` (already attributed to a customer), :class:`Merge`
    from the identity step, and :class:`Tick` (event-time progress). Emits
    ``Decision`` records for the contact step, and state writes.

    Rules run in a :class:`~engage.rules.decide.RuleRunner`; its event-time
    timers (absence triggers, schedules, deferred decisions) live in this
    shard's heap and fire when the watermark passes them, so a customer who
    sends nothing more still gets the reminder the absence calls for.

    Events and merges wait here for the watermark too, and are applied
    interleaved with the timers in event-time order: a decision at ``t``
    reads the customer exactly as the events up to ``t`` left them. Applied
    on arrival, a customer's direct events ran ahead of the device events
    and logins the identity step holds back, and a condition such as
    ``product_view_24h >= 3`` held or not depending on batch timing.
    """

    step = "customers"
    keeps_members = True

    def __init__(self, cfg: ShardConfig, resume: bytes | None,
                 bootstrap: Bootstrap | None = None) -> None:
        self.runner: Any = None
        self.profiler: Any = None
        self.pending: dict[str, Any] = {}
        self.final = False
        # The shard's customers as a population, when RFM is scored relatively.
        self.population: Any = None
        if cfg.profile is not None and cfg.profile.rfm_scoring == "population":
            self.population = Population()
        # Each shard learns its own replica of the models from its customers:
        # learning stays in event-time order, hence deterministic, and is
        # snapshotted with the customers it learnt from.
        self.keeper: Any = None
        if cfg.models is not None:
            from engage.models.keeper import ModelKeeper  # noqa: PLC0415 - not compiled

            self.keeper = ModelKeeper(cfg.models, cfg.state)
        self.shard_no = -1
        self.summary_at = float("-inf")
        super().__init__(cfg, resume, bootstrap)
        self._runner()
        self._profiler()

    def _restore(self, snap: dict[str, Any]) -> None:
        super()._restore(snap)
        self.pending = snap.get("pending", {})
        if self.population is not None and snap.get("population") is not None:
            self.population = snap["population"]
        if self.keeper is not None and snap.get("models") is not None:
            self.keeper.restore(snap["models"])
        # Known again at once: the summary is rewritten at the end even when
        # no event reaches this shard after the restart.
        self.shard_no = snap.get("shard_no", -1)

    def _snapshot_dict(self) -> dict[str, Any]:
        snap = super()._snapshot_dict()
        snap["pending"] = self.pending
        snap["population"] = self.population
        snap["models"] = self.keeper.snapshot() if self.keeper is not None else None
        snap["shard_no"] = self.shard_no
        return snap

    def _drop(self, key: str) -> None:
        # A customer who leaves (expired, erased) leaves the population too.
        state = self._lookup(key) if self.population is not None else None
        if state is not None and state.derived.get("pop"):
            self.population.move(tuple(state.derived["pop"]), None)
        super()._drop(key)

    def _runner(self) -> Any:
        """The runner of the rules in force (rebuilt when they are reloaded)."""
        runner = runner_in_force(self.cfg, self.runner)
        if runner is not self.runner and runner is not None:
            runner.pending = self.pending   # decisions waiting survive a reload
        self.runner = runner
        return runner

    def _profiler(self) -> Any:
        """The profile keeper for the tag definitions in force (rebuilt on reload)."""
        if self.cfg.profile is None:
            return None
        from engage.rules.model import RuleSet  # noqa: PLC0415 - not compiled
        from engage.rules.profiler import Profiler  # noqa: PLC0415 - not compiled

        rules = self._tag_rules()
        if rules is None:
            rules = RuleSet(())
        if self.profiler is None or self.profiler.rules is not rules:
            self.profiler = Profiler(rules, self.cfg.state, self.cfg.profile)
        self.profiler.population = self.population
        return self.profiler

    def on_batch(self, items: list[Any]) -> tuple[Iterable[Any], bool]:
        """Hold events and merges until event time passes them, then apply them and
        fire the rules' timers in event-time order; write state."""
        started = time.perf_counter()
        out: list[Any] = []
        if self.bootstrap is not None:
            self._prefetch((i.user_id or "") if type(i) is Event else i.customer
                           for i in items if type(i) is not Tick and type(i) is not ModelCommand)
        for item in items:
            kind = type(item)
            if kind is Event:
                if item.late:
                    # Beyond the allowed lateness: lifetime totals only, now.
                    self._apply(item, out)
                else:
                    self._hold(item, item.ts, item.partition, item.offset)
            elif kind is Tick:
                self.watermark.update(item)
            elif kind is Merge:
                # Just ahead of the login that linked the device (and, should two
                # logins of the customer share a moment, in their order).
                self._hold(item, item.ts, -1, (item.partition << 40) + item.offset)
            elif kind is Forget:
                self._forget(item, out)
            elif kind is ModelCommand:
                self._command(item)
        self._advance(out)
        self._flush(out)
        metrics.PENDING_TIMERS.labels(self.step).set(len(self.timers))
        if self.watermark.value != NO_WATERMARK:
            metrics.WATERMARK_LAG.set(max(0.0, time.time() - self.watermark.value / 1000))
        metrics.BATCH_SECONDS.labels(self.step).observe(time.perf_counter() - started)
        return out, RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        """Input ended: for bounded input, everything up to the last event is due."""
        self.final = self.cfg.finish_on_eof
        return super().on_eof()

    def _apply(self, item: Any, out: list[Any]) -> None:
        """Fold one event or merge into its customer; arm the timers it calls for."""
        cfg = self.cfg.state
        runner = self.runner if self.cfg.rules is not None else None
        profiler = self.profiler
        timers: list[Any] = []
        if self.forgotten and self._is_forgotten(
                item.user_id if type(item) is Event else item.customer):
            return   # an erased customer: nothing of them is kept again
        if type(item) is Event:
            key = item.user_id or ""
            state = self.states.get(key) or self._state(key)
            state.apply(item, cfg)
            # Not `runner`: it is built at the first advance, after the late events
            # of a (resumed) shard's first batch have been applied here.
            if self.cfg.rules is not None and (item.type == "order_paid"
                                               or item.type == "order_refunded"):
                props = item.props
                coupon = props.get("coupon")   # not in the contract: a code only if a string
                out.append(Order(item.type, key, props["order_id"], item.ts, props["amount"],
                                 coupon if isinstance(coupon, str) else None, item.event_id))
            if item.late:
                metrics.LATE_EVENTS.inc()
            else:
                # Scores first: rules and tags deciding on this event read them.
                rescored = False
                if self.keeper is not None:
                    if self.shard_no < 0:
                        self.shard_no = int(shard_of(key, self.cfg.customer_shards))
                    rescored, due = self.keeper.on_event(state, item)
                    if due is not None:
                        timers.append((due, key, MODEL_TIMER, ""))
                if runner is not None and item.type in runner.relevant:
                    runner.on_event(state, item, timers, out)
                if profiler is not None and (profiler.relevant(state, item.type) or (
                        rescored and profiler.tags_on_scores)):
                    self._profile(state, item.ts, {"event_id": item.event_id}, timers, out, item,
                                  rescored)
        else:
            key = item.customer
            state = self._state(key)
            if item.state is not None:
                state.merge(item.state, cfg)
                if profiler is not None:
                    profiler.merge_prefs(state, item.state)
                if runner is not None:
                    runner.on_merge(state, item.state, timers)
            state.add_device(item.anonymous_id)
            if profiler is not None and item.state is not None:
                self._profile(state, item.ts, {"merged": item.anonymous_id}, timers, out)
        self.dirty.add(key)
        for timer in timers:
            heapq.heappush(self.timers, timer)

    def _forget(self, request: Forget, out: list[Any]) -> None:
        """Erase a customer: state, pending decisions, sets, contact ledger; then ignore them."""
        key = request.customer
        self.forgotten.add(id_digest(key))
        self._unhold(lambda x: (x.user_id if type(x) is Event else x.customer) == key)
        self._drop(key)
        self._leave_sets(key)
        self.pending = {ref: p for ref, p in self.pending.items() if p.customer != key}
        if self.runner is not None:
            self.runner.pending = self.pending
        for redis_key in (state_key(key), base_key(key), *contact_keys(key)):
            self.writes[redis_key] = None
        if self.cfg.rules is not None:
            out.append(request)   # the attribution step drops the customer's ledger
        metrics.ERASURES.labels(self.step).inc()
        log.info("erasure %s: customer dropped", request.request_id)

    def _command(self, command: ModelCommand) -> None:
        """``engage models reset|pin|unpin``: applied to this shard's replica."""
        if self.keeper is not None and self.keeper.command(command.model, command.op):
            self.summary_at = float("-inf")   # show it at the next flush
            log.info("model command %s: %s %s", command.request_id, command.op, command.model)

    def _profile(self, state: CustomerState, as_of: int, cause: dict[str, Any],
                 timers: list[Any], out: list[Any], event: Event | None = None,
                 rescored: bool = False) -> None:
        """Bring ``state``'s profile to ``as_of``: publish its changes, let rules react,
        and keep its timer armed at the next moment time alone may change it."""
        profiler = self.profiler
        runner = self.runner if self.cfg.rules is not None else None
        key = state.key
        changes, due = profiler.refresh(state, as_of, cause, event, rescored)
        if changes:
            self.members_dirty.add(key)
        for change in changes:
            metrics.PROFILE_CHANGES.labels(change["kind"]).inc()
            # A backfill (no rules running) rebuilds profiles but sends nothing.
            if runner is not None:
                out.append(Emit(self.cfg.profile_topic, key.encode(),
                                profiler.message(key, change)))
        if runner is not None:
            runner.on_changes(state, changes, timers, out)
        if due is not None:
            timers.append((due, key, PROFILE_TIMER, ""))

    def _advance(self, out: list[Any]) -> None:
        """Apply held items and fire timers, oldest first, up to the watermark.

        Only what is older than the watermark: an event at exactly the
        watermark may still have an equal-time peer on its way. An event
        goes before a timer due at its own time, so a decision at ``t`` sees
        the customer exactly as every event up to ``t`` left them, and none
        after: in every run, however batches and partitions interleaved.
        """
        wm = self.watermark.value
        limit = wm + 1 if self.final else wm
        held = self.held
        heap = self.timers
        runner = self._runner()
        self._profiler()
        while True:
            if held and held[0][0] < limit and (not heap or held[0][0] <= heap[0][0]):
                self._apply(heapq.heappop(held)[4], out)
                continue
            if not heap or heap[0][0] >= limit:
                break
            due, key, kind, ref = heapq.heappop(heap)
            # Everything of this customer due at this instant is one moment
            # (rules triggered by the same event compete in one arbitration).
            due_now = [(kind, ref)]
            while heap and heap[0][0] == due and heap[0][1] == key:
                _, _, kind, ref = heapq.heappop(heap)
                due_now.append((kind, ref))
            state = self._lookup(key)
            if state is None:
                continue
            fresh: list[Any] = []
            if (MODEL_TIMER, "") in due_now:
                due_now = [t for t in due_now if t[0] != MODEL_TIMER]
                # No keeper: armed before the models were switched off; dropped.
                if self.keeper is not None:
                    rescored, arm = self.keeper.on_timer(state, due)
                    if arm is not None:
                        fresh.append((arm, key, MODEL_TIMER, ""))
                    # Labels learnt changed the customer's pending examples: the
                    # snapshot must take them, though the Redis document is as it was.
                    self.changed.add(key)
                    if rescored:
                        self.dirty.add(key)
                        # Predictive tags follow the new scores (and the profile is
                        # brought to this moment on the way).
                        if self.profiler is not None and self.profiler.tags_on_scores:
                            self._profile(state, due, {"time": True}, fresh, out, None, True)
            if (PROFILE_TIMER, "") in due_now:
                due_now = [t for t in due_now if t[0] != PROFILE_TIMER]
                # Only the latest armed one counts; earlier ones were superseded.
                if self.profiler is not None and state.derived.get("due") == due:
                    del state.derived["due"]
                    self._profile(state, due, {"time": True}, fresh, out)
                    self.dirty.add(key)
            if due_now and runner is not None:
                runner.on_timers(state, due, due_now, fresh, out)
                self.dirty.add(key)
            for timer in fresh:
                heapq.heappush(heap, timer)
        self._expire(out)

    def _flush(self, out: list[Any], force: bool = False) -> None:
        if self.keeper is not None and self.shard_no >= 0:
            now = time.monotonic()
            if force or now - self.summary_at >= MODEL_SUMMARY_EVERY_S:
                self.summary_at = now
                summary = self.keeper.summary()
                self.writes[model_key(self.shard_no)] = orjson.dumps(summary)
                publish_models(self.shard_no, summary, force)
        horizon = self.watermark.value - self.cfg.state.cart_abandon_after_ms
        for key in self.dirty:
            state = self.states.get(key)
            if state is not None and state.cart.checkouts:
                state.cart.compact(horizon)
        super()._flush(out, force)


#: The latest model summary of each customer shard in this process, for the
#: gauges; shards on several worker threads publish, hence the lock.
_MODEL_SUMMARIES: dict[int, dict[str, Any]] = {}
_MODEL_LOCK = threading.Lock()
_MODEL_GAUGES_AT: list[float] = [float("-inf")]


def forget_model_summaries() -> None:
    """A new flow in this process: the gauges follow its shards only."""
    with _MODEL_LOCK:
        _MODEL_SUMMARIES.clear()
        _MODEL_GAUGES_AT[0] = float("-inf")


def publish_models(shard_no: int, summary: dict[str, Any], force: bool = False) -> None:
    """Set the model gauges from the summaries of every shard in this process.

    Merging every shard's validation is not free: done at most once per
    :data:`MODEL_SUMMARY_EVERY_S` for the whole process (and at the end).
    """
    from engage.models.online import merged  # noqa: PLC0415 - not compiled

    now = time.monotonic()
    with _MODEL_LOCK:
        _MODEL_SUMMARIES[shard_no] = summary
        if not force and now - _MODEL_GAUGES_AT[0] < MODEL_SUMMARY_EVERY_S:
            return
        _MODEL_GAUGES_AT[0] = now
        every = list(_MODEL_SUMMARIES.values())
    for name in summary:
        m = merged(s[name] for s in every if name in s)
        metrics.MODEL_LABELS.labels(name).set(m["labels"])
        metrics.MODEL_LEARNED.labels(name).set(m["learned"])
        metrics.MODEL_PINNED.labels(name).set(1 if m["pinned"] else 0)
        if m["auc"] is not None:
            metrics.MODEL_AUC.labels(name).set(m["auc"])
        if m["log_loss"] is not None:
            metrics.MODEL_LOG_LOSS.labels(name).set(m["log_loss"])
        if m["baseline_auc"] is not None:
            metrics.MODEL_BASELINE_AUC.labels(name).set(m["baseline_auc"])


class DeviceLinks:
    """What the identity step knows of one device: its link and link history."""

    __slots__ = ("linked", "history", "last_ts")

    def __init__(self) -> None:
        self.linked: str | None = None
        self.history: list[str] = []
        self.last_ts = 0

    def __reduce__(self) -> tuple:
        # Explicit, so pickling works compiled (mypyc) or not.
        return (_restore_device, (self.linked, self.history, self.last_ts))


def _restore_device(linked: str | None, history: list[str], last_ts: int) -> DeviceLinks:
    device = DeviceLinks()
    device.linked, device.history, device.last_ts = linked, history, last_ts
    return device


class IdentityShard(_Shard):
    """Devices: links to customers, and the history of devices not yet linked.

    Takes events that carry an ``anonymous_id`` and either no ``user_id`` or a
    linking type (``login``/``register`` with both ids). Emits events
    re-attributed to the linked customer and :class:`Merge` records, which the
    flow routes on to the customer shards, plus the devices' own state writes.

    Guard against over-merging: a device already linked to
    ``max_links_per_device`` distinct customers (a shop's shared tablet) links
    to no further ones; the refusal is counted.

    A :class:`Forget` request drops the devices linked to the erased customer
    (links, documents, held events) and keeps digests of the ids, so that the
    customer's logins and the devices' anonymous use are ignored afterwards.

    Events are handled in event-time order, not arrival order: each waits
    here until the watermark passes it. A login and the device's own events
    usually come from different partitions, and whether a product view
    arrived before or after the login that links its device decided whether
    it stayed in the device's history or fired the customer's rules; after a
    crash, a replay that interleaved the partitions differently also left
    behind device documents the first run had written. Held back, every
    event that is not late meets the links in one order, the same in every
    run (ties broken by partition and offset). It costs device events no
    latency that matters: the customer's rules decide on an event only once
    the watermark passes it anyway (see RuleRunner.on_event). Time passed on
    to customers stops just short of the oldest event still held, so it
    never overtakes one.
    """

    step = "identity"

    def __init__(self, cfg: ShardConfig, resume: bytes | None,
                 bootstrap: Bootstrap | None = None) -> None:
        self.devices: dict[str, DeviceLinks] = {}
        self.shard_id = -1   # learnt from the ticks the router addresses to this shard
        self.forwarded: dict[int, int] = {}   # progress passed on, per partition
        self.links_changed: set[str] = set()
        self.links_before: set[str] = set()
        self.marker: Any = None
        self.learner: Any = None
        super().__init__(cfg, resume, bootstrap)

    def _marker(self) -> Any:
        """The rules in force, for the events a device's history must remember."""
        self.marker = runner_in_force(self.cfg, self.marker)
        return self.marker

    def _learner(self) -> Any:
        """The preference scoring of the tag definitions in force (None without
        preferences), rebuilt on reload: what a device browses before it is
        linked counts for its customer's preference tags once it is."""
        rules = self._tag_rules()
        if self.cfg.profile is None or rules is None or rules.preferences is None:
            self.learner = None
            return None
        if self.learner is None or self.learner.rules is not rules:
            from engage.rules.profiler import Profiler  # noqa: PLC0415 - not compiled

            self.learner = Profiler(rules, self.cfg.state, self.cfg.profile)
        return self.learner

    def _restore(self, snap: dict[str, Any]) -> None:
        super()._restore(snap)
        self.devices = snap["devices"]
        # As for states: links written since the previous snapshot may not
        # have reached Redis before a crash; write them again.
        for anon in snap["links_written"]:
            device = self.devices.get(anon)
            linked = device.linked if device is not None else None
            self.writes[link_key(anon)] = linked.encode() if linked else None

    def _snapshot_dict(self) -> dict[str, Any]:
        snap = super()._snapshot_dict()
        snap["devices"] = self.devices
        snap["links_written"] = sorted(self.links_changed | self.links_before)
        self.links_before, self.links_changed = self.links_changed, set()
        return snap

    def on_batch(self, items: list[Any]) -> tuple[Iterable[Any], bool]:
        """Hold this batch's events, then link, re-attribute or keep each one the
        watermark has passed, in event-time order; pass time on."""
        started = time.perf_counter()
        out: list[Any] = []
        ticked = False
        self._marker()   # once per batch: a reload takes effect from the next one
        self._learner()
        if self.bootstrap is not None:
            self._prefetch(anon_key(i.anonymous_id or "") for i in items if type(i) is Event)
            self._prefetch_links({i.anonymous_id or "" for i in items if type(i) is Event})
        for item in items:
            if type(item) is Tick:
                self.shard_id = item.via
                self.watermark.update(item._replace(via=-1))
                ticked = True
            elif type(item) is Forget:
                self._forget(item)
            elif item.late:
                # Beyond the allowed lateness: time has passed it already.
                self._handle(item, out)
            else:
                self._hold(item, item.ts, item.partition, item.offset)
        self._release(self.watermark.value, out)
        if ticked:
            self._pass_time_on(out)
        self._advance(out)
        self._flush(out)
        metrics.BATCH_SECONDS.labels(self.step).observe(time.perf_counter() - started)
        return out, RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        """Input ended: for bounded input, every held event is due, and so is all time."""
        out: list[Any] = []
        if self.cfg.finish_on_eof:
            self.watermark.finish()
            self._marker()
            # A resumed shard may reach the end before any batch: what on_batch
            # sets up per batch is needed here too, or held device events go
            # unscored and the replay differs from an uninterrupted run.
            self._learner()
            self._release(None, out)
            self._pass_time_on(out, final=True)
            self._advance(out)
        self._flush(out, force=True)
        return out, RETAIN

    def _release(self, watermark: int | None, out: list[Any]) -> None:
        """Handle, oldest first, every held event older than ``watermark`` (None: all).

        Strictly older: an event at exactly the watermark could still have
        an equal-time peer on its way that is not late.
        """
        held = self.held
        while held and (watermark is None or held[0][0] < watermark):
            self._handle(heapq.heappop(held)[4], out)

    def _pass_time_on(self, out: list[Any], final: bool = False) -> None:
        """Progress not passed on before, never past an event still held.

        Passed on after the released events: on the way to the customer
        shards, time follows the device events, never overtakes them. Every
        copy fans out to every customer shard, hence only new progress.
        """
        wm = self.watermark.value
        if wm == NO_WATERMARK:
            return
        # A customer shard's watermark is (progress - lateness): capped so,
        # it stays just below every event still held here (all >= wm).
        cap = wm + self.watermark.lateness_ms - 1
        for (partition, _), max_ts in self.watermark.partitions.items():
            ts = max_ts if final else min(max_ts, cap)
            if ts > self.forwarded.get(partition, NO_WATERMARK):
                self.forwarded[partition] = ts
                out.append(Tick(partition, ts, self.shard_id))

    def _handle(self, item: Event, out: list[Any]) -> None:
        """Link, re-attribute or keep one device event."""
        if self.forgotten and (self._is_forgotten(item.user_id) or (
                item.user_id is None and self._is_forgotten(item.anonymous_id))):
            return   # an erased customer, or anonymous use of their devices
        cfg = self.cfg.state
        anon = item.anonymous_id or ""
        device = self.devices.get(anon)
        if device is None:
            device = self.devices[anon] = DeviceLinks()
            heapq.heappush(self.expiry, (item.ts + cfg.inactive_ttl_ms, "@" + anon))
        if item.ts > device.last_ts:
            device.last_ts = item.ts
        if item.user_id is not None:
            self._link(anon, device, item, out)
        elif device.linked is not None:
            out.append(item.with_user(device.linked))
        else:
            key = anon_key(anon)
            state = self.states.get(key) or self._state(key)
            state.apply(item, cfg)
            if self.learner is not None:
                self.learner.learn(state, item)
            marker = self.marker
            if item.late:
                metrics.LATE_EVENTS.inc()
            elif marker is not None and item.type in marker.watched:
                # A device's add to cart must still arm its reminder once
                # the device is linked (see RuleRunner.on_merge).
                mark(state, item, marker.mark_horizon_ms)
            self.dirty.add(key)

    def _forget(self, request: Forget) -> None:
        """Erase a customer's devices: links, history, device state; then ignore them."""
        customer = request.customer
        self.forgotten.add(id_digest(customer))
        gone = [anon for anon, d in self.devices.items() if d.linked == customer]
        for anon in gone:
            del self.devices[anon]
            self.forgotten.add(id_digest(anon))
            self.writes[link_key(anon)] = None
            self.links_changed.add(anon)
            self._drop(anon_key(anon))
            self.writes[state_key(anon_key(anon))] = None
        for device in self.devices.values():   # shared devices keep their other customers
            if customer in device.history:
                device.history.remove(customer)
        dropped = set(gone)
        self._unhold(lambda e: e.user_id == customer or e.anonymous_id in dropped)
        metrics.ERASURES.labels(self.step).inc()
        log.info("erasure %s: %d device(s) dropped", request.request_id, len(gone))

    def _prefetch_links(self, devices: set[str]) -> None:
        """Take over the links of devices this deployment has not seen yet."""
        assert self.bootstrap is not None
        unknown = [d for d in devices if d not in self.devices]
        if not unknown:
            return
        for anon, customer in self.bootstrap.links(unknown).items():
            device = self.devices[anon] = DeviceLinks()
            device.linked = customer
            device.history = [customer]
            heapq.heappush(self.expiry, (0, "@" + anon))

    def _link(self, anon: str, device: DeviceLinks, event: Event, out: list[Any]) -> None:
        customer = event.user_id
        assert customer is not None
        if customer not in device.history:
            if len(device.history) >= self.cfg.max_links_per_device:
                metrics.IDENTITY_LINKS.labels("refused").inc()
                out.append(event)  # the customer's own login still counts for them
                return
            device.history.append(customer)
        if device.linked != customer:
            device.linked = customer
            if self.forgotten:
                # Someone else's device now: its anonymous use counts again.
                self.forgotten.discard(id_digest(anon))
            metrics.IDENTITY_LINKS.labels("linked").inc()
            key = anon_key(anon)
            state = self._lookup(key)
            self._drop(key)
            if state is not None:
                self.writes[state_key(key)] = None
            self.writes[link_key(anon)] = customer.encode()
            self.links_changed.add(anon)
            # The merge travels ahead of the login on the same route, so the
            # customer's shard sees the device's history first.
            out.append(Merge(customer, anon, state, event.ts, event.partition, event.offset))
        out.append(event)

    def _expire_one(self, key: str, wm: int, out: list[Any]) -> int | None:
        # Device entries ("@" + id) and device states ("~" + id) share the heap.
        if not key.startswith("@"):
            return super()._expire_one(key, wm, out)
        anon = key[1:]
        device = self.devices.get(anon)
        if device is None:
            return None
        ttl = self.cfg.state.inactive_ttl_ms
        if device.last_ts + ttl > wm:
            return device.last_ts + ttl
        del self.devices[anon]
        if device.linked is not None:
            self.writes[link_key(anon)] = None
            self.links_changed.add(anon)
        return None
