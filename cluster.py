"""Several engine processes on one machine, as one Bytewax cluster.

``engage run --processes P`` without ``--addresses`` lands here: this process
becomes a supervisor that settles what the cluster's members must agree on
(the recovery directory's partitions, the deployment's lineage, the topics)
once, then starts P copies of the same command line, each with
``--process-id I --addresses ...`` on loopback ports, and waits for them.
On several machines, start one ``engage run --process-id I --addresses ...``
per machine instead (see the README's *Scale-out*).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Sequence

from engage.config import Settings
from engage.connectors.devstack import free_port

log = logging.getLogger("engage.cluster")

#: After a member failed, how long the others get to stop before they are killed.
KILL_AFTER_S = 30.0


def member_argv(argv: Sequence[str], process_id: int, addresses: Sequence[str],
                metrics_port: int) -> list[str]:
    """The command line of one member: the supervisor's own, with its place in the cluster.

    argparse keeps the last value of a repeated flag, so appending overrides
    whatever the original line said.

    >>> member_argv(["run", "--processes", "2"], 1, ["h:1", "h:2"], 9109)[-6:]
    ['--process-id', '1', '--addresses', 'h:1;h:2', '--metrics-port', '9109']
    """
    return [*argv, "--process-id", str(process_id), "--addresses", ";".join(addresses),
            "--metrics-port", str(metrics_port)]


def run_local_cluster(settings: Settings, argv: Sequence[str], from_end: bool = False) -> int:
    """Run ``settings.processes`` engine processes here until all exit; their worst exit code.

    SIGINT/SIGTERM are passed on to every member, which then stops the way a
    single engine does (drains what it holds, writes it out).
    """
    # Imported here: the runtime pulls in Bytewax and the Kafka client.
    from engage.connectors.kafka import ALL_TOPICS, EVENTS_TOPIC, ensure_topics  # noqa: PLC0415
    from engage.runtime import lineage, prepare_recovery  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.kafka_bootstrap or not settings.redis_url:
        raise ValueError("ENGAGE_KAFKA_BOOTSTRAP and ENGAGE_REDIS_URL must be set")
    # Done once, before any member starts: members that raced to create the
    # recovery partitions or to pick a lineage would disagree.
    prepare_recovery(settings)
    line, _ = lineage(settings, from_end)
    ensure_topics(settings.kafka_bootstrap, {
        t: settings.event_partitions if t == EVENTS_TOPIC else 1 for t in ALL_TOPICS},
        settings.kafka_config)
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(settings.processes)]
    env = {**os.environ, "ENGAGE_LINEAGE": line}
    members: list[subprocess.Popen[bytes]] = []
    for i in range(settings.processes):
        port = settings.metrics_port + i if settings.metrics_port else 0
        members.append(subprocess.Popen(
            [sys.executable, "-m", "engage.cli", *member_argv(argv, i, addresses, port)],
            env=env))
    log.info("cluster of %d processes x %d workers on %s (lineage %s)", settings.processes,
             settings.workers, ";".join(addresses), line)

    def forward(signum: int, _frame: object) -> None:
        for proc in members:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes: list[int] = []
    failed_at = 0.0
    while len(codes) < len(members):
        codes = [rc for rc in (p.poll() for p in members) if rc is not None]
        if not failed_at and any(rc != 0 for rc in codes):
            # One member gone wrong leaves the others waiting on it forever
            # (Bytewax workers exchange progress): stop the rest.
            failed_at = time.monotonic()
            log.error("a cluster member exited with code %s; stopping the others",
                      [rc for rc in codes if rc != 0][0])
            forward(signal.SIGTERM, None)
        elif failed_at and time.monotonic() - failed_at > KILL_AFTER_S:
            # Members waiting on a dead peer cannot finish their epoch: kill them.
            for proc in members:
                if proc.poll() is None:
                    proc.kill()
        time.sleep(0.2)
    return max(codes, key=abs)
