"""Prediction points, scores, and labels that arrive only once their horizon has passed.

One :class:`ModelKeeper` per customer shard (and one in ``engage eval-churn``)
owns the two models and decides, customer by customer, in event time:

- **When to score** (a *prediction point*): at an order or refund, at the
  first event a day or more after the last prediction point, and at a tick every
  ``sample_every`` while the customer has been silent for less than the
  churn horizon. Not on every click: between those moments nothing the
  models read moves much, and a score costs two river predictions.
- **What to learn from**: at most one point per customer per
  ``sample_every`` becomes a pending example (its features and the scores
  given), kept in the customer's own state, so it is snapshotted, merged,
  expired and erased with the customer. That bounds pending examples to
  ``horizon / sample_every + 1`` per customer.
- **When a label is known**: never before its horizon has passed in event
  time. Each in-order event of the customer marks the pending examples whose
  horizon it falls in ("came back": any event in ``(t, t + horizon]``;
  "bought again": an order in ``(t, t + 30d]``); late events never reach the
  keeper. The customer's model timer fires at ``t + horizon`` and learns the
  label so recorded, which no event after the horizon can have touched.
  The score given at ``t`` is validated against the label first
  (progressive validation), then the model learns.

Nothing here reads the wall clock: a replay of a year gives the same scores,
the same labels and the same models as living through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engage.events import Event
from engage.models.features import DAY_MS, as_dict, features
from engage.models.online import DEFAULT_KIND, ModelSpec, OnlineModel
from engage.state.customer import CustomerState, StateConfig

CHURN = "churn_risk"
REPURCHASE = "repurchase_30d"
MODEL_NAMES = (CHURN, REPURCHASE)
#: Event types that are a prediction point whenever they happen.
_ALWAYS = frozenset({"order_paid", "order_refunded"})
# Feature positions read for the recency baseline (days since the last order).
_DAYS_SINCE_ORDER = 1


@dataclass(frozen=True)
class ModelConfig:
    """The models' settings (``ENGAGE_MODEL_*``, ``ENGAGE_CHURN_HORIZON``)."""

    kind: str = DEFAULT_KIND
    #: Other kinds scored and validated at the same points, never shown
    #: (champion/challenger; ``engage eval-churn`` compares this way).
    challengers: tuple[str, ...] = ()
    churn_horizon_ms: int = 90 * DAY_MS
    repurchase_horizon_ms: int = 30 * DAY_MS
    # Two weeks: weekly ticks and examples cost 1.6x as much on a sparse
    # year-long workload for half a point of AUC (benchmarks/RESULTS.md).
    sample_every_ms: int = 14 * DAY_MS
    rfm_window: str = "365d"
    #: Labels a model learns before its scores reach the profile: an untrained
    #: model scores everyone alike (0.5), which tags and rules would read as a
    #: prediction ("likely to buy again", for every new customer).
    warmup: int = 100

    def specs(self) -> dict[str, list[ModelSpec]]:
        """Per target, the model whose scores are shown, then its challengers."""
        kinds = (self.kind, *[k for k in self.challengers if k != self.kind])
        return {CHURN: [ModelSpec(CHURN, k, self.churn_horizon_ms, self.rfm_window) for k in kinds],
                REPURCHASE: [ModelSpec(REPURCHASE, k, self.repurchase_horizon_ms, self.rfm_window)
                             for k in kinds]}


def baseline(name: str, x: list[float]) -> float:
    """The recency baseline as a score in [0, 1): days since the last purchase,
    rising for churn, falling for repurchase (AUC only depends on the order)."""
    days = x[_DAYS_SINCE_ORDER]
    s = days / (days + 30.0)
    return s if name == CHURN else 1.0 - s


