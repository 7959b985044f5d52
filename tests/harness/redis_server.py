"""Run real redis-server processes on free loopback ports for tests: one node, a cluster,
or a Sentinel group (a primary, a replica and three Sentinels).

Every call is bounded in time and every process is reaped by stop() (the fixtures call it in
`finally`). Servers keep nothing on disk (`--save "" --appendonly no`); only a cluster
node's nodes.conf lives in its temp dir, so that a restarted node rejoins its cluster.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.harness.dynamodb_local import free_port

__all__ = [
    "RedisCluster3",
    "RedisSentinel",
    "RedisSentinelGroup",
    "RedisServer",
    "free_port",
    "make_tls_files",
]

_STARTUP_TIMEOUT = 10.0
_ADDRESS_IN_USE = re.compile(r"Address already in use|Could not create server TCP", re.I)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class RedisServer:
    """One redis-server process on 127.0.0.1; `start(maxmemory="2mb", ...)` adds config."""

    def __init__(self, *, startup_timeout: float = _STARTUP_TIMEOUT) -> None:
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.config: dict[str, Any] = {}
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<port>."""
        return f"redis://127.0.0.1:{self._require_port()}"

    @property
    def dir(self) -> Path:
        """The server's working directory (removed by stop())."""
        if self._dir is None:
            raise RuntimeError("RedisServer is not started")
        return self._dir

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _require_port(self) -> int:
        if self.port is None:
            raise RuntimeError("RedisServer is not started")
        return self.port

    def start(self, port: int | None = None, **config: Any) -> RedisServer:
        """Launch the server (a free port unless given) and wait until PING answers."""
        if self.running:
            raise RuntimeError("RedisServer is already running")
        self.config = dict(config)
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="memsdk-redis-"))
        for attempt in range(5):
            self.port = port if port is not None else free_port()
            if self._launch():
                return self
            # free_port() raced with another process: only retry when we chose the port.
            if port is not None or attempt == 4:
                break
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"redis-server did not start:\n{tail}")

    def _command_line(self) -> list[str]:
        assert self._dir is not None and self.port is not None
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self._dir),
        ]
        for name, value in self.config.items():
            args += [_flag(name), str(value)]
        return args

    def _launch(self) -> bool:
        assert self._dir is not None and self.port is not None
        args = self._command_line()
        self._close_log()
        self._log = open(self._dir / "redis.log", "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            args,
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                if _ADDRESS_IN_USE.search(self.log_tail()):
                    self._proc = None
                    return False
                raise RuntimeError(
                    f"redis-server exited with code {self._proc.returncode}:\n{self.log_tail()}"
                )
            if self._pings():
                return True
            time.sleep(0.02)
        self._reap(signal.SIGKILL)
        raise RuntimeError(
            f"redis-server did not answer PING within {self.startup_timeout} s:\n{self.log_tail()}"
        )

    def _pings(self) -> bool:
        try:
            with self.client(socket_timeout=0.5) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous redis-py client on this server; close it (use `with`)."""
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("socket_connect_timeout", 2.0)
        # redis-py's default retries back off for up to seconds on a refused connection.
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        if "requirepass" in self.config and "sentinel" not in self.config:
            kwargs.setdefault("password", str(self.config["requirepass"]))
        return redis.Redis(host="127.0.0.1", port=self._require_port(), **kwargs)

    def command(self, *args: Any) -> Any:
        """Run one command on a fresh connection and return its reply."""
        with self.client() as client:
            return client.execute_command(*args)

    def config_set(self, name: str, value: Any) -> None:
        """CONFIG SET name value (underscores in name become dashes)."""
        self.command("CONFIG", "SET", name.replace("_", "-"), str(value))

    def kill(self) -> None:
        """SIGKILL the server: no shutdown, sockets reset; the temp dir stays for restart()."""
        self._reap(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open and nothing answers (a hung server)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start again on the same port with the same config (empty, since nothing is saved)."""
        self._reap(signal.SIGKILL)
        port = self._require_port()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            # A killed listener frees its port at once, but retry briefly to be safe.
            if self._launch():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port} stayed busy after the kill")
            time.sleep(0.1)

    def _reap(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused server handles no other signal
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the server log, for error messages."""
        if self._dir is None or not (self._dir / "redis.log").exists():
            return "(no log)"
        return (self._dir / "redis.log").read_bytes()[-max_bytes:].decode("utf-8", "replace")

    def stop(self) -> None:
        """Terminate the server and remove its temp dir; idempotent."""
        self._reap(signal.SIGTERM)
        self._close_log()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class RedisCluster3:
    """Three cluster masters, no replicas, on free loopback ports; `url` names the first."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """redis+cluster://127.0.0.1:<port of the first node>."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    @property
    def ports(self) -> list[int]:
        """The client ports of the three nodes."""
        return [node._require_port() for node in self.nodes]

    def start(self) -> RedisCluster3:
        """Launch the nodes, join them with `redis-cli --cluster create`, wait for state ok."""
        try:
            for _ in range(3):
                node = RedisServer()
                self.nodes.append(node)
                node.start(
                    cluster_enabled="yes",
                    cluster_node_timeout=1000,
                    cluster_config_file="nodes.conf",
                    # An explicit bus port: port+10000 may be taken or out of range.
                    cluster_port=free_port(),
                )
            self._redis_cli(
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _redis_cli(self, *args: str, timeout: float | None = None) -> str:
        out = subprocess.run(
            ["redis-cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout or self.timeout,
            stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0 or "[ERR]" in out.stdout:
            raise RuntimeError(f"redis-cli {' '.join(args[:2])} failed:\n{out.stdout}{out.stderr}")
        return out.stdout

    def wait_ok(self, timeout: float | None = None) -> None:
        """Wait until every running node says cluster_state:ok and agrees on the slot map."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                if self._all_ok():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not reach cluster_state:ok in time")
            time.sleep(0.05)

    def _all_ok(self) -> bool:
        maps = []
        for node in self.nodes:
            if not node.running:
                continue
            info = node.command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
            maps.append(sorted(self.slot_ranges(node)))
        return all(m == maps[0] for m in maps)

    @staticmethod
    def slot_ranges(node: RedisServer) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master port) for every range, as `node` sees the cluster."""
        with node.client() as client:
            raw = client.execute_command("CLUSTER", "SLOTS")
        # redis-py parses CLUSTER SLOTS into {(start, end): {"primary": (host, port), ...}}.
        if isinstance(raw, dict):
            return [(int(s), int(e), int(v["primary"][1])) for (s, e), v in raw.items()]
        return [(int(r[0]), int(r[1]), int(r[2][1])) for r in raw]

    def slot_count(self, port: int) -> int:
        """How many slots the master on `port` owns."""
        ranges = self.slot_ranges(self._any_running())
        return sum(end - start + 1 for start, end, owner in ranges if owner == port)

    def node_ids(self) -> list[str]:
        """The cluster node id of each node, in `ports` order."""
        ids = []
        for node in self.nodes:
            raw = node.command("CLUSTER", "MYID")
            ids.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        return ids

    def keyslot(self, key: str) -> int:
        """CLUSTER KEYSLOT as computed by the server."""
        return int(self._any_running().command("CLUSTER", "KEYSLOT", key))

    def port_of_slot(self, slot: int) -> int:
        """The client port of the master that owns `slot` (as the first running node sees it)."""
        for start, end, port in self.slot_ranges(self._any_running()):
            if start <= slot <= end:
                return port
        raise LookupError(f"slot {slot} is not assigned")

    def node_of_key(self, key: str) -> RedisServer:
        """The node that owns `key`'s slot."""
        port = self.port_of_slot(self.keyslot(key))
        return next(node for node in self.nodes if node.port == port)

    def _any_running(self) -> RedisServer:
        return next(node for node in self.nodes if node.running)

    def reshard(self, from_id: str, to_id: str, slots: int, *, timeout: float | None = None) -> str:
        """Move `slots` slots (and their keys) with `redis-cli --cluster reshard`; its output.

        Synchronous and thread-safe enough to run in a background thread while a test drives
        load (see reshard_in_thread).
        """
        return self._redis_cli(
            "--cluster",
            "reshard",
            f"127.0.0.1:{self.ports[0]}",
            "--cluster-from",
            from_id,
            "--cluster-to",
            to_id,
            "--cluster-slots",
            str(slots),
            "--cluster-yes",
            timeout=timeout,
        )

    def reshard_in_thread(self, from_id: str, to_id: str, slots: int) -> ReshardThread:
        """Start reshard() in a daemon thread; join() it to get its output or its error."""
        thread = ReshardThread(self, from_id, to_id, slots)
        thread.start()
        return thread

    def stop(self) -> None:
        """Kill every node and remove the temp dirs; idempotent."""
        for node in self.nodes:
            node.stop()
        self.nodes = []


class ReshardThread(threading.Thread):
    """A reshard running beside the event loop; `result()` re-raises what it raised."""

    def __init__(self, cluster: RedisCluster3, from_id: str, to_id: str, slots: int) -> None:
        super().__init__(daemon=True, name="redis-reshard")
        self._args = (cluster, from_id, to_id, slots)
        self.output: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Run the reshard; keep its output or error."""
        cluster, from_id, to_id, slots = self._args
        try:
            self.output = cluster.reshard(from_id, to_id, slots)
        except BaseException as exc:  # handed to the test thread by result()
            self.error = exc

    def result(self, timeout: float) -> str:
        """Wait up to `timeout` s; return the output or raise the thread's error."""
        self.join(timeout)
        if self.is_alive():
            raise RuntimeError(f"reshard still running after {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.output is not None
        return self.output


class RedisSentinel(RedisServer):
    """One Sentinel (`redis-server sentinel.conf --sentinel`): `start(sentinel=[lines])`.

    Sentinel rewrites its config file as it learns the topology, so it gets a file of its
    own in its temp dir; the `sentinel` option holds the `sentinel ...` directives, the
    other options are config lines (`tls_port=...` -> `tls-port ...`).
    """

    def _command_line(self) -> list[str]:
        assert self._dir is not None and self.port is not None
        lines = [f"port {self.port}", "bind 127.0.0.1", f'dir "{self._dir}"']
        lines += [f"{_flag(k)[2:]} {v}" for k, v in self.config.items() if k != "sentinel"]
        lines += [f"sentinel {line}" for line in self.config.get("sentinel", [])]
        conf = self._dir / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        return ["redis-server", str(conf), "--sentinel"]


class RedisSentinelGroup:
    """A primary, one replica (or more) and three Sentinels (quorum 2) on loopback ports.

    The failover tests' topology: `down-after-milliseconds 1000`, `failover-timeout 5000`.
    The data nodes replicate with an ACL user of their own (`repl`) and the Sentinels use
    another (`sentinel`), so that a test can cut the replica (block_replication), or the
    replica and the Sentinels (partition_primary), off the primary without touching the
    clients. Servers keep nothing on disk; `url` is `redis+sentinel://h:p,h:p,h:p/<service>`.
    """

    # Test-only users of the harness' own servers: replication, the Sentinels, the harness.
    REPL_USER, REPL_PASSWORD = "repl", "repl-secret"
    SENTINEL_USER, SENTINEL_PASSWORD = "sentinel", "sentinel-secret"
    ADMIN_USER, ADMIN_PASSWORD = "admin", "admin-secret"

    def __init__(
        self,
        *,
        service: str = "memsdk",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        timeout: float = 30.0,
    ) -> None:
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.timeout = timeout
        self.servers: list[RedisServer] = []  # data nodes, the first primary at start
        self.replicas = 1
        self.sentinels: list[RedisSentinel] = []

    @property
    def url(self) -> str:
        """redis+sentinel://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>/<service>."""
        hosts = ",".join(f"127.0.0.1:{s._require_port()}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self, *, replicas: int = 1, **server_config: Any) -> RedisSentinelGroup:
        """Start primary, replicas (synced) and Sentinels (each seeing the others)."""
        self.replicas = replicas
        try:
            primary = self._data_node(server_config)
            for _ in range(replicas):
                replica = self._data_node(server_config)
                replica.command("REPLICAOF", "127.0.0.1", str(primary.port))
            self.wait_replicated()
            for _ in range(3):
                sentinel = RedisSentinel()
                self.sentinels.append(sentinel)
                sentinel.start(
                    sentinel=[
                        f"monitor {self.service} 127.0.0.1 {primary.port} 2",
                        f"down-after-milliseconds {self.service} {self.down_after_ms}",
                        f"failover-timeout {self.service} {self.failover_timeout_ms}",
                        f"auth-user {self.service} {self.SENTINEL_USER}",
                        f"auth-pass {self.service} {self.SENTINEL_PASSWORD}",
                    ]
                )
            self._wait(
                self._sentinels_ready, "Sentinels did not discover each other and the replica"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _data_node(self, config: dict[str, Any]) -> RedisServer:
        node = RedisServer()
        self.servers.append(node)
        # The `repl` user serves replication and the Sentinels; clients use `default`.
        # A disk-less full sync without the default 5 s delay.
        node.start(
            masteruser=self.REPL_USER,
            masterauth=self.REPL_PASSWORD,
            repl_diskless_sync_delay=0,
            **config,
        )
        self._add_users(node)
        return node

    def _add_users(self, node: RedisServer) -> None:
        for user, password in (
            (self.REPL_USER, self.REPL_PASSWORD),
            (self.SENTINEL_USER, self.SENTINEL_PASSWORD),
            (self.ADMIN_USER, self.ADMIN_PASSWORD),
        ):
            node.command("ACL", "SETUSER", user, "on", f">{password}", "+@all", "~*", "&*")

    def admin(self, node: RedisServer, *args: Any) -> Any:
        """Run one command as the harness' own user (works during a partition)."""
        with node.client(username=self.ADMIN_USER, password=self.ADMIN_PASSWORD) as client:
            return client.execute_command(*args)

    def restart(self, node: RedisServer) -> None:
        """Start a killed data node again, empty, with its users; the Sentinels then make
        it a replica of the current primary."""
        node.restart()
        self._add_users(node)

    def _sentinel_command(self, *args: Any) -> Any:
        errors = []
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                return sentinel.command(*args)
            except (redis.RedisError, OSError) as exc:
                errors.append(exc)
        raise RuntimeError(f"no Sentinel answered {args[:2]}: {errors}")

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.command("SENTINEL", "MASTER", self.service)
            if isinstance(state, list):
                state = dict(zip(state[::2], state[1::2], strict=True))
            state = {_text(k): _text(v) for k, v in state.items()}
            if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < self.replicas:
                return False
        return True

    def primary_port(self, sentinel: RedisSentinel | None = None) -> int:
        """The primary's port as a Sentinel (the first that answers, by default) reports it."""
        args = ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        reply = sentinel.command(*args) if sentinel is not None else self._sentinel_command(*args)
        return int(reply[1])

    def server(self, port: int) -> RedisServer:
        """The data node listening on `port`."""
        return next(node for node in self.servers if node.port == port)

    @property
    def primary(self) -> RedisServer:
        """The data node the Sentinels name as primary."""
        return self.server(self.primary_port())

    @property
    def replica(self) -> RedisServer:
        """A data node that is not the primary (the first one)."""
        port = self.primary_port()
        return next(node for node in self.servers if node.port != port)

    def role(self, node: RedisServer) -> dict[str, Any]:
        """INFO replication of `node`, as a dict (asked as the harness' user)."""
        return {str(k): v for k, v in self.admin(node, "INFO", "replication").items()}

    def wait_replicated(self, timeout: float | None = None) -> None:
        """Wait until the primary has a replica and every replica of it has applied all of
        its stream (a node cut off by a partition, or still converting, is not waited for)."""

        def synced() -> bool:
            primary = self.server(self.primary_port()) if self.sentinels else self.servers[0]
            offset = int(self.role(primary)["master_repl_offset"])
            states = [self.role(n) for n in self.servers if n.running and n is not primary]
            replicas = [
                r for r in states if r["role"] == "slave" and int(r["master_port"]) == primary.port
            ]
            return bool(replicas) and all(
                r["master_link_status"] == "up" and int(r["slave_repl_offset"]) >= offset
                for r in replicas
            )

        self._wait(synced, "no replica caught up", timeout)

    def block_replication(self) -> None:
        """Cut the replicas off their primary (the `repl` user refused, links killed).

        Clients and Sentinels still reach both nodes, so nothing fails over by itself: the
        primary keeps acknowledging SETs that the replica never gets.
        """
        self._shut_out(self.primary, self.REPL_USER)

        primary_port = self.primary_port()

        def cut() -> bool:
            replicas = [n for n in self.servers if n.running and n.port != primary_port]
            return all(str(self.role(n)["master_link_status"]) == "down" for n in replicas)

        self._wait(cut, "a replica kept its link")

    def partition_primary(self) -> RedisServer:
        """Cut the replica and the Sentinels off the primary; its clients keep their links.

        New connections are refused too (the `default` user is switched off), connections
        already open keep working, as across a network partition that leaves clients on
        the old primary's side. The Sentinels then fail over to the replica, while the old
        primary keeps taking writes on those connections unless min-replicas-to-write
        fences it.
        """
        primary = self.primary
        self.block_replication()
        self.admin(primary, "ACL", "SETUSER", "default", "off")
        self._shut_out(primary, self.SENTINEL_USER)
        return primary

    def _shut_out(self, node: RedisServer, user: str) -> None:
        self.admin(node, "ACL", "SETUSER", user, "off")
        self.admin(node, "CLIENT", "KILL", "USER", user)

    def heal(self) -> None:
        """Let everyone in again on every running data node."""
        for node in self.servers:
            if node.running:
                for user in ("default", self.REPL_USER, self.SENTINEL_USER):
                    self.admin(node, "ACL", "SETUSER", user, "on")

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary (no shutdown, sockets reset); return it."""
        victim = self.primary
        victim.kill()
        return victim

    def failover(self) -> int:
        """SENTINEL FAILOVER (forced: no quorum, no down-after); return the old primary's port."""
        old = self.primary_port()
        self._sentinel_command("SENTINEL", "FAILOVER", self.service)
        return old

    def wait_for_new_primary(self, old_port: int, timeout: float | None = None) -> RedisServer:
        """Wait until every running Sentinel names another primary and it says role:master."""

        def moved() -> bool:
            ports = {self.primary_port(s) for s in self.sentinels if s.running}
            if len(ports) != 1 or old_port in ports:
                return False
            return str(self.role(self.server(ports.pop()))["role"]) == "master"

        self._wait(moved, "the Sentinels did not promote a new primary", timeout)
        return self.primary

    def _wait(self, check: Any, what: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                if check():
                    return
            except (redis.RedisError, OSError, KeyError, StopIteration):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout or self.timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill every process and remove the temp dirs; idempotent."""
        for node in [*self.sentinels, *self.servers]:
            node.stop()
        self.sentinels = []
        self.servers = []


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def make_tls_files(directory: Path) -> None:
    """A CA (ca.pem) and a server certificate for 127.0.0.1 (server.pem, server.key), via
    the openssl CLI."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr",
    )  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem",
    )  # fmt: skip
