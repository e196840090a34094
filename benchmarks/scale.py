"""``engage bench --scale``: the engine's throughput by number of workers and processes.

Each shape (``WxP``: W workers in each of P processes) runs the production
command, ``engage run --stop-at-end``, as its own process (with
``--processes``, a local cluster), with recovery on as in production and the
spine's rule, over the same records of one topic, Redis emptied in between.
Two rates per shape: over the whole run (process start-up included) and
from the first record read to the end (polled from the members' /metrics),
which is what more workers can speed up.

Workers are Python threads sharing one interpreter lock, so within a
process they overlap only while one waits (Kafka, Redis, Bytewax's Rust
side); processes run Python in parallel, up to the machine's cores, which
the broker and Redis share here.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Sequence


from engage.benchmarks.bench import SPINE_RULES
from engage.config import Settings
from engage.connectors.redis_store import connect
from engage.connectors.devstack import DevStack, free_port
from engage.connectors.kafka import EVENTS_TOPIC, produce_all
from engage.simulator.storefront import Storefront


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"1x1,2x1,2x2"`` as ``[(1, 1), (2, 1), (2, 2)]`` (workers per process, processes).

    >>> parse_shapes("1x1, 4x2")
    [(1, 1), (4, 2)]
    """
    shapes = []
    for part in text.split(","):
        workers, _, processes = part.strip().lower().partition("x")
        try:
            shape = (int(workers), int(processes or 1))
        except ValueError:
            raise ValueError(f"--scale: {part.strip()!r} is not WORKERSxPROCESSES") from None
        if min(shape) < 1:
            raise ValueError(f"--scale: {part.strip()!r} needs at least one worker and process")
        shapes.append(shape)
    return shapes


def _ports(count: int) -> int:
    """A first port such that it and the ``count - 1`` after it are free (metrics of each member)."""
    while True:
        first = free_port()
        try:
            for port in range(first + 1, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


def _records_read(ports: Sequence[int]) -> float:
    total = 0.0
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith("engage_records_read_total "):
                        total += float(line.split()[1])
        except (urllib.error.URLError, OSError):
            continue
    return total


def run_shape(settings: Settings, workers: int, processes: int, n: int) -> tuple[float, float]:
    """Events/s of ``engage run --stop-at-end`` in this shape: overall, and from the first record."""
    port = _ports(processes)
    ports = [port + i for i in range(processes)]
    env = {**os.environ, "ENGAGE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
           "ENGAGE_REDIS_URL": settings.redis_url or "", "ENGAGE_RULES": SPINE_RULES}
    with tempfile.TemporaryDirectory(prefix="engage-scale-recovery-") as recovery:
        argv = [sys.executable, "-m", "engage.cli", "run", "--stop-at-end",
                "--recovery-dir", recovery, "--metrics-port", str(port),
                "--workers", str(workers), "--processes", str(processes)]
        started = time.perf_counter()
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
            first = None
            while proc.poll() is None:
                if first is None and _records_read(ports) > 0:
                    first = time.perf_counter()
                time.sleep(0.05)
            ended = time.perf_counter()
            if proc.returncode != 0:
                log.seek(0)
                raise RuntimeError(f"{workers}x{processes} failed:\n"
                                   + log.read().decode(errors="replace")[-3000:])
    # A run too short to be seen reading counts from its start.
    return n / (ended - started), n / (ended - (first or started))


def main(shapes: Sequence[tuple[int, int]], events: int = 300_000, customers: int = 20_000,
         write: str | None = None, repeat: int = 1, sessions: int = 1000,
         use_configured: bool = False) -> int:
    """Measure each shape on the same records; print (and optionally append) the table.

    On an embedded stack unless ``use_configured`` (see :func:`engage.benchmarks.bench.main`).
    """
    settings = Settings.load({"recovery_dir": "", "metrics_port": 0})
    # Enough input partitions that no worker of the largest shape sits idle.
    partitions = max(settings.event_partitions, max(w * p for w, p in shapes))
    stack = None
    if not (use_configured and settings.kafka_bootstrap and settings.redis_url):
        stack = DevStack(event_partitions=partitions)
        stack.start()
        settings = Settings.load({"kafka_bootstrap": stack.bootstrap,
                                  "redis_url": stack.redis_url, "recovery_dir": "",
                                  "metrics_port": 0})
    rows: dict[tuple[int, int], tuple[float, float]] = {}
    try:
        print(f"producing {events} events for {customers} customers ...", flush=True)
        shop = Storefront(seed=42, customers=customers, mean_gap_ms=300, sessions=sessions,
                          start_ms=int(time.time() * 1000) - events * 300 - 86_400_000)
        produce_all(settings.kafka_bootstrap or "", EVENTS_TOPIC, shop.events(events))
        client = connect(settings.redis_url or "")   # a cluster URL too
        for _ in range(repeat):
            for workers, processes in shapes:
                client.flushdb()
                total, steady = run_shape(settings, workers, processes, events)
                best = rows.get((workers, processes), (0.0, 0.0))
                rows[(workers, processes)] = (max(best[0], total), max(best[1], steady))
                print(f"{workers}x{processes}: {total:,.0f} events/s overall, "
                      f"{steady:,.0f} from the first record", flush=True)
    finally:
        if stack is not None:
            stack.stop()
    table = render(rows, events, customers, partitions)
    print(table)
    if write:
        with open(write, "a", encoding="utf-8") as fh:
            fh.write(table + "\n")
    return 0


def render(rows: dict[tuple[int, int], tuple[float, float]], events: int, customers: int,
           partitions: int) -> str:
    """The result as a markdown section."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    base = rows.get((1, 1), next(iter(rows.values())))[1]
    lines = [
        f"### {stamp} — scale-out: {events:,} events, {customers:,} customers, "
        f"{partitions} input partitions",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, embedded broker and redis-server on the same machine. "
        "`engage run --stop-at-end` with recovery on and the spine's rule, one run per shape.",
        "",
        "| workers × processes | total workers | events/s (whole run) | "
        "events/s (from the first record) | vs 1 worker | per worker |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (workers, processes), (total, steady) in rows.items():
        count = workers * processes
        lines.append(f"| {workers} × {processes} | {count} | {total:,.0f} | {steady:,.0f} | "
                     f"{steady / base:.2f}× | {steady / count:,.0f} |")
    lines.append("")
    return "\n".join(lines)

