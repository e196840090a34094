"""``engage eval-churn``: the churn and repurchase models over a transaction log, in event time.

Reads ``customer_id,date,amount[,quantity]`` (a header row; ``date`` as
``YYYY-MM-DD`` or ISO 8601; with ``quantity`` the row's value is
``amount * quantity``; a negative value is a refund), turns each row into
the ``order_paid`` (or ``order_refunded``) event the engine would see, and
runs the engine's own code on it: :class:`~engage.state.customer.CustomerState`
for the customer's history, :class:`~engage.models.keeper.ModelKeeper` for
prediction points, delayed labels and learning, with the same timer order as
a customer shard (an event before a timer due at its own time).

In a purchase log, a purchase is the only visit there is: "churned" means no
purchase within the horizon. Examples whose horizon reaches past the last row
are never labelled (their future is unknown), so they are never validated.

Prints progressive validation (every score was given before its label was
known) for each model and for the recency baseline (days since the last
purchase), as it goes and at the end.
"""

from __future__ import annotations

import csv
import datetime as dt
import heapq
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from engage.events import Event
from engage.models.keeper import MODEL_NAMES, ModelConfig, ModelKeeper
from engage.models.online import KINDS, Validation
from engage.state.customer import CustomerState, StateConfig


class LogError(ValueError):
    """A transaction log that cannot be read at all (no header, wrong columns)."""


@dataclass
class EvalResult:
    """What ``engage eval-churn`` measured."""

    rows: int
    skipped: list[str]
    customers: int
    points: int
    seconds: float
    #: target -> model kind (and "baseline") -> {labels, positives, auc, log_loss}
    models: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)


def _parse_date(text: str) -> int:
    text = text.strip()
    if len(text) == 10:
        day = dt.date.fromisoformat(text)
        return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * 1000)
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def read_log(stream: TextIO, name: str) -> tuple[list[tuple[int, int, str, float]], list[str]]:
    """Rows ``(ts, line, customer, value)`` sorted by time, and one ``file:line: why``
    per row that could not be read (those rows are skipped)."""
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        raise LogError(f"{name}: empty file (expected a header customer_id,date,amount[,quantity])")
    cols = [h.strip().lower() for h in header]
    missing = [c for c in ("customer_id", "date", "amount") if c not in cols]
    if missing:
        raise LogError(f"{name}:1: missing column(s) {', '.join(missing)} "
                       f"(found {', '.join(cols) or 'none'})")
    ci, di, ai = cols.index("customer_id"), cols.index("date"), cols.index("amount")
    qi = cols.index("quantity") if "quantity" in cols else None
    rows: list[tuple[int, int, str, float]] = []
    errors: list[str] = []
    for line, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        try:
            customer = rec[ci].strip()
            if not customer:
                raise ValueError("empty customer_id")
            try:
                ts = _parse_date(rec[di])
            except ValueError:
                raise ValueError(f"date {rec[di]!r} is not YYYY-MM-DD or ISO 8601") from None
            try:
                value = float(rec[ai])
                if qi is not None and rec[qi].strip():
                    value *= float(rec[qi])
            except ValueError:
                raise ValueError("amount or quantity is not a number") from None
            if value != value or abs(value) > 1e12:
                raise ValueError(f"amount {rec[ai]!r} is not a usable number")
        except IndexError:
            errors.append(f"{name}:{line}: {len(rec)} columns, expected {len(cols)}")
            continue
        except ValueError as exc:
            errors.append(f"{name}:{line}: {exc}")
            continue
        rows.append((ts, line, customer, value))
    rows.sort()
    return rows, errors


class Replay:
    """Events and model timers in event-time order, as a customer shard runs them:
    a timer due before an event fires first; one due at its time, after it."""

    def __init__(self, keeper: ModelKeeper, state_cfg: StateConfig) -> None:
        self.keeper = keeper
        self.state_cfg = state_cfg
        self.states: dict[str, CustomerState] = {}
        self.timers: list[tuple[int, str]] = []

    def fire(self, until: int) -> None:
        """Fire every model timer due strictly before ``until``."""
        timers = self.timers
        while timers and timers[0][0] < until:
            due, key = heapq.heappop(timers)
            _, arm = self.keeper.on_timer(self.states[key], due)
            if arm is not None:
                heapq.heappush(timers, (arm, key))

    def feed(self, e: Event) -> CustomerState:
        """Fire what is due before ``e``, apply it, let the keeper see it."""
        self.fire(e.ts)
        key = e.user_id or ""
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = CustomerState(key, self.state_cfg)
        state.apply(e, self.state_cfg)
        _, arm = self.keeper.on_event(state, e)
        if arm is not None:
            heapq.heappush(self.timers, (arm, key))
        return state


