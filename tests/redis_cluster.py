"""A real Redis Cluster on this machine for the tests: Debian's redis-server and redis-cli.

Three primaries, no replicas (the tests are about slots, not failover), on
free loopback ports with their cluster bus on other free ports, each in its
own temporary directory, without persistence; stopped and removed after.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from engage.connectors.devstack import (REDIS_HELP, DevStackError, _die_with_parent, _wait_port,
                                       free_port, stop_children)


class NoClusterSupport(RuntimeError):
    """This redis-server cannot run in cluster mode (built without it, or too old)."""


def _port_with_free_bus() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise DevStackError("no free port pair (port, port + 10000) for a cluster node")


class LocalRedisCluster:
    """``with LocalRedisCluster() as c: c.url`` -> ``redis+cluster://127.0.0.1:PORT``."""

    def __init__(self, primaries: int = 3) -> None:
        self.primaries = primaries
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.logs: list[Any] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="engage-rcluster-"))

    @property
    def url(self) -> str:
        """The engine's URL for this cluster: any one node, the client finds the rest."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def __enter__(self) -> "LocalRedisCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        """Start the nodes, give out the slots (``redis-cli --cluster create``), wait for ok."""
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None:
            raise DevStackError(REDIS_HELP)   # every integration test needs it: fail, not skip
        if cli is None:
            raise NoClusterSupport("redis-cli (which creates the cluster) is not on PATH "
                                   "(Debian: apt-get install redis-tools)")
        # redis-server < 7 has no cluster-port setting: its bus is port + 10000.
        version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        own_bus_port = not any(f"v={major}." in version for major in range(3, 7))
        for i in range(self.primaries):
            port = free_port() if own_bus_port else _port_with_free_bus()
            node_dir = self.workdir / f"node{i}"
            node_dir.mkdir()
            log = self.workdir / f"node{i}.log"
            handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
            self.logs.append(handle)
            proc = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(node_dir), "--protected-mode", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 # The bus port defaults to port + 10000, which may be taken (or above
                 # 65535); a free one of its own instead.
                 *(("--cluster-port", str(free_port())) if own_bus_port else ()),
                 "--cluster-node-timeout", "5000"],
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent)
            self.procs.append(proc)
            try:
                _wait_port(port, proc, "redis-server (cluster mode)", log)
            except DevStackError as exc:
                text = log.read_text(errors="replace")
                if "cluster" in text.lower() and ("bad directive" in text.lower()
                                                  or "not supported" in text.lower()):
                    raise NoClusterSupport(f"redis-server refused cluster mode: {exc}") from exc
                raise
            self.ports.append(port)
        out = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise DevStackError(f"redis-cli --cluster create failed:\n{out.stdout[-2000:]}"
                                f"{out.stderr[-2000:]}")
        self._wait_ok()

    def _wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says cluster_state:ok and knows every other node."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = 0
            for port in self.ports:
                info = redis.Redis(port=port).cluster("info")
                known = int(info.get("cluster_known_nodes", 0))
                if info.get("cluster_state") == "ok" and known == len(self.ports):
                    ready += 1
            if ready == len(self.ports):
                return
            time.sleep(0.2)
        raise DevStackError("the Redis Cluster did not reach cluster_state:ok")

    def nodes(self) -> list[redis.Redis]:
        """A plain client per primary (to read each node's keys)."""
        return [redis.Redis(port=p) for p in self.ports]

    def flush(self) -> None:
        """Empty every primary (between tests sharing the cluster)."""
        for node in self.nodes():
            node.flushall()

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and remove the work dir."""
        stop_children(self.procs, self.logs, self.workdir)
