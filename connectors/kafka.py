"""Kafka at the edges: the event source, one producer sink for every output topic.

The source assigns partitions directly (no consumer group): Bytewax owns the
offsets and stores them in its recovery snapshots, which is what makes a
restart resume exactly where the last consistent snapshot was taken.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from engage.monitoring import metrics
from engage.operators.records import Emit, RawRecord

log = logging.getLogger(__name__)


EVENTS_TOPIC = "engage.events"
ACTIONS_TOPIC = "engage.actions"
DLQ_TOPIC = "engage.dlq"
AUDIT_TOPIC = "engage.audit"
PROFILE_TOPIC = "engage.profile_changes"
#: Requests to the running engine (``engage forget``); internal, not part of the contract.
CONTROL_TOPIC = "engage.control"
#: Conversion records of the attribution step (engage.operators.attribution).
CONVERSIONS_TOPIC = "engage.conversions"
ALL_TOPICS = (EVENTS_TOPIC, ACTIONS_TOPIC, DLQ_TOPIC, AUDIT_TOPIC, PROFILE_TOPIC, CONTROL_TOPIC,
              CONVERSIONS_TOPIC)

#: How long a partition with nothing buffered waits before it is polled again.
IDLE_POLL = timedelta(milliseconds=5)

#: Set on SIGINT/SIGTERM: every partition stops reading, the dataflow drains
#: what it holds, writes it out, and the run ends without a traceback.
STOP_READING = threading.Event()


def client_config(bootstrap: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Base librdkafka settings plus pass-through ones (security, tuning)."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap}
    conf.update(extra or {})
    return conf


def ensure_topics(bootstrap: str, partitions: dict[str, int],
                  extra: dict[str, str] | None = None, timeout: float = 15.0) -> None:
    """Create the topics that do not exist yet; leave existing ones alone."""
    admin = AdminClient(client_config(bootstrap, extra))
    existing = admin.list_topics(timeout=timeout).topics
    wanted = [NewTopic(name, num_partitions=n, replication_factor=1)
              for name, n in partitions.items() if name not in existing]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - raced with another creator is fine
            if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"could not create Kafka topic {name!r}: {exc}") from exc


def partition_end(conf: dict[str, Any], topic: str, partition: int, timeout: float = 10.0) -> int:
    """The offset after the last record of a partition, read from the fetch itself.

    ListOffsets would do on Apache Kafka, but the embedded broker answers it
    with the base offset of the last record batch, which would make a new
    deployment read that batch again. Fetching from there to the
    end-of-partition event gives the true end on both.
    """
    probe = Consumer({**conf, "enable.partition.eof": True, "enable.auto.commit": False})
    try:
        _, reported = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        probe.assign([TopicPartition(topic, partition, reported)])
        end = reported
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in probe.consume(10_000, 0.2):
                err = m.error()
                if err is None:
                    end = (m.offset() or 0) + 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    return max(end, m.offset() or 0)
        raise TimeoutError(f"{topic}[{partition}]: no end-of-partition within {timeout}s")
    finally:
        probe.close()


class _EventPartition(StatefulSourcePartition[RawRecord, int]):
    """Reads one partition; its snapshot is the next offset to read."""

    LAG_EVERY_S = 5.0

    def __init__(self, conf: dict[str, Any], topic: str, partition: int,
                 resume_offset: int | None, batch_size: int, stop_at_end: bool,
                 start_offset: int = OFFSET_BEGINNING) -> None:
        #: Set when the client lost the broker: the position is checked once it is back.
        self.reconnected = False
        self.check_after = 0.0
        self.conf = conf
        self.consumer = Consumer({**conf, "error_cb": self._on_client_error})
        self.topic = topic
        self.partition = partition
        self.batch_size = batch_size
        self.next_offset = start_offset if resume_offset is None else resume_offset
        if self.next_offset == OFFSET_END:
            # A concrete offset, so a snapshot taken before the first record
            # still resumes here rather than at a later "end".
            self.next_offset = partition_end(conf, topic, partition)
        self.consumer.assign([TopicPartition(topic, partition, self.next_offset)])
        self.end: int | None = None
        self.at_end = False
        self.awake: datetime | None = None
        if stop_at_end:
            _, self.end = self.consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10.0)
        self.lag_checked = 0.0
        self.label = str(partition)

    def next_batch(self) -> list[RawRecord]:
        if STOP_READING.is_set() or self.at_end:
            raise StopIteration()
        if self.reconnected:
            self._check_position()
        # Never block the worker: it serves every partition and every step.
        # With nothing buffered, ask Bytewax to come back shortly instead.
        msgs = self.consumer.consume(self.batch_size, 0)
        self.awake = None if msgs else datetime.now(timezone.utc) + IDLE_POLL
        batch: list[RawRecord] = []
        append = batch.append
        last = -1
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    # Only bounded runs ask for EOF events. We stop on the
                    # fetch's end-of-partition rather than on the offset
                    # ListOffsets gave at start: the embedded broker reports
                    # the last batch's base offset there, not the end.
                    if self.end is not None and (m.offset() or 0) >= self.end:
                        self.at_end = True
                    continue
                raise RuntimeError(f"error reading {self.topic}[{self.partition}]: {err}")
            last = m.offset() or 0
            append((self.partition, last, m.key(), m.value()))
        if batch:
            self.next_offset = last + 1
            metrics.EVENTS_READ.inc(len(batch))
        self._report_lag()
        return batch

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self.lag_checked < self.LAG_EVERY_S:
            return
        self.lag_checked = now
        try:
            _, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, self.partition), timeout=1.0)
        except Exception:  # noqa: BLE001 - a missed lag sample is not an error
            return
        pos = self.next_offset if self.next_offset >= 0 else 0
        metrics.CONSUMER_LAG.labels(self.label).set(max(0, high - pos))

    def _on_client_error(self, err: KafkaError) -> None:
        # librdkafka reconnects by itself; all we must do is look at the
        # partition again once it has (see _check_position).
        if err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            self.reconnected = True

    def _check_position(self) -> None:
        """After the broker went away: does the partition still reach our position?

        Looked at twice a second until the broker answers for the partition,
        so a recreated topic is seen before producers can refill it past us.
        """
        now = time.monotonic()
        if now < self.check_after:
            return
        self.check_after = now + 0.5
        try:
            _, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, self.partition), timeout=1.0)
        except Exception:  # noqa: BLE001 - still away, or our metadata predates a new topic
            high = -1
        try:
            if high < self.next_offset:
                # A fresh client sees a recreated topic at once (ours learns of
                # it minutes later), and a fetch to the end-of-partition is the
                # only sure end on the embedded broker (see partition_end).
                high = partition_end(self.conf, self.topic, self.partition, timeout=2.0)
        except Exception:  # noqa: BLE001 - still away (or no topic yet): look again
            return
        self.reconnected = False
        if high < self.next_offset:
            self._restart_partition(high)

    def _restart_partition(self, high: int) -> None:
        """The partition ends before the position we reached: its log was lost.

        Offsets never go back on a broker that keeps its log. Ending before
        us means the topic was recreated (a broker that keeps data in memory
        only, like the embedded one, restarted) or truncated: what it holds
        now was never read, so it is read from its beginning. Events that
        were in the old log and not yet read are gone with it.
        """
        log.error("%s[%d] ends at offset %d, before the position %d the engine reached: the "
                  "topic was recreated or its log lost (broker restarted without its data?); "
                  "reading it again from its beginning", self.topic, self.partition, high,
                  self.next_offset)
        self.next_offset = 0
        self.consumer.assign([TopicPartition(self.topic, self.partition, OFFSET_BEGINNING)])

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> int:
        return self.next_offset

    def close(self) -> None:
        self.consumer.close()


class EventSource(FixedPartitionedSource[RawRecord, int]):
    """Every partition of the input topic, as raw records.

    ``stop_at_end`` makes the run bounded: each partition stops at the end
    offset it had when the run started (tests, benchmarks, catch-up jobs).
    ``from_end`` starts partitions without a snapshot at their end instead of
    their beginning (a new deployment that takes over existing state).
    """

    def __init__(self, bootstrap: str, topic: str = EVENTS_TOPIC, batch_size: int = 8000,
                 stop_at_end: bool = False, extra: dict[str, str] | None = None,
                 from_end: bool = False) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.batch_size = batch_size
        self.stop_at_end = stop_at_end
        self.extra = extra or {}
        self.start_offset = OFFSET_END if from_end else OFFSET_BEGINNING

    def list_parts(self) -> list[str]:
        admin = AdminClient(client_config(self.bootstrap, self.extra))
        meta = admin.list_topics(self.topic, timeout=15.0).topics.get(self.topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"input topic {self.topic!r} is not available: "
                               f"{meta.error if meta else 'missing'}")
        return [str(p) for p in sorted(meta.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _EventPartition:
        conf: dict[str, Any] = client_config(self.bootstrap, {
            "group.id": "engage-engine",  # required by librdkafka; no group is joined
            "enable.auto.commit": False,
            "enable.partition.eof": self.stop_at_end,
            # A snapshot's offset that retention has deleted is an error to
            # see, never a silent jump to the end of the partition.
            "auto.offset.reset": "error",
            # The embedded broker holds every fetch for the full wait: keep it short.
            "fetch.wait.max.ms": 20,
            **self.extra,
        })
        return _EventPartition(conf, self.topic, int(for_part), resume_state, self.batch_size,
                               self.stop_at_end, self.start_offset)


def trigger_time_s(action: bytes) -> float | None:
    """The trigger's event time (epoch seconds) of an action as written to ``engage.actions``.

    >>> trigger_time_s(b'{"trigger_ts": "2026-09-21T12:01:00.000Z"}')
    1789992060.0
    """
    try:
        text = orjson.loads(action).get("trigger_ts")
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


#: How long a batch keeps sending messages the broker refused before the engine stops.
PRODUCE_RETRY_S = 300.0
#: Refusals that sending again cannot cure: the engine stops on them at once.
PERMANENT_PRODUCE_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.INVALID_RECORD, KafkaError._INVALID_ARG,
})


class _ProducerPartition(StatelessSinkPartition[Emit]):
    def __init__(self, producer: Producer, latency_topic: str | None = None) -> None:
        self.producer = producer
        self.latency_topic = latency_topic
        self.failed: list[tuple[Any, Any]] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed.append((err, msg))

    def write_batch(self, items: list[Emit]) -> None:
        produce = self.producer.produce
        for item in items:
            while True:
                try:
                    produce(item.topic, item.value, item.key, headers=list(item.headers) or None,
                            on_delivery=self._on_delivery)
                    break
                except BufferError:
                    self.producer.poll(0.05)  # the local queue is full: let it drain
        # Flushing per batch means Bytewax only moves on once the broker has
        # the messages: nothing accepted is lost if we crash after this.
        self.producer.flush()
        if self.failed:
            self._resend_failed()
        if self.latency_topic is not None:
            self._observe_latency(items)

    def _resend_failed(self) -> None:
        """Send refused messages again until the broker takes them (or PRODUCE_RETRY_S passes).

        librdkafka retries what it knows to be transient by itself; a broker
        that restarts (and, like the embedded one, recreates its topics)
        refuses some messages outright for a moment. The batch is not done
        until every message is written, so none is lost; a message the
        broker wrote but whose answer was lost is written twice, which the
        deterministic ids of actions, audit records and profile changes let
        consumers see.
        """
        deadline = time.monotonic() + PRODUCE_RETRY_S
        delay = 0.1
        while self.failed:
            failed, self.failed = self.failed, []
            permanent = [(e, m) for e, m in failed if e.code() in PERMANENT_PRODUCE_ERRORS]
            if permanent or time.monotonic() > deadline:
                errors = [f"{m.topic()}: {e}" for e, m in (permanent or failed)[:5]]
                raise RuntimeError("Kafka refused messages: " + "; ".join(errors))
            log.warning("Kafka refused %d message(s) (%s); sending them again in %.1fs",
                        len(failed), failed[0][0], delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            for _, msg in failed:
                while True:
                    try:
                        self.producer.produce(msg.topic(), msg.value(), msg.key(),
                                              headers=msg.headers(),
                                              on_delivery=self._on_delivery)
                        break
                    except BufferError:
                        self.producer.poll(0.05)
            self.producer.flush()

    def _observe_latency(self, items: list[Emit]) -> None:
        """End-to-end latency of the actions just acknowledged by the broker."""
        now = time.time()
        for item in items:
            if item.topic != self.latency_topic or not item.value:
                continue
            trigger = trigger_time_s(item.value)
            # A trigger ahead of the wall clock (a simulated clock running fast)
            # has no latency to speak of: left out rather than counted as zero.
            if trigger is not None and trigger <= now:
                metrics.ACTION_LATENCY.observe(now - trigger)

    def close(self) -> None:
        self.producer.flush()


class KafkaTopicsSink(DynamicSink[Emit]):
    """One producer per worker that writes each :class:`Emit` to its own topic.

    ``latency_topic`` (the live engine passes ``engage.actions``) meters each
    message written there in ``engage_action_latency_seconds``; replays and
    backfills leave it unset, since their event time is not the wall clock's.
    """

    def __init__(self, bootstrap: str, extra: dict[str, str] | None = None,
                 latency_topic: str | None = None) -> None:
        self.conf = client_config(bootstrap, {"linger.ms": 5, "enable.idempotence": False,
                                              **(extra or {})})
        self.latency_topic = latency_topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition:
        return _ProducerPartition(Producer(self.conf), self.latency_topic)


def read_topic(bootstrap: str, topic: str, timeout: float = 10.0,
               extra: dict[str, str] | None = None) -> list[Any]:
    """Every message currently in ``topic`` (all partitions, from the start).

    Uses ``assign()``: joining a consumer group takes ~20 s on the embedded
    broker. Reads each partition to its end-of-partition event.
    """
    admin = AdminClient(client_config(bootstrap, extra))
    meta = admin.list_topics(topic, timeout=timeout).topics[topic]
    consumer = Consumer(client_config(bootstrap, {"group.id": "engage-reader",
                                                  "enable.auto.commit": False,
                                                  "enable.partition.eof": True,
                                                  "fetch.wait.max.ms": 20, **(extra or {})}))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    out: list[Any] = []
    pending = set(meta.partitions)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for m in consumer.consume(5000, 0.1):
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                pending.discard(m.partition())
    consumer.close()
    if pending:
        raise TimeoutError(f"reading {topic}: partitions {sorted(pending)} did not reach their end "
                           f"within {timeout}s")
    return out


def produce_all(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]],
                extra: dict[str, str] | None = None) -> int:
    """Write ``(key, value)`` records and wait until the broker has all of them."""
    producer = Producer(client_config(bootstrap, {"linger.ms": 5, **(extra or {})}))
    n = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 10000 == 0:
            producer.poll(0)
    producer.flush()
    return n
