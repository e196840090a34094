"""Every Prometheus metric the engine exports, in one place.

Names follow ``engage_<what>_<unit>`` with ``_total`` for counters and base
units (seconds). Labels are bounded sets (event type, reason, rule id,
channel, step, partition), never customer ids.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter as _PromCounter
from prometheus_client import Gauge, Histogram


class Counter(_PromCounter):
    """A Prometheus counter whose ``labels(...)`` finds an existing child at once.

    The library's ``labels`` checks its arguments, converts each to ``str``
    and takes a lock on every call; hot paths (a profile change, an action)
    call it once per record for a handful of children. Label values that
    are already strings find their child in the children's own dict (read
    live, so ``remove`` and ``clear`` still count); anything else, and the
    first call for a child, takes the library's path.
    """

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        """The child for these label values (see ``prometheus_client``)."""
        if labelvalues and not labelkwargs:
            children = self.__dict__.get("_metrics")
            if children is not None:
                child = children.get(labelvalues)
                if child is not None:
                    for v in labelvalues:
                        if v.__class__ is not str:
                            break
                    else:
                        return child
        return super().labels(*labelvalues, **labelkwargs)


EVENTS = Counter("engage_events_total", "Valid events taken in, by event type.", ["type"])
DEAD_LETTERS = Counter("engage_dead_letters_total",
                       "Inputs sent to the dead-letter topic, by reason code.", ["reason"])
LATE_EVENTS = Counter("engage_late_events_total",
                      "Events later than the allowed lateness: counted in lifetime totals only.")
IDENTITY_LINKS = Counter("engage_identity_links_total",
                         "Device-to-customer links, by outcome (linked, refused).", ["outcome"])
BATCH_SECONDS = Histogram("engage_batch_seconds", "Time to process one batch, by dataflow step.",
                          ["step"], buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
STATE_WRITE_SECONDS = Histogram("engage_state_write_seconds",
                                "Latency of one batched Redis state write (one round trip).",
                                buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
STATE_KEYS_WRITTEN = Counter("engage_state_keys_written_total",
                             "Redis keys set or deleted by state writes.", ["op"])
REDIS_ERRORS = Counter("engage_redis_errors_total",
                       "Redis calls of the dataflow that failed (retried or not).")
REDIS_RETRIES = Counter("engage_redis_retries_total",
                        "Redis calls tried again after a connection error or timeout, by operation "
                        "(state_write, contact_ledger).", ["op"])
ACTIONS_SENT = Counter("engage_actions_sent_total", "Actions written to engage.actions.",
                       ["rule_id", "channel"])
#: From the trigger's event time to the action written to Kafka, in the live engine only:
#: decisions wait for the watermark (the allowed lateness, 5 min by default) and quiet
#: hours, so most of this is by design; catching up on old events reads as old here.
ACTION_LATENCY = Histogram("engage_action_latency_seconds",
                           "Wall clock when an action was written to engage.actions minus "
                           "its trigger's event time.",
                           buckets=(1, 5, 15, 30, 60, 120, 240, 300, 330, 360, 420, 600, 900,
                                    1800, 3600, 7200, 21600, 86400))
ACTIONS_SUPPRESSED = Counter("engage_actions_suppressed_total",
                             "Decisions not sent, written to engage.audit, by reason.",
                             ["rule_id", "reason"])
# Attribution (engage.attribution): labels are the touch's rule, variant ("control"
# for the held-out group, "none" for a rule without variants) and channel.
_TOUCH_LABELS = ["rule_id", "variant", "channel"]
ATTRIBUTION_TOUCHES = Counter("engage_attribution_touches_total",
                              "Touches remembered for attribution: actions sent and control-"
                              "group decisions.", _TOUCH_LABELS)
CONVERSIONS = Counter("engage_conversions_total",
                      "Orders credited to a touch (last touch, or the touch whose coupon was "
                      "used); variant=\"control\" counts the control group's conversions.",
                      _TOUCH_LABELS)
REDEMPTIONS = Counter("engage_redemptions_total",
                      "Credited orders that used the coupon their touch carried.", _TOUCH_LABELS)
ATTRIBUTED_REVENUE = Counter("engage_attributed_revenue_cents_total",
                             "Revenue of credited orders, in cents of the order's currency.",
                             _TOUCH_LABELS)
REFUNDED_REVENUE = Counter("engage_refunded_revenue_cents_total",
                           "Refunds of credited orders inside their return period, in cents.",
                           _TOUCH_LABELS)
CONVERSIONS_REVERSED = Counter("engage_conversions_reversed_total",
                               "Credited conversions refunded in full.", _TOUCH_LABELS)
ATTRIBUTION_SKIPPED = Counter("engage_attribution_skipped_total",
                              "Orders attribution could not use, by reason (bad_order).",
                              ["reason"])
ATTRIBUTION_CUSTOMERS = Gauge("engage_attribution_customers",
                              "Customers with touches or credited orders held for attribution.")
CUSTOMERS_EXPIRED = Counter("engage_customers_expired_total",
                            "Customer and device states dropped after the inactivity TTL.")
CUSTOMERS_HOT = Gauge("engage_customers_hot", "Customer and device states held in memory.", ["step"])
PENDING_TIMERS = Gauge("engage_pending_timers", "Event-time timers waiting to fire.", ["step"])
WATERMARK_LAG = Gauge("engage_watermark_lag_seconds",
                      "Wall clock minus the event-time watermark (how far behind event time is).")
CONSUMER_LAG = Gauge("engage_consumer_lag_messages",
                     "Messages on the broker not yet read, per input partition.", ["partition"])
EVENTS_READ = Counter("engage_records_read_total", "Records read from the input topic.")
LEDGER_SECONDS = Histogram("engage_contact_ledger_seconds",
                           "Time of one contact-ledger check (caps, conflict groups) for a batch.")
ACTIONS_DEFERRED = Counter("engage_actions_deferred_total",
                           "Decisions held back to be sent later, by rule and reason "
                           "(quiet_hours, arbitration).", ["rule_id", "reason"])
RULE_EVAL_ERRORS = Counter("engage_rule_eval_errors_total",
                           "Conditions that could not be decided (missing value, type clash); "
                           "the rule did not fire.", ["rule_id"])
RULE_RELOADS = Counter("engage_rule_reloads_total",
                       "Rule file reloads, by outcome (ok, refused).", ["outcome"])
RULES_LOADED = Gauge("engage_rules_loaded", "Rules currently in force.")
ERASURES = Counter("engage_erasures_total",
                   "Erasure requests (engage forget) carried out, by step.", ["step"])
PROFILE_CHANGES = Counter("engage_profile_changes_total",
                          "Profile changes published (stage, tier, segment, tags), by kind.",
                          ["kind"])

# The churn and repurchase models (engage.models): gauges over every customer
# shard of this process; label ``model`` is churn_risk or repurchase_30d.
MODEL_AUC = Gauge("engage_model_auc",
                  "Progressive ROC AUC of the model's scores, each given before its label was known.",
                  ["model"])
MODEL_LOG_LOSS = Gauge("engage_model_log_loss", "Progressive mean log loss of the model's scores.",
                       ["model"])
MODEL_BASELINE_AUC = Gauge("engage_model_baseline_auc",
                           "Progressive ROC AUC of the recency baseline (days since the last "
                           "purchase) on the same labels.", ["model"])
MODEL_LABELS = Gauge("engage_model_labels", "Labels that have come due (their horizon passed).",
                     ["model"])
MODEL_LEARNED = Gauge("engage_model_learned", "Labels the model learnt from (not while pinned).",
                      ["model"])
MODEL_PINNED = Gauge("engage_model_pinned", "1 while the model is pinned (scores, learns nothing).",
                     ["model"])
