"""The churn and repurchase models: validation, delayed labels, no future in features, quality."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from engage.eval_churn import LogError, Replay, config_for, evaluate, read_log
from engage.events import Event
from engage.models.features import DAY_MS, FEATURE_NAMES, features
from engage.models.keeper import CHURN, REPURCHASE, ModelConfig, ModelKeeper
from engage.models.online import Validation, _bin
from engage.simulator.churners import population
from engage.state.customer import CustomerState, StateConfig

CFG = StateConfig.default()
T0 = 1_767_225_600_000   # 2026-01-01


def exact_auc(pairs: list[tuple[bool, float]]) -> float | None:
    pos = [s for y, s in pairs if y]
    neg = [s for y, s in pairs if not y]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1)), max_size=60),
       st.integers(0, 60))
def test_validation_auc_is_exact_on_bins_and_merges_like_one_stream(
        pairs: list[tuple[bool, float]], cut: int) -> None:
    whole, left, right = Validation(), Validation(), Validation()
    for i, (y, p) in enumerate(pairs):
        whole.update(y, p)
        (left if i < cut else right).update(y, p)
    assert whole.auc() == exact_auc([(y, _bin(p)) for y, p in pairs])
    left.merge(right)
    assert left.auc() == whole.auc() and left.n == whole.n
    assert left.loss == pytest.approx(whole.loss)


def order(cid: str, ts: int, n: int, amount: float = 100.0) -> Event:
    return Event(f"e-{n}", "order_paid", ts, cid, None, "web", {"order_id": f"o-{n}", "amount": amount})


def view(cid: str, ts: int, n: int) -> Event:
    return Event(f"e-{n}", "product_view", ts, cid, None, "web", {"sku": "S", "category": "sofa"})


class RecordingKeeper(ModelKeeper):
    """Remembers every label learnt: whose, for which moment, when, and what."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, CFG)
        self.learnt: list[tuple[str, str, int, int, bool]] = []   # (model, customer, t, now, label)
        self.now, self.who = 0, ""

    def on_timer(self, state: CustomerState, due: int) -> tuple[bool, int | None]:
        self.now, self.who = due, state.key
        return super().on_timer(state, due)

    def _learn(self, name: str, t: int, x: list[float], label: bool, scored: list[float],
               version: str) -> None:
        self.learnt.append((name, self.who, t, self.now, label))
        super()._learn(name, t, x, label, scored, version)


def drive(keeper: ModelKeeper, events: list[Event],
          applied: list[Event] | None = None) -> dict[str, CustomerState]:
    """Events and model timers in event-time order, as a customer shard runs them
    (``applied``: the events applied so far, in order), then 400 days more."""
    replay = Replay(keeper, CFG)
    for e in sorted(events, key=lambda e: e.ts):
        if applied is not None:
            # Before the keeper sees it (feed applies it, then calls the keeper).
            replay.fire(e.ts)
            applied.append(e)
        replay.feed(e)
    replay.fire(max(e.ts for e in events) + 400 * DAY_MS)
    return replay.states


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["c-1", "c-2"]), st.integers(0, 300 * DAY_MS),
                          st.booleans()), min_size=1, max_size=40))
def test_no_label_is_learnt_before_its_horizon_and_every_label_is_what_happened(
        spec: list[tuple[str, int, bool]]) -> None:
    events = [(order if is_order else view)(cid, T0 + ts, n)
              for n, (cid, ts, is_order) in enumerate(spec)]
    cfg = ModelConfig(churn_horizon_ms=90 * DAY_MS, repurchase_horizon_ms=30 * DAY_MS,
                      sample_every_ms=7 * DAY_MS)
    keeper = RecordingKeeper(cfg)
    drive(keeper, events)
    assert keeper.learnt, "a stream that spans a horizon has labels"
    for name, cid, t, now, label in keeper.learnt:
        horizon = cfg.churn_horizon_ms if name == CHURN else cfg.repurchase_horizon_ms
        assert now >= t + horizon, f"{name} label of {t} learnt at {now}, before its horizon"
        # Brute force over the whole stream: the label is what happened in (t, t + horizon].
        mine = [e for e in events if e.user_id == cid]
        if name == CHURN:
            assert label == (not any(t < e.ts <= t + horizon for e in mine))
        else:
            assert label == any(t < e.ts <= t + horizon and e.type == "order_paid" for e in mine)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200 * DAY_MS), st.booleans()), min_size=1, max_size=30))