def evaluate(rows: list[tuple[int, int, str, float]], cfg: ModelConfig,
             skipped: list[str] | None = None, progress: TextIO | None = None,
             report_every: int = 0) -> EvalResult:
    """Replay ``rows`` through the state and model code; returns what was measured."""
    started = time.perf_counter()
    keeper = ModelKeeper(cfg, StateConfig.default())
    replay = Replay(keeper, StateConfig.default())
    end = rows[-1][0] if rows else 0
    result = EvalResult(len(rows), skipped or [], 0, 0, 0.0)
    for n, (ts, line, customer, value) in enumerate(rows, start=1):
        etype = "order_paid" if value >= 0 else "order_refunded"
        replay.feed(Event(f"row-{line}", etype, ts, customer, None, "log",
                          {"order_id": f"row-{line}", "amount": abs(value)}))
        if report_every and n % report_every == 0:
            snap = _table(keeper)
            result.trace.append({"rows": n, "at": ts, **snap})
            if progress is not None:
                progress.write(_trace_line(n, len(rows), snap))
    replay.fire(end + 1)   # labels known by the last row; later horizons stay unknown
    result.customers = len(replay.states)
    result.points = keeper.points
    result.models = _table(keeper)
    result.seconds = time.perf_counter() - started
    return result


def _table(keeper: ModelKeeper) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in MODEL_NAMES:
        models = keeper.models[name]
        row: dict[str, dict[str, Any]] = {}
        for m in models:
            row[m.spec.kind] = _stats(m.validation, True)
        row["baseline"] = _stats(models[0].baseline, False)
        out[name] = row
    return out


def _stats(v: Validation, with_loss: bool) -> dict[str, Any]:
    return {"labels": v.n, "positives": v.positives(), "auc": v.auc(),
            "log_loss": v.log_loss() if with_loss else None}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _trace_line(n: int, total: int, snap: dict[str, dict[str, dict[str, Any]]]) -> str:
    parts = []
    for name, row in snap.items():
        parts.append(name + " " + " ".join(f"{k}={_fmt(v['auc'])}" for k, v in row.items()))
    return f"{n:>9,}/{total:,} rows  AUC  " + "  |  ".join(parts) + "\n"


def render(result: EvalResult) -> str:
    """The result as a text table."""
    lines = [f"{result.rows:,} rows, {result.customers:,} customers, {result.points:,} "
             f"prediction points, {result.seconds:.1f} s"
             + (f", {len(result.skipped)} rows skipped" if result.skipped else "")]
    for name, row in result.models.items():
        lines.append("")
        lines.append(f"{name}: progressive validation (scores given before each label was known)")
        lines.append(f"  {'model':<10} {'labels':>9} {'positives':>10} {'ROC AUC':>8} {'log loss':>9}")
        for kind, s in row.items():
            lines.append(f"  {kind:<10} {s['labels']:>9,} {s['positives']:>10,} "
                         f"{_fmt(s['auc']):>8} {_fmt(s['log_loss']):>9}")
    lines.append("")
    lines.append("baseline: days since the last purchase (AUC only: it is a rank, not a probability)")
    return "\n".join(lines)


def run(path: str, cfg: ModelConfig, out: TextIO, err: TextIO, as_json: bool = False) -> int:
    """The command: read, evaluate, print; exit status."""
    import orjson  # noqa: PLC0415

    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows, errors = read_log(f, path)
    except (OSError, LogError) as exc:
        err.write(f"engage eval-churn: {exc}\n")
        return 1
    for e in errors[:20]:
        err.write(e + "\n")
    if len(errors) > 20:
        err.write(f"... and {len(errors) - 20} more rows that could not be read\n")
    if not rows:
        err.write(f"engage eval-churn: {path}: no usable rows\n")
        return 1
    result = evaluate(rows, cfg, errors, None if as_json else err,
                      report_every=max(len(rows) // 10, 1))
    if as_json:
        out.write(orjson.dumps({"rows": result.rows, "skipped": len(result.skipped),
                                "customers": result.customers, "points": result.points,
                                "seconds": round(result.seconds, 2), "models": result.models,
                                "trace": result.trace}).decode() + "\n")
    else:
        out.write(render(result) + "\n")
    return 0


def config_for(kinds: str, horizon: int | None = None, sample_every: int | None = None,
               base: ModelConfig | None = None) -> ModelConfig:
    """The models to compare, from ``--models logreg,tree``: the first one is shown."""
    names = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in names if k not in KINDS]
    if not names or unknown:
        raise ValueError(f"--models: unknown kind(s) {', '.join(unknown) or '(none)'}; "
                         f"known: {', '.join(KINDS)}")
    cfg = replace(base or ModelConfig(), kind=names[0], challengers=tuple(names[1:]))
    if horizon is not None:
        cfg = replace(cfg, churn_horizon_ms=horizon)
    if sample_every is not None:
        cfg = replace(cfg, sample_every_ms=sample_every)
    return cfg


if __name__ == "__main__":   # pragma: no cover - use `engage eval-churn`
    sys.exit(run(sys.argv[1], config_for("logreg,tree"), sys.stdout, sys.stderr))