class ModelKeeper:
    """Scores customers at prediction points and learns once labels are known.

    The customer's bookkeeping lives in ``state.derived["ml"]`` (kept out of
    the Redis document): ``at`` the last prediction point, ``s`` the last
    sampled one, ``p`` the pending examples ``[t, features, churn score,
    repurchase score, repurchase labelled]``, ``due`` the model timer armed.
    """

    def __init__(self, cfg: ModelConfig, state_cfg: StateConfig) -> None:
        self.cfg = cfg
        self.state_cfg = state_cfg
        #: Per target, the shown model first, then the challengers.
        self.models: dict[str, list[OnlineModel]] = {
            n: [OnlineModel(s) for s in specs] for n, specs in cfg.specs().items()}
        self.points = 0

    # ------------------------------------------------------------------ moments
    def on_event(self, state: CustomerState, e: Event) -> tuple[bool, int | None]:
        """After ``e`` was applied to ``state``: score if it is a prediction point.

        Returns whether the scores changed, and a time to arm the customer's
        model timer at (None: the one armed still holds).
        """
        ml = state.derived.get("ml")
        if ml is None:
            ml = state.derived["ml"] = {"p": []}
        else:
            self._outcomes(ml, e)
        if e.ts > ml.get("seen", e.ts - 1):
            ml["seen"] = e.ts
            if e.type not in _ALWAYS and e.ts - ml.get("at", e.ts - DAY_MS) < DAY_MS:
                return False, None
        changed = self._point(state, ml, e.ts)
        return changed, self._arm(ml, e.ts)

    def _outcomes(self, ml: dict[str, Any], e: Event) -> None:
        """Note on each pending example what ``e`` tells about its future.

        Only events in event-time order come here (late ones never do), so an
        example's label depends on the events inside its horizon and nothing
        else, however late events, batches and partitions interleaved.
        """
        churn_h, rep_h = self.cfg.churn_horizon_ms, self.cfg.repurchase_horizon_ms
        for entry in ml["p"]:
            t = entry[0]
            if t < e.ts <= t + churn_h:
                entry[5] = 1   # came back: any event of the customer
                if e.type == "order_paid" and e.ts <= t + rep_h:
                    entry[6] = 1   # bought again

    def on_timer(self, state: CustomerState, due: int) -> tuple[bool, int | None]:
        """The customer's model timer at ``due``: learn the labels now known, score
        if a tick is due; returns as :meth:`on_event` does."""
        ml = state.derived.get("ml")
        if ml is None or ml.get("due") != due:
            return False, None   # superseded by a later arming
        del ml["due"]
        self._labels(ml, due)
        changed = False
        tick = self._next_tick(ml)
        if tick is not None and tick <= due:
            changed = self._point(state, ml, due)
        return changed, self._arm(ml, due)

    # ------------------------------------------------------------------ parts
    def _point(self, state: CustomerState, ml: dict[str, Any], t: int) -> bool:
        """Score ``state`` at ``t``; sample it as an example when one is due."""
        x = features(state, self.state_cfg, t, self.cfg.rfm_window)
        xd = as_dict(x)
        scores = state.derived.get("scores") or {}
        given: list[list[float]] = []
        changed = False
        for name in MODEL_NAMES:
            models = self.models[name]
            ps = [m.score(xd) for m in models]
            given.append(ps)
            model, p = models[0], ps[0]
            old = scores.get(name)
            if model.learned < self.cfg.warmup:
                # Still scored (the example records it, validation judges it),
                # not shown; a reset takes the shown score away again.
                if old is not None:
                    del scores[name]
                    changed = True
                continue
            shown = round(p, 3)
            if old is None or old[0] != shown or old[2] != model.version:
                changed = True
            scores[name] = [shown, t, model.version]
        if scores:
            state.derived["scores"] = scores
        else:
            state.derived.pop("scores", None)   # none shown: none stored
        self.points += 1
        ml["at"] = t
        if t - ml.get("s", t - self.cfg.sample_every_ms) >= self.cfg.sample_every_ms:
            ml["s"] = t
            # [t, features, churn scores, repurchase scores, repurchase labelled,
            #  came back, bought again, versions that gave the scores]
            ml["p"].append([t, [round(v, 4) for v in x], given[0], given[1], 0, 0, 0,
                            [self.models[n][0].version for n in MODEL_NAMES]])
        return changed

    def _labels(self, ml: dict[str, Any], now: int) -> None:
        """Learn from every pending example whose horizon has passed by ``now``; an
        example stays until both its labels are known."""
        churn_h, rep_h = self.cfg.churn_horizon_ms, self.cfg.repurchase_horizon_ms
        pending = ml["p"]
        # Oldest first: when the oldest is not due yet, nothing is (most timers are ticks).
        if not pending or pending[0][0] + min(churn_h, rep_h) > now:
            return
        keep = []
        for entry in pending:
            t, x, churn_ps, rep_ps, rep_done, came_back, bought, versions = entry
            if not rep_done and t + rep_h <= now:
                self._learn(REPURCHASE, t, x, bool(bought), rep_ps, versions[1])
                entry[4] = rep_done = 1
            if t + churn_h <= now and came_back != 2:
                # Churned: no event at all in (t, t + horizon].
                self._learn(CHURN, t, x, not came_back, churn_ps, versions[0])
                entry[5] = 2   # learnt
            if rep_done and entry[5] == 2:
                continue
            keep.append(entry)
        ml["p"] = keep

    def _learn(self, name: str, t: int, x: list[float], label: bool, scored: list[float],
               version: str) -> None:
        """Validate the scores given at ``t`` against ``label``, then learn from it.

        Scores given by another model (before a reset, or by another kind) are
        not this model's to be judged by: it learns from the label all the same.
        """
        xd = as_dict(x)
        base = baseline(name, x)
        models = self.models[name]
        if models[0].version != version:
            for model in models:
                model.learn(xd, label, None, base)
            return
        for model, p in zip(models, scored):
            model.learn(xd, label, p, base)

    def _next_tick(self, ml: dict[str, Any]) -> int | None:
        """The next time-driven prediction point, or None once the customer has been
        silent for the whole churn horizon (their label is known by then)."""
        at = ml.get("at")
        if at is None:
            return None
        tick = at + self.cfg.sample_every_ms
        # The customer's latest in-order event (late ones never reach the keeper).
        last = ml.get("seen")
        if last is None or tick - last >= self.cfg.churn_horizon_ms:
            return None
        return tick

    def _arm(self, ml: dict[str, Any], now: int) -> int | None:
        """The earliest moment this customer needs the keeper again; None when the
        timer already armed comes no later (it re-arms when it fires)."""
        candidates = []
        tick = self._next_tick(ml)
        if tick is not None:
            candidates.append(tick)
        for entry in ml["p"]:
            if entry[5] != 2:
                candidates.append(entry[0] + self.cfg.churn_horizon_ms)
            if not entry[4]:
                candidates.append(entry[0] + self.cfg.repurchase_horizon_ms)
        if not candidates:
            return None
        due = min(candidates)
        armed = ml.get("due")
        # An armed time already past was dropped (models were off for a while).
        if armed is not None and now <= armed <= due:
            return None
        ml["due"] = due
        return due

    # ------------------------------------------------------------------ ops
    def snapshot(self) -> dict[str, Any]:
        """What a restart needs (Bytewax recovery pickles it with the shard)."""
        return {"models": self.models, "points": self.points}

    def restore(self, saved: dict[str, Any]) -> None:
        """Take a snapshot's models where they are the ones configured now (same
        target, kind, horizon and features); others start afresh."""
        for name, models in self.models.items():
            old = {m.spec: m for m in saved["models"].get(name, [])}
            self.models[name] = [old.get(m.spec, m) for m in models]
        self.points = saved["points"]

    def command(self, name: str, op: str) -> bool:
        """Apply ``engage models reset|pin|unpin NAME`` (``all`` for both);
        False when ``name`` or ``op`` is unknown."""
        names = MODEL_NAMES if name == "all" else (name,) if name in self.models else ()
        if not names or op not in ("reset", "pin", "unpin"):
            return False
        for n in names:
            for model in self.models[n]:
                if op == "reset":
                    model.reset()
                else:
                    model.pinned = op == "pin"
        return True

    def summary(self) -> dict[str, Any]:
        """The shown models' summaries (see :meth:`OnlineModel.summary`), each with
        its challengers' under ``challengers``."""
        out: dict[str, Any] = {}
        for name, (shown, *others) in self.models.items():
            out[name] = shown.summary()
            out[name]["points"] = self.points
            if others:
                out[name]["challengers"] = [m.summary() for m in others]
        return out

    def versions(self) -> dict[str, str]:
        """The version of each shown model."""
        return {name: models[0].version for name, models in self.models.items()}