def test_features_at_a_prediction_point_see_nothing_after_it(spec: list[tuple[int, bool]]) -> None:
    events = [(order if is_order else view)("c-1", T0 + ts, n) for n, (ts, is_order) in enumerate(spec)]
    keeper = ModelKeeper(ModelConfig(), CFG)
    applied: list[Event] = []
    points: list[tuple[int, list[float], int]] = []
    real = keeper._point

    def spy(state: CustomerState, ml: dict[str, Any], t: int) -> bool:
        points.append((t, features(state, CFG, t), len(applied)))
        return real(state, ml, t)

    keeper._point = spy  # type: ignore[method-assign]
    drive(keeper, events, applied)
    for t, seen, n in points:
        # Only events up to t had been applied, and a state built from them
        # alone gives the same features: nothing later leaked in.
        assert all(e.ts <= t for e in applied[:n])
        assert all(e.ts >= t for e in applied[n:])
        past = CustomerState("c-1", CFG)
        for e in applied[:n]:
            past.apply(e, CFG)
        assert features(past, CFG, t) == seen


def test_pending_examples_per_customer_stay_bounded() -> None:
    cfg = ModelConfig(sample_every_ms=7 * DAY_MS, churn_horizon_ms=90 * DAY_MS)
    most = 0

    class Watching(ModelKeeper):
        def on_event(self, state: CustomerState, e: Event) -> tuple[bool, int | None]:
            nonlocal most
            result = super().on_event(state, e)
            most = max(most, len(state.derived["ml"]["p"]))
            return result

    keeper = Watching(cfg, CFG)
    # A visit every 6 hours for 200 days.
    states = drive(keeper, [view("c-1", T0 + n * DAY_MS // 4, n) for n in range(800)])
    assert most == 90 // 7 + 1   # one example a week, each kept for 90 days
    assert "ml" not in states["c-1"].to_doc(CFG).get("derived", {})   # never in Redis


def test_an_untrained_model_scores_nobody_until_its_warmup_is_learnt() -> None:
    keeper = ModelKeeper(ModelConfig(warmup=3), CFG)
    state = CustomerState("c-1", CFG)
    e = order("c-1", T0, 1)
    state.apply(e, CFG)
    changed, _ = keeper.on_event(state, e)
    # Every customer would read 0.5: no score, so no tag or rule reads one.
    assert not changed and "scores" not in state.derived
    assert len(state.derived["ml"]["p"]) == 1   # the point still became an example
    churn = keeper.models[CHURN][0]
    for label in (True, False, True):
        keeper._learn(CHURN, T0, [0.0] * 15, label, [0.5], churn.version)
    e2 = order("c-1", T0 + 2 * DAY_MS, 2)
    state.apply(e2, CFG)
    changed, _ = keeper.on_event(state, e2)
    assert changed and set(state.derived["scores"]) == {CHURN}   # repurchase: still warming
    assert keeper.command("churn_risk", "reset")
    e3 = order("c-1", T0 + 4 * DAY_MS, 3)
    state.apply(e3, CFG)
    changed, _ = keeper.on_event(state, e3)
    assert changed and "scores" not in state.derived   # a reset model warms up again


def test_scores_reach_the_profile_with_the_model_version() -> None:
    keeper = ModelKeeper(ModelConfig(warmup=0), CFG)
    state = CustomerState("c-1", CFG)
    e = order("c-1", T0, 1)
    state.apply(e, CFG)
    changed, due = keeper.on_event(state, e)
    scores = state.derived["scores"]
    assert set(scores) == {CHURN, REPURCHASE} and changed and due is not None
    value, at, version = scores[CHURN]
    assert 0 <= value <= 1 and at == T0 and version.startswith("logreg-") and version.endswith(".g0")
    assert keeper.command("churn_risk", "reset") and keeper.versions()[CHURN].endswith(".g1")
    assert keeper.command("all", "pin") and all(m[0].pinned for m in keeper.models.values())
    churn = keeper.models[CHURN][0]
    keeper._learn(CHURN, T0, [0.0] * 15, True, [0.4], churn.version)
    assert churn.validation.n == 1 and churn.learned == 0   # pinned: judged, not taught
    keeper._learn(CHURN, T0, [0.0] * 15, True, [0.4], "logreg-old.g0")
    assert churn.validation.n == 1   # another model's score is not this one's to be judged by
    assert not keeper.command("nope", "reset") and not keeper.command("all", "explode")


def test_the_model_beats_the_recency_baseline_on_a_population_with_known_churn() -> None:
    rows = population(1200, 480, seed=5)
    log = [(r.ts, n, r.customer, r.amount) for n, r in enumerate(rows)]
    result = evaluate(log, config_for("logreg"))
    churn = result.models[CHURN]
    assert churn["logreg"]["labels"] > 5000 and 0.1 < churn["logreg"]["positives"] / churn[
        "logreg"]["labels"] < 0.9
    assert churn["logreg"]["auc"] > churn["baseline"]["auc"] + 0.02, churn
    rep = result.models[REPURCHASE]
    assert rep["logreg"]["auc"] > rep["baseline"]["auc"], rep


def test_eval_churn_reads_a_log_and_names_every_bad_row() -> None:
    text = ("customer_id,date,amount,quantity\n"
            "c-1,2026-01-02,10.5,2\n"
            "c-2,2026-01-03T10:00:00Z,99,\n"
            "c-3,yesterday,5,1\n"
            ",2026-01-04,5,1\n"
            "c-4,2026-01-05,lots,1\n"
            "c-5\n")
    rows, errors = read_log(io.StringIO(text), "log.csv")
    assert [(c, v) for _, _, c, v in rows] == [("c-1", 21.0), ("c-2", 99.0)]
    assert errors == [
        "log.csv:4: date 'yesterday' is not YYYY-MM-DD or ISO 8601",
        "log.csv:5: empty customer_id",
        "log.csv:6: amount or quantity is not a number",
        "log.csv:7: 1 columns, expected 4",
    ]
    with pytest.raises(LogError, match=r"log.csv:1: missing column\(s\) amount"):
        read_log(io.StringIO("customer_id,date\n"), "log.csv")


def test_replays_give_the_same_models() -> None:
    rows = population(150, 300, seed=9)
    log = [(r.ts, n, r.customer, r.amount) for n, r in enumerate(rows)]
    a, b = evaluate(log, config_for("logreg")), evaluate(log, config_for("logreg"))
    assert a.models == b.models and a.points == b.points
    random.Random(1).shuffle(log)   # arrival order of a file does not matter: rows are sorted
    assert evaluate(sorted(log), config_for("logreg")).models == a.models


def test_a_late_event_changes_no_label() -> None:
    # Orders on days 0 and 20; then a late order for day 35 is applied to the
    # state ahead of the day-30 timer (a faster partition's late event), as a
    # shard applies late events on arrival: the day-0 example still bought again.
    keeper = RecordingKeeper(ModelConfig())
    replay = Replay(keeper, CFG)
    replay.feed(order("c-1", T0, 1))
    replay.feed(order("c-1", T0 + 20 * DAY_MS, 2))
    late = order("c-1", T0 + 35 * DAY_MS, 3)
    late.late = True
    replay.states["c-1"].apply(late, CFG)   # never reaches the keeper
    replay.fire(T0 + 31 * DAY_MS)
    assert [(m, t, label) for m, _, t, _, label in keeper.learnt] == [(REPURCHASE, T0, True)]


def test_settings_refuse_horizons_the_models_cannot_learn() -> None:
    from engage.config import Settings

    with pytest.raises(ValueError, match="churn_horizon: must be at least 30d"):
        Settings.load({"churn_horizon": "20d"}, {})
    with pytest.raises(ValueError, match="inactive_ttl: must be at least twice churn_horizon"):
        Settings.load({"inactive_ttl": "100d"}, {})
    assert Settings.load({"inactive_ttl": "100d", "models": "false"}, {}).models is False


def test_an_order_applied_early_as_late_in_its_partition_stays_out_of_earlier_features() -> None:
    # Late in its own partition, an order is applied on arrival, while another
    # partition still holds the customer shard's clock before it.
    past = CustomerState("c-1", CFG)
    for e in (order("c-1", T0, 1), view("c-1", T0 + DAY_MS, 2), order("c-1", T0 + 3 * DAY_MS, 3)):
        past.apply(e, CFG)
    ahead = CustomerState("c-1", CFG)
    for e in (order("c-1", T0, 1), view("c-1", T0 + DAY_MS, 2), order("c-1", T0 + 3 * DAY_MS, 3)):
        ahead.apply(e, CFG)
    ahead.apply(Event("e-4", "order_paid", T0 + 9 * DAY_MS, "c-1", None, "web",
                      {"order_id": "o-4", "amount": 100.0}, late=True), CFG)
    t = T0 + 5 * DAY_MS
    got = dict(zip(FEATURE_NAMES, features(ahead, CFG, t)))
    want = dict(zip(FEATURE_NAMES, features(past, CFG, t)))
    spend = "spend_lifetime"   # amounts are not kept per order: the one feature that may differ
    assert {k: v for k, v in got.items() if k != spend} == {
        k: v for k, v in want.items() if k != spend}
    assert got["days_since_last_order"] == 2.0
