"""Engine settings: flags, then ``ENGAGE_*`` environment variables, then defaults.

Configuration is data: every value is parsed and checked here, once, so a
bad setting fails at start-up with its name, never mid-stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from engage.state.customer import StateConfig
from engage.state.profile import ProfileConfig
from engage.state.windows import parse_duration



@dataclass(frozen=True)
class Settings:
    """Everything a run of the engine needs to know.

    >>> Settings.load({}, {}).lateness
    '5m'
    """

    kafka_bootstrap: str | None = None
    redis_url: str | None = None
    metrics_port: int = 9108
    #: librdkafka settings passed through as they are (SASL, SSL, tuning).
    kafka_config: dict[str, str] = field(default_factory=dict)

    workers: int = 1
    #: Processes of a Bytewax cluster. Without ``addresses``, ``engage run``
    #: starts this many local processes itself (see engage.cluster); with
    #: them, this process is ``process_id`` among ``addresses``.
    processes: int = 1
    process_id: int | None = None
    addresses: tuple[str, ...] = ()
    #: The deployment's lineage id (stamped in every state document); every
    #: process of one deployment must agree on it. Normally kept in the
    #: recovery directory; set it (the same on every process, new for each new
    #: deployment) when processes do not share one.
    lineage: str | None = None
    recovery_dir: str | None = None
    snapshot_interval: str = "5s"
    batch_size: int = 8000
    state_flush_interval: str = "0s"

    identity_shards: int = 16
    customer_shards: int = 32
    lateness: str = "5m"
    max_future_skew: str = "5m"
    idle_partition_after: str = "30s"
    count_windows: tuple[str, ...] = ("1h", "24h", "7d", "30d")
    spend_windows: tuple[str, ...] = ("30d", "365d")
    cart_abandon_after: str = "24h"
    inactive_ttl: str = "400d"
    max_links_per_device: int = 3
    #: How state documents are stored in Redis: "zstd" (compressed with the
    #: shipped dictionary, ~5x smaller) or "json" (readable with redis-cli).
    #: Either is read back whatever this says.
    state_codec: str = "zstd"
    event_partitions: int = 3
    #: Rule files or directories, separated by ',' (env ENGAGE_RULES); the
    #: shipped catalog when unset.
    rules: str | None = None
    #: How often rule files are checked for changes while running ("0s": never).
    rules_reload_interval: str = "5s"
    #: Lifecycle stages: a first order stays "new" this long; no visit this
    #: long makes a customer "declining", then "lost".
    new_for: str = "30d"
    declining_after: str = "30d"
    lost_after: str = "90d"
    #: Member tiers, lowest first, as name:min_spend:min_orders in the 365-day window.
    tiers: tuple[str, ...] = ("regular:0:0", "silver:1000:2", "gold:5000:4")
    #: RFM score thresholds: R scores 5..2 up to these days since the last
    #: order; F and M score 2..5 from these orders / spend in 365 days on.
    rfm_recency_days: tuple[str, ...] = ("30", "90", "180", "365")
    rfm_frequency: tuple[str, ...] = ("2", "3", "4", "6")
    rfm_monetary: tuple[str, ...] = ("200", "500", "1000", "3000")
    #: "thresholds" (the three above) or "population" (quintiles among live customers).
    rfm_scoring: str = "thresholds"
    #: The churn and repurchase models (engage.models): on or off, the
    #: classifier, the churn horizon (no purchase and no visit this long), and
    #: how often a customer may become an example and is scored while quiet.
    models: bool = True
    model_kind: str = "logreg"
    churn_horizon: str = "90d"
    model_sample_every: str = "14d"
    #: Labels each model replica learns before its scores are shown (profile, tags, rules).
    model_warmup: int = 100
    #: Rebuild state from history without deciding anything: no rule runs,
    #: no action or audit record is written (e.g. a first run over old events).
    backfill: bool = False

    @staticmethod
    def load(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> "Settings":
        """Merge flags over environment over defaults, and validate the result."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        env_names = {"kafka_bootstrap": "ENGAGE_KAFKA_BOOTSTRAP",
                     "redis_url": "ENGAGE_REDIS_URL",
                     "metrics_port": "ENGAGE_METRICS_PORT",
                     "recovery_dir": "ENGAGE_RECOVERY_DIR"}
        for f in fields(Settings):
            name = env_names.get(f.name, "ENGAGE_" + f.name.upper())
            if name in env and env[name] != "":
                values[f.name] = env[name]
        for key, value in flags.items():
            if value is not None and key in {f.name for f in fields(Settings)}:
                values[key] = value
        if isinstance(values.get("kafka_config"), str):
            values["kafka_config"] = parse_kafka_config(values["kafka_config"])
        for name in ("count_windows", "spend_windows", "addresses", "tiers", "rfm_recency_days",
                     "rfm_frequency", "rfm_monetary"):
            if isinstance(values.get(name), str):
                values[name] = tuple(v.strip() for v in values[name].replace(";", ",").split(",")
                                     if v.strip())
        settings = Settings()
        typed: dict[str, Any] = {}
        for f in fields(Settings):
            if f.name not in values:
                continue
            default = getattr(settings, f.name)
            value = values[f.name]
            if isinstance(default, int) and not isinstance(default, bool) and f.name != "process_id":
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise ValueError(f"setting {f.name}: {value!r} is not a whole number") from None
            if f.name == "process_id" and value is not None:
                value = int(value)
            if isinstance(default, bool) and isinstance(value, str):
                if value.strip().lower() not in ("1", "true", "yes", "0", "false", "no"):
                    raise ValueError(f"setting {f.name}: {value!r} is not true or false")
                value = value.strip().lower() in ("1", "true", "yes")
            typed[f.name] = value
        if typed.get("addresses") and "processes" not in typed:
            # A cluster is as large as its list of addresses.
            typed["processes"] = len(typed["addresses"])
        result = replace(settings, **typed)
        result.validate()
        return result

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        for name in ("snapshot_interval", "state_flush_interval", "lateness", "max_future_skew", "idle_partition_after",
                     "cart_abandon_after", "inactive_ttl", "rules_reload_interval", "new_for",
                     "declining_after", "lost_after", "churn_horizon", "model_sample_every"):
            try:
                parse_duration(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"setting {name}: {exc}") from None
        if self.ms("inactive_ttl") < 1000:
            raise ValueError("setting inactive_ttl: must be at least 1s (it is also the Redis TTL)")
        for name in ("workers", "processes", "batch_size", "identity_shards", "customer_shards",
                     "max_links_per_device", "event_partitions"):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name}: must be at least 1")
        if self.addresses:
            if self.process_id is None:
                raise ValueError("setting process_id: required with addresses "
                                 "(this process's index among them, from 0)")
            if not 0 <= self.process_id < len(self.addresses):
                raise ValueError(f"setting process_id: {self.process_id} is not an index of "
                                 f"the {len(self.addresses)} addresses")
            if self.processes != len(self.addresses):
                raise ValueError(f"setting processes: {self.processes} processes but "
                                 f"{len(self.addresses)} addresses")
        try:
            state = self.state_config()
        except ValueError as exc:
            raise ValueError(f"setting count_windows/spend_windows: {exc}") from None
        try:
            profile = self.profile_config()
        except ValueError as exc:
            # RFM messages name their setting; the others are about tiers.
            text = str(exc) if str(exc).startswith("rfm_") else f"tiers: {exc}"
            raise ValueError(f"setting {text}") from None
        if profile.rfm_window not in {w.name for w in state.spend.windows}:
            raise ValueError(f"setting spend_windows: must include {profile.rfm_window!r} "
                             "(RFM and tiers are computed over it)")
        from engage.models.online import KINDS  # noqa: PLC0415 - river loads lazily

        if self.model_kind not in KINDS:
            raise ValueError(f"setting model_kind: {self.model_kind!r} is not one of "
                             f"{', '.join(KINDS)}")
        if self.model_warmup < 0:
            raise ValueError(f"setting model_warmup: must be 0 or more labels, got "
                             f"{self.model_warmup}")
        if self.ms("model_sample_every") < 3_600_000:
            raise ValueError("setting model_sample_every: must be at least 1h "
                             "(it bounds the examples kept per customer)")
        if self.ms("churn_horizon") < max(self.ms("model_sample_every"), 30 * 86_400_000):
            raise ValueError("setting churn_horizon: must be at least 30d (the repurchase "
                             "horizon) and at least model_sample_every")
        if self.models and self.ms("inactive_ttl") < 2 * self.ms("churn_horizon") \
                + self.ms("lateness"):
            # A quiet customer's last example comes due up to two horizons after
            # their last event; expired first, the churned would go unlearnt.
            raise ValueError("setting inactive_ttl: must be at least twice churn_horizon "
                             "plus lateness while the models are on")
        from engage.state.codec import CODECS  # noqa: PLC0415

        if self.state_codec not in CODECS:
            raise ValueError(f"setting state_codec: {self.state_codec!r} is not one of "
                             f"{', '.join(CODECS)}")
        if self.ms("lost_after") <= self.ms("declining_after"):
            raise ValueError("setting lost_after: must be longer than declining_after")

    def profile_config(self) -> ProfileConfig:
        """Lifecycle, RFM and tier thresholds."""
        return ProfileConfig.from_settings(self.new_for, self.declining_after, self.lost_after,
                                           list(self.tiers), list(self.rfm_recency_days),
                                           list(self.rfm_frequency), list(self.rfm_monetary),
                                           self.rfm_scoring)

    def model_config(self) -> Any:
        """The models' configuration (a ModelConfig), or None when they are off."""
        if not self.models:
            return None
        from engage.models.keeper import ModelConfig  # noqa: PLC0415

        return ModelConfig(kind=self.model_kind, churn_horizon_ms=self.ms("churn_horizon"),
                           sample_every_ms=self.ms("model_sample_every"),
                           warmup=self.model_warmup,
                           rfm_window=self.profile_config().rfm_window)

    def state_config(self) -> StateConfig:
        """The per-customer state layout these settings ask for."""
        return StateConfig.from_settings(list(self.count_windows), list(self.spend_windows),
                                         self.cart_abandon_after, self.inactive_ttl)

    def ms(self, name: str) -> int:
        """A duration setting in milliseconds."""
        return parse_duration(getattr(self, name))

    def redacted(self) -> dict[str, Any]:
        """Settings safe to log: secrets in URLs and Kafka config are masked.

        >>> s = Settings.load({"redis_url": "rediss://app:pw@r:6380/0",
        ...                    "kafka_config": "sasl.username=u,sasl.password=pw"}, {})
        >>> s.redacted()["redis_url"], s.redacted()["kafka_config"]
        ('rediss://app:***@r:6380/0', {'sasl.username': 'u', 'sasl.password': '***'})
        """
        out = {f.name: getattr(self, f.name) for f in fields(Settings)}
        if self.redis_url:
            out["redis_url"] = redact_url(self.redis_url)
        out["kafka_config"] = {k: ("***" if is_secret_key(k) else v)
                               for k, v in self.kafka_config.items()}
        return out

    def __repr__(self) -> str:
        # The dataclass's own repr would print passwords wherever a Settings
        # is logged, formatted into an error or shown in a traceback.
        shown = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Settings({shown})"

    __str__ = __repr__


