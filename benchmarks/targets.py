"""The servers under test, each started in a subprocess pinned to the server CPU."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SERVER_CPUS = {0}
CLIENT_CPUS = {1}
START_TIMEOUT = 30.0  # seconds
SINGLE_STREAM_COMMIT = "5e9e31a"  # the last commit whose Redis broker put every channel in one stream


def pin_to_server_cpus() -> None:
    os.sched_setaffinity(0, SERVER_CPUS)


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
    ]
}  # fmt: skip


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
    """A running target; ``rss()`` and ``cpu_seconds()`` cover its process and its workers."""

    def __init__(self, target: Target, streams: int, redis_url: str | None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        tree = ROOT if target.tree is None else target.tree()
        env = {**os.environ, "PYTHONPATH": str(tree), **(env or {})}
        env.pop("PYTHONDEVMODE", None)
        if redis_url:
            env["BENCH_REDIS_URL"] = redis_url
        self.proc = subprocess.Popen(
            target.command(self.port, streams), cwd=tree, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=pin_to_server_cpus,
        )  # fmt: skip
        wait_for_port(self.port, self.proc)
        time.sleep(0.5)  # let workers boot after the master listens

    def _processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self._processes())

    def cpu_seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self._processes())

    def stop(self) -> None:
        """Stop at once: a measured run needs no graceful shutdown (workers included)."""
        processes = self._processes()
        for process in reversed(processes):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=10)
        self.proc.wait(5)
