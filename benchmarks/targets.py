"""The servers under test, each started in a subprocess pinned to the server CPU.

A GRIP target (``Target.grip``) also runs a Pushpin in front of the app, on the server CPU as
well: the clients' streams go to Pushpin, which has the app answer each with ``Grip-Hold`` and
holds the connection itself; the events are published to the app, which feeds Pushpin.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from tests.support.pushpin import Pushpin

ROOT = Path(__file__).resolve().parents[1]
SERVER_CPUS = {0}
CLIENT_CPUS = {1}
START_TIMEOUT = 30.0  # seconds
SINGLE_STREAM_COMMIT = "5e9e31a"  # the last commit whose Redis broker put every channel in one stream
# Pushpin's message_rate counts deliveries to connections (one per held connection and event), and any
# rate at all sends them out in batches on a 25 ms timer (at 10,000,000 a second fanout_1k's p50 was 2 s
# with the CPU half idle): 0 turns that shaper off.
PUSHPIN_MESSAGE_RATE = 0
PUSHPIN_MESSAGE_HWM = 10_000_000
PUSHPIN_SPARE_CONNECTIONS = 1_000  # client_maxconn above the streams: the publisher, probes
PUSHPIN_OPEN_IN_FLIGHT = 20  # stream requests opening through Pushpin at once (see the GRIP target)


def pin_to_server_cpus() -> None:
    os.sched_setaffinity(0, SERVER_CPUS)


@contextmanager
def on_server_cpus() -> Iterator[None]:
    """Run the block's thread on the server CPUs, so that the processes it starts inherit them.

    For starters that take no ``preexec_fn`` (tests/support/pushpin.py's :class:`Pushpin`).
    """
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, SERVER_CPUS)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin_threads(processes: list[psutil.Process]) -> int:
    """Pin every thread of *processes* to the server CPUs (``sched_setaffinity`` moves one thread); how many moved."""
    moved = 0
    for process in processes:
        try:
            threads = [thread.id for thread in process.threads()]
        except psutil.NoSuchProcess:
            continue
        for tid in threads:
            try:
                if os.sched_getaffinity(tid) != SERVER_CPUS:
                    os.sched_setaffinity(tid, SERVER_CPUS)
                    moved += 1
            except ProcessLookupError:
                pass
    return moved


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def gunicorn(worker: str, app: str, workers: int = 1) -> Callable[[int, int], list[str]]:
    def command(port: int, streams: int) -> list[str]:
        options = ["--worker-connections", str(max(20_000, streams + 100))]
        if worker == "gthread":
            options += ["--threads", str(streams + 32)]
        return [sys.executable, "-m", "gunicorn", "-k", worker, "-w", str(workers), "-b", f"127.0.0.1:{port}",
                "--backlog", "4096", "--timeout", "120", "--log-level", "warning", *options, app]  # fmt: skip

    return command


def waitress(port: int, streams: int) -> list[str]:
    return [sys.executable, "-m", "waitress", f"--port={port}", "--host=127.0.0.1", f"--threads={streams + 32}",
            f"--connection-limit={streams + 200}", "--backlog=4096", "benchmarks.apps.sse_wsgi_app:app"]  # fmt: skip


def uvicorn(port: int, streams: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "benchmarks.apps.starlette_app:app", "--host", "127.0.0.1",
            "--port", str(port), "--backlog", "4096", "--log-level", "warning"]  # fmt: skip


def limit(port: int, streams: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.apps.limit_server", str(port)]


class GitTree:
    """``sse_wsgi`` and the benchmark apps as they were at *commit*, extracted once into a temporary directory.

    The work tree is left alone (``git archive``, not ``git checkout``); :meth:`cleanup` removes the copy.
    """

    def __init__(self, commit: str) -> None:
        self.commit = commit
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    def __call__(self) -> Path:
        """The directory of the extracted tree (extracted on the first call)."""
        if self._directory is None:
            directory = tempfile.TemporaryDirectory(prefix=f"sse-bench-{self.commit}-")
            try:
                archive = subprocess.run(
                    ["git", "-C", str(ROOT), "archive", self.commit, "sse_wsgi", "benchmarks/__init__.py",
                     "benchmarks/apps"],
                    check=True, capture_output=True, timeout=60,
                )  # fmt: skip
                subprocess.run(["tar", "-x", "-C", directory.name], input=archive.stdout, check=True, timeout=60)
            except (OSError, subprocess.SubprocessError) as error:
                directory.cleanup()
                message = f"cannot extract commit {self.commit} (a full git clone is needed): {error}"
                raise RuntimeError(message) from error
            self._directory = directory
        return Path(self._directory.name)

    def cleanup(self) -> None:
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None


SINGLE_STREAM_TREE = GitTree(SINGLE_STREAM_COMMIT)


@dataclass(frozen=True)
class Target:
    """A server under test: how to start it, and the most streams it can hold."""

    name: str
    command: Callable[[int, int], list[str]]
    max_streams: int  # thread-per-stream servers stop where threads do
    needs_redis: bool = False
    note: str = ""
    tree: Callable[[], Path] | None = None  # where it runs and imports sse_wsgi from; None: this work tree
    grip: bool = False  # Pushpin in front (GRIP mode): the streams go to Pushpin, the app feeds it (BENCH_GRIP)
    open_in_flight: int | None = None  # stream requests the client has open at once until live (None: unbounded)


TARGETS = {
    t.name: t
    for t in [
        Target("sse_wsgi-gevent", gunicorn("gevent", "benchmarks.apps.sse_wsgi_app:app"), 20_000),
        Target("sse_wsgi-gthread", gunicorn("gthread", "benchmarks.apps.sse_wsgi_app:app"), 1_000,
               note="one thread per stream"),
        Target("sse_wsgi-waitress", waitress, 1_000, note="one thread per stream"),
        Target("sse-starlette-uvicorn", uvicorn, 20_000),
        Target("flask-sse-gevent", gunicorn("gevent", "benchmarks.apps.flask_sse_app:app"), 4_000, needs_redis=True,
               note="one Redis connection per stream"),
        Target("limit-asyncio", limit, 20_000),
        Target("sse_wsgi-redis-1w", gunicorn("gevent", "benchmarks.apps.sse_wsgi_app:app"), 20_000, needs_redis=True,
               note="1 gevent worker on Redis"),
        Target("sse_wsgi-redis-2w", gunicorn("gevent", "benchmarks.apps.sse_wsgi_app:app", workers=2), 20_000,
               needs_redis=True, note="2 gevent workers sharing one Redis"),
        Target("sse_wsgi-redis-1w-single-stream", gunicorn("gevent", "benchmarks.apps.sse_wsgi_app:app"), 20_000,
               needs_redis=True, note=f"1 gevent worker on Redis, the one-stream broker of {SINGLE_STREAM_COMMIT}",
               tree=SINGLE_STREAM_TREE),
        # One sync worker: it answers each stream request at once with Grip-Hold, and a second in-memory
        # worker would have ids of its own (Pushpin would see every other event's prev-id as a gap).
        # Pushpin 1.36 on one CPU answers some stream requests 502 ("Error while proxying to origin") or
        # 500 ("Accept service unavailable") once more than about 100 are in flight, and closes a few held
        # streams right after their first body (handler: "received message out of sequence, canceling"),
        # more of them the more open at once: the client opens 20 at once (streams_cut counts the rest).
        Target("sse_wsgi-grip-sync", gunicorn("sync", "benchmarks.apps.sse_wsgi_app:app"), 20_000, grip=True,
               open_in_flight=PUSHPIN_OPEN_IN_FLIGHT, note="Pushpin holds the streams; 1 gunicorn sync worker"),
    ]
}  # fmt: skip


def missing_pushpin() -> list[str]:
    """The Pushpin binaries (the runner and its services) that are not installed."""
    return [name for name in ("pushpin", "condure", "zurl", "pushpin-proxy", "pushpin-handler")
            if shutil.which(name) is None]  # fmt: skip


class PushpinProxy:
    """tests/support/pushpin.py's :class:`Pushpin` in a temporary directory, in front of the app at *origin_port*.

    Started on the server CPUs (its runner, condure, zurl, pushpin-proxy and pushpin-handler
    inherit them), with room for *streams* client connections and no practical delivery rate
    limit. The open-files limit it inherits must allow the streams (``raise_open_file_limit``).
    """

    def __init__(self, origin_port: int, streams: int) -> None:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from tests.support.pushpin import Pushpin

        self.directory = tempfile.TemporaryDirectory(prefix="sse-bench-pushpin-")
        self.pushpin: Pushpin = Pushpin(
            Path(self.directory.name), origin_port, message_rate=PUSHPIN_MESSAGE_RATE,
            message_hwm=PUSHPIN_MESSAGE_HWM, client_maxconn=max(10_000, streams + PUSHPIN_SPARE_CONNECTIONS),
        )  # fmt: skip

    @property
    def port(self) -> int:
        """Where clients connect."""
        return self.pushpin.http_port

    @property
    def grip_url(self) -> str:
        """What the app publishes to (its ``BENCH_GRIP``)."""
        return self.pushpin.grip_url

    def start(self) -> None:
        with on_server_cpus():
            self.pushpin.start()
        pin_threads(self.processes())  # in case a service set an affinity of its own

    def processes(self) -> list[psutil.Process]:
        """The runner and the services it started (its process group)."""
        if self.pushpin.proc is None:
            return []
        root = psutil.Process(self.pushpin.proc.pid)
        return [root, *root.children(recursive=True)]

    def stop(self) -> None:
        self.pushpin.stop()
        self.directory.cleanup()


class RedisProcess:
    """A redis-server for the targets that need one (no persistence), on the server CPU."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is needed (Debian package redis-server)")
        self.port = free_port()
        self.directory = tempfile.TemporaryDirectory(prefix="sse-bench-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.directory.name, "--maxclients", "20000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin_to_server_cpus,
        )  # fmt: skip
        wait_for_port(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        import redis

        with redis.Redis(port=self.port) as client:
            client.flushall()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.directory.cleanup()


class Server:
    """A running target; ``rss()`` and ``cpu_seconds()`` cover its process and its workers, and its Pushpin.

    :ivar port: the app's port.
    :ivar pushpin: the Pushpin in front of a GRIP target, else ``None``.
    """

    def __init__(self, target: Target, streams: int, redis_url: str | None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        tree = ROOT if target.tree is None else target.tree()
        env = {**os.environ, "PYTHONPATH": str(tree), **(env or {})}
        env.pop("PYTHONDEVMODE", None)
        if redis_url:
            env["BENCH_REDIS_URL"] = redis_url
        self.pushpin = PushpinProxy(self.port, streams) if target.grip else None
        if self.pushpin is not None:
            env["BENCH_GRIP"] = self.pushpin.grip_url
        self.proc = subprocess.Popen(
            target.command(self.port, streams), cwd=tree, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=pin_to_server_cpus,
        )  # fmt: skip
        try:
            wait_for_port(self.port, self.proc)
            time.sleep(0.5)  # let workers boot after the master listens
            if self.pushpin is not None:
                self.pushpin.start()
        except BaseException:
            self.stop()
            raise

    @property
    def stream_port(self) -> int:
        """Where the clients open their streams: Pushpin's port for a GRIP target, else the app's."""
        return self.port if self.pushpin is None else self.pushpin.port

    @property
    def publish_port(self) -> int:
        """Where events are POSTed: the app (which feeds Pushpin in GRIP mode)."""
        return self.port

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts ``rss`` and ``cpu_seconds`` can tell apart: ``"app"``, and ``"pushpin"`` when there is one."""
        return ("app",) if self.pushpin is None else ("app", "pushpin")

    def _processes(self, part: str | None = None) -> list[psutil.Process]:
        processes = []
        if part in (None, "app"):
            root = psutil.Process(self.proc.pid)
            processes += [root, *root.children(recursive=True)]
        if part in (None, "pushpin") and self.pushpin is not None:
            processes += self.pushpin.processes()
        return processes

    def rss(self, part: str | None = None) -> int:
        """Resident bytes of *part* (see :attr:`parts`), or of all of them."""
        return sum(p.memory_info().rss for p in self._processes(part))

    def cpu_seconds(self, part: str | None = None) -> float:
        """User and system CPU seconds of *part* (see :attr:`parts`), or of all of them."""
        return sum(sum(p.cpu_times()[:2]) for p in self._processes(part))

    def stop(self) -> None:
        """Stop at once: a measured run needs no graceful shutdown (workers included); then Pushpin."""
        try:
            processes = self._processes("app")
        except psutil.NoSuchProcess:
            processes = []
        for process in reversed(processes):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=10)
        self.proc.wait(5)
        if self.pushpin is not None:
            self.pushpin.stop()