#: Parts of librdkafka property names whose values are secrets (sasl.password,
#: ssl.key.password, ssl.keystore.password, ssl.key.pem, sasl.oauthbearer.client.secret,
#: sasl.oauthbearer.config, sasl.jaas.config...).
SECRET_KEY_PARTS = ("password", "secret", "key", "jaas", "oauthbearer.config", "token",
                    "credential")


def is_secret_key(name: str) -> bool:
    """Whether a Kafka client setting's value must never be shown.

    >>> is_secret_key("sasl.password"), is_secret_key("security.protocol")
    (True, False)
    """
    lowered = name.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def redact_url(url: str) -> str:
    """A Redis URL with its password (user info or ``?password=``) masked.

    >>> redact_url("redis://:s3cret@cache:6379/0")
    'redis://:***@cache:6379/0'
    >>> redact_url("rediss://default:p@ss@cache:6380/1?password=x&ssl_cert_reqs=required")
    'rediss://default:***@cache:6380/1?password=***&ssl_cert_reqs=required'
    >>> redact_url("redis://cache:6379/0")
    'redis://cache:6379/0'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url or "password" in url.lower() else url
    head, question, query = rest.partition("?")
    if "@" in query and "@" not in head:
        return f"{scheme}://***"      # a password holding an unencoded '?': mask it all
    if "@" in head:
        # The host follows the last '@': an unencoded password may hold '@' or '/'.
        userinfo, host = head.rsplit("@", 1)
        # Without a ':', redis-py reads the lone user info as the password.
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        head = f"{user}:***@{host}"
    if question:
        query = "&".join(("password=***" if part.lower().startswith("password=") else part)
                         for part in query.split("&"))
    return f"{scheme}://{head}{question}{query}"


def parse_kafka_config(text: str) -> dict[str, str]:
    """``"security.protocol=SASL_SSL,sasl.mechanism=PLAIN"`` as a dict."""
    out: dict[str, str] = {}
    parts = text.split(",")
    for i, part in enumerate(parts, 1):
        if not part.strip():
            continue
        if "=" not in part:
            # Never echo the item: it may be the tail of a password that held a ','.
            raise ValueError(f"setting kafka_config: item {i} of {len(parts)} is not key=value "
                             "(values cannot contain ',')")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out
