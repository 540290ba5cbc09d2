"""Start WSGI servers in subprocesses on 127.0.0.1 for live tests.

>>> with start_server("waitress", "tests.support.servers.apps.basic:app") as server:
...     httpx.get(server.url + "/stats")
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SERVERS = ("werkzeug", "wsgiref", "waitress", "cheroot", "gunicorn-gthread", "gunicorn-gevent", "eventlet")
#: gunicorn with ``--preload``: the app (and its publisher) is made in the master, then the workers fork.
PRELOADED = ("gunicorn-gthread-preload", "gunicorn-gevent-preload")

_GUNICORN_WORKERS = {
    "gunicorn-gthread": ["-k", "gthread", "--threads", "100"],
    "gunicorn-gevent": ["-k", "gevent", "--worker-connections", "2000"],
    "gunicorn-sync": ["-k", "sync"],
}
for _kind, _options in list(_GUNICORN_WORKERS.items()):
    _GUNICORN_WORKERS[f"{_kind}-preload"] = [*_options, "--preload"]
_LISTENING = re.compile(r"(?:PORT |Listening at: http://127\.0\.0\.1:)(\d+)")
START_TIMEOUT = 20.0  # seconds


class LiveServer:
    """A server process; ``url`` is its base URL. Stop it with :meth:`stop` or a ``with`` block."""

    def __init__(
        self,
        kind: str,
        app: str,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        *,
        workers: int = 1,
        own_group: bool = False,
    ):
        self.kind = kind
        self.app = app
        self.env = env or {}
        self.args = args or []
        self.workers = workers
        self.own_group = own_group  # a session and process group of its own, for pause() and resume()
        self.paused = False
        self.lines: list[str] = []
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind.startswith("gunicorn-"):
            return [
                sys.executable, "-m", "gunicorn", "-b", "127.0.0.1:0", "--workers", str(self.workers),
                "--graceful-timeout", "5", *_GUNICORN_WORKERS[self.kind], *self.args, self.app,
            ]  # fmt: skip
        return [sys.executable, "-m", "tests.support.servers.serve", self.kind, self.app, *self.args]

    def start(self) -> LiveServer:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("PYTHONDEVMODE", None)  # a server under test runs as in production
        self.proc = subprocess.Popen(
            self.command(), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=self.own_group,
        )  # fmt: skip
        ports: queue.Queue[int] = queue.Queue()
        threading.Thread(target=self._read_output, args=(ports,), name=f"harness-{self.kind}", daemon=True).start()
        try:
            self.port = ports.get(timeout=START_TIMEOUT)
        except queue.Empty:
            self.port = 0
        if not self.port:
            self.stop()
            raise RuntimeError(f"{self.kind} did not start within {START_TIMEOUT} s:\n" + self.output())
        self._wait_ready()
        return self

    def _read_output(self, ports: queue.Queue[int]) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match and not self.port:
                ports.put(int(match.group(1)))
        ports.put(0)  # the output ended: the process has exited

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    sock.sendall(b"GET /__ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    if sock.recv(1):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not answer within {START_TIMEOUT} s:\n" + self.output())

    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """Send *signum* to the server's whole process group (master and workers); needs ``own_group``."""
        assert self.proc is not None and self.own_group, "start the server with own_group=True"
        os.killpg(self.proc.pid, signum)

    def pause(self) -> None:
        """Stop every process of the server at once (SIGSTOP to its group), as a stalled host would."""
        self.signal_group(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Let the paused processes run again (SIGCONT to the group)."""
        self.signal_group(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.own_group:  # workers left behind by a master that died first
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll *condition* every 20 ms until it is true or *timeout* seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(condition())


def start_server(
    kind: str,
    app: str,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    workers: int = 1,
    own_group: bool = False,
) -> LiveServer:
    """Start *app* (``"module:attr"``) on server *kind* and wait until it answers.

    *workers* is gunicorn's worker count. With *own_group* the server runs in
    a session and process group of its own, so that :meth:`LiveServer.pause`
    can stop all its processes at once.
    """
    return LiveServer(kind, app, env, args, workers=workers, own_group=own_group).start()
