"""Helpers of the fault tests: a live engine subprocess, its /metrics, servers that restart in place."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from engage.connectors.devstack import DevStack, _wait_port, broker_binary, free_port


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``cond`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {name: sum over its label sets}; empty when the server does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        out[name] = out.get(name, 0.0) + float(value)
    return out


def readyz(port: int) -> int:
    """HTTP status of ``/readyz`` (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


class LiveEngine:
    """``engage run`` (unbounded) as a subprocess against a stack; stopped with SIGTERM.

    A silent partition never stops holding event time back here, so the
    result depends on the events only, not on how long a fault lasted.
    """

    def __init__(self, stack: DevStack, *flags: str) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="engage-live-", suffix=".log", delete=False)
        env = {**stack.env(), "ENGAGE_IDLE_PARTITION_AFTER": "1h"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engage.cli", "run", "--no-recovery",
             "--metrics-port", str(self.port), *flags],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def metric(self, name: str) -> float:
        """One metric summed over its labels (0 when absent or not answering)."""
        return scrape(self.port).get(name, 0.0)

    def wait_read(self, n: int, timeout: float = 60.0) -> None:
        """Until the engine has read at least ``n`` records of the input topic."""
        wait_for(lambda: self.alive() and self.metric("engage_records_read_total") >= n,
                 timeout, f"the engine to read {n} records\n{self.output()}")

    def alive(self) -> bool:
        """True while running; fails the test with its output if it died."""
        if self.proc.poll() is not None:
            raise AssertionError(f"the engine exited with {self.proc.returncode}:\n{self.output()}")
        return True

    def output(self) -> str:
        """The end of what the engine printed."""
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 60.0) -> str:
        """SIGTERM, wait for a clean exit, return the output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the engine did not stop on SIGTERM:\n{self.output()}")
        text = self.output()
        os.unlink(self.log.name)
        assert self.proc.returncode == 0, text
        return text


class PersistentRedis:
    """A redis-server with AOF persistence (fsync on every write), restartable on its port and dir.

    Production runs Redis with AOF (docker-compose.yml); a restart then keeps
    every acknowledged write, which the engine relies on.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="engage-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again) on the same port and directory; returns once it listens."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed"
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        _wait_port(self.port, self.proc, "redis-server", self.dir / "redis.log")

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown (AOF with fsync always keeps what was acknowledged)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        """Stop and remove the data directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def restart_broker(stack: DevStack, down_s: float = 0.0) -> None:
    """Kill the embedded broker and start a fresh one on the same port (its topics are gone)."""
    broker = next(p for p in stack.procs if p.args[0] == broker_binary())
    broker.kill()
    broker.wait()
    stack.procs.remove(broker)
    time.sleep(down_s)
    url = f"tcp://127.0.0.1:{stack.kafka_port}"
    proc = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=stack._log("broker2"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stack.procs.append(proc)
    _wait_port(stack.kafka_port, proc, "the embedded Kafka broker", stack.workdir / "broker2.log")
