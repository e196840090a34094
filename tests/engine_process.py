"""`engage run` as a child process, as an operator runs it: its ops endpoint, its log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Callable


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET on the loopback port; (-1, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return -1, b""


def until(predicate: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """Wait for ``predicate`` to hold, or fail the test naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class EngineProcess:
    """``python -m engage.cli run ARGS`` with ``env`` over ours; stopped with SIGINT on exit.

    Output goes to a file (a pipe nobody reads would block the engine);
    ``log()`` reads it back.
    """

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.metrics_port = free_port()
        self.env = {**os.environ, **env, "ENGAGE_METRICS_PORT": str(self.metrics_port)}
        self.args = ["run", "--no-recovery", *args]
        self.out = tempfile.NamedTemporaryFile(prefix="engage-run-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[Any] | None = None
        self.returncode: int | None = None

    def __enter__(self) -> "EngineProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "engage.cli", *self.args],
                                     env=self.env, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> int:
        """SIGINT (the engine drains and exits 0), SIGKILL after a minute; the exit code."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.returncode = self.proc.returncode
        return self.returncode if self.returncode is not None else -1

    def get(self, path: str) -> tuple[int, bytes]:
        """GET on the engine's ops endpoint."""
        return http_get(self.metrics_port, path)

    def metrics(self) -> str:
        """The current /metrics text ("" while it does not answer)."""
        status, body = self.get("/metrics")
        return body.decode() if status == 200 else ""

    def sample(self, name: str) -> float:
        """The value of one sample line, e.g. ``engage_records_read_total`` (0 when absent)."""
        for line in self.metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything the engine wrote to stdout and stderr so far."""
        with open(self.out.name, "rb") as handle:
            return handle.read().decode(errors="replace")
