"""A real Pushpin (GRIP proxy) for the tests: Debian's ``pushpin`` with a config of its own in a temp dir.

Pushpin's runner (``pushpin``) starts four services: condure (the client-facing
HTTP server), zurl (the HTTP client the proxy reaches the origin with),
``pushpin-proxy`` and ``pushpin-handler`` (the control endpoint, ``POST
/publish/``). Debian's ``internal.conf`` points the proxy at a system-wide
zurl in ``/var/run/zurl/``; this config runs a zurl of its own in the run
directory instead, and puts every TCP port on 127.0.0.1 (a bare
``http_port`` would listen on 0.0.0.0); docs/grip.md says what Pushpin needs.
Only zurl's resolver binds anything wider: two unconnected UDP sockets
(0.0.0.0 and [::], ephemeral ports), which no setting moves.

Requests with ``Host: pushpin-ready.invalid`` go to Pushpin's built-in
``test`` handler (the readiness probe); every other request goes to the origin.

Seen with this config (Pushpin 1.36), worth knowing when writing a test:

- a hold whose ``Grip-Channel`` has ``prev-id`` but no ``Grip-Link: <...>; rel=next``
  is not held: the client gets the first body with ``Content-Length`` and the end;
- a published item whose ``prev-id`` is not the last id delivered waits up to
  ``message_wait``: if the missing item comes in time both go out in order, else
  (1.1-2.1 s after the publish with ``message_wait_ms=1000``) Pushpin GETs the
  ``Grip-Link`` URL with ``Grip-Last: <channel>; last-id=<last delivered>`` and
  the item itself is dropped;
- the origin's other response headers (``Access-Control-Allow-Origin``,
  ``Cache-Control``, ``Server``, ...) reach the client; ``Grip-*`` and
  ``Content-Length`` do not; a non-GRIP answer (a 403, say) passes through as is;
- :meth:`Pushpin.restart` cuts every held stream without a final chunk.

Usage::

    pushpin = Pushpin(tmp_path, origin_port).start()
    try:
        ...  # clients GET pushpin.url + "/stream"; the app publishes to pushpin.grip_url
    finally:
        pushpin.stop()
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.redis_server import free_port
from tests.support.require import require

#: The runner and the services it starts (``services=`` in the config).
BINARIES = ("pushpin", "condure", "zurl", "pushpin-proxy", "pushpin-handler")
START_TIMEOUT = 30.0  # seconds, until the HTTP port, the control port and every service answer, over all attempts
START_ATTEMPTS = 3
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
#: A Host routed to Pushpin's built-in ``test`` handler instead of the origin. Its ``GET /stream`` is a
#: held stream ("[stream opened]"), so the readiness probe goes through condure, the proxy *and* the
#: handler's accept socket (which answers "500 Accept service unavailable" for a moment after the
#: services log "started") without reaching the app.
READY_HOST = "pushpin-ready.invalid"
#: Short, so the longest ZeroMQ ipc path (``{rundir}/{IPC_PREFIX}condure-out-stream``) fits a unix socket.
IPC_PREFIX = "pp-"
#: A unix socket path (sun_path) holds at most 107 bytes; the longest name Pushpin binds is this one.
_LONGEST_IPC_NAME = IPC_PREFIX + "condure-out-stream"
_SUN_PATH_MAX = 107
#: The services that write "started" to their log when they are up (the runner's own "started" comes first).
_SERVICE_LOGS = ("condure.log", "zurl.log", "pushpin-proxy.log", "pushpin-handler.log")
_STARTED = re.compile(r" started$", re.MULTILINE)


def missing_pushpin_binaries() -> list[str]:
    """The names in :data:`BINARIES` that are not on ``PATH``."""
    return [name for name in BINARIES if shutil.which(name) is None]


def require_pushpin() -> None:
    """Skip the test (fail it in CI) when Pushpin or one of its services is not installed."""
    missing = missing_pushpin_binaries()
    require(not missing, f"no {', '.join(missing)} binary (install Debian's pushpin, condure and zurl)")


def _free_ports(count: int) -> list[int]:
    """*count* distinct free TCP ports on 127.0.0.1."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _http_get(port: int, path: str, timeout: float) -> tuple[int, bytes] | None:
    """GET ``http://127.0.0.1:{port}{path}``: the status and body, or ``None`` when nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _stream_opens(port: int, timeout: float) -> bool:
    """Whether the test handler's held stream (``GET /stream`` on :data:`READY_HOST`) opens through Pushpin."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/stream", headers={"Host": READY_HOST})
        response = connection.getresponse()
        return response.status == 200 and response.readline().startswith(b"[stream opened]")
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes in process group *pgid*, from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class Pushpin:
    """One Pushpin on 127.0.0.1 in front of the origin at ``127.0.0.1:{origin_port}``.

    Its config, routes and logs live in *directory*; the ports are chosen once, so :meth:`restart`
    comes back on the same ones. The defaults differ from Pushpin's where they would bite a test:
    a random ``sig_key`` (not ``changeme``), ``message_wait`` 1 s (not 5), no practical rate
    limit (``message_rate``, ``message_hwm``) and 64 channels a connection (not 20).

    :ivar sig_key: the key Pushpin signs ``Grip-Sig`` with (HS256); the app needs it in its GRIP URL.
    :ivar http_port: where clients connect (:attr:`url`).
    :ivar control_port: the handler's HTTP control endpoint (``push_in_http_port``, :attr:`control_url`).
    """

    def __init__(
        self,
        directory: Path,
        origin_port: int,
        *,
        sig_key: str | None = None,
        message_wait_ms: int = 1000,
        message_rate: int = 100_000,
        message_hwm: int = 1_000_000,
        connection_subscription_max: int = 64,
        client_maxconn: int = 10_000,
    ) -> None:
        self.directory = Path(directory)
        self.origin_port = origin_port
        self.sig_key = sig_key if sig_key is not None else secrets.token_hex(24)
        self.message_wait_ms = message_wait_ms
        self.message_rate = message_rate
        self.message_hwm = message_hwm
        self.connection_subscription_max = connection_subscription_max
        self.client_maxconn = client_maxconn
        (
            self.http_port,
            self.control_port,
            self.push_in_port,
            self.push_in_sub_port,
            self.command_port,
        ) = _free_ports(5)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0  # each start logs to a directory of its own: logs/1, logs/2, ...
        self._short_rundir: Path | None = None  # a rundir under /tmp when *directory* is too deep for ipc paths

    @property
    def url(self) -> str:
        """Where clients connect: ``http://127.0.0.1:{http_port}``."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def control_url(self) -> str:
        """The handler's HTTP control endpoint (``POST {control_url}/publish/``)."""
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def grip_url(self) -> str:
        """The GRIP URL an app publishes with: the control endpoint and the signing key."""
        return f"{self.control_url}?key={self.sig_key}"

    @property
    def config_path(self) -> Path:
        return self.directory / "pushpin.conf"

    @property
    def routes_path(self) -> Path:
        return self.directory / "routes"

    @property
    def logs_root(self) -> Path:
        return self.directory / "logs"

    def _logdir(self) -> Path:
        return self.logs_root / str(self.starts)

    def _rundir(self) -> Path:
        """The ZeroMQ ipc sockets' directory: in *directory* when the paths fit a unix socket, else under /tmp."""
        rundir = self.directory / "run"
        if len(os.fsencode(rundir / _LONGEST_IPC_NAME)) <= _SUN_PATH_MAX:
            return rundir
        if self._short_rundir is None:
            self._short_rundir = Path(tempfile.mkdtemp(prefix="pushpin-run-"))
        return self._short_rundir

    def _config(self, rundir: Path, logdir: Path) -> str:
        return f"""\
# Written by tests/support/pushpin.py: Debian's pushpin.conf, with everything on 127.0.0.1 and a zurl of its own.
[global]
include={{libdir}}/internal.conf
rundir={rundir}
ipc_prefix={IPC_PREFIX}
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:{self.http_port}
logdir={logdir}
log_level=2
client_buffer_size=8192
client_maxconn={self.client_maxconn}
condure_bin=condure
zurl_bin=zurl

[proxy]
routesfile={self.routes_path}
# internal.conf points these at a system zurl in /var/run/zurl/: use the one the runner starts.
zurl_out_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in
zurl_out_stream_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in-stream
zurl_in_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-out
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
x_forwarded_for=
x_forwarded_for_trusted=
orig_headers_need_mark=
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key={self.sig_key}
upstream_key=
updates_check=off
organization_name=

[handler]
push_in_spec=tcp://127.0.0.1:{self.push_in_port}
push_in_sub_specs=tcp://127.0.0.1:{self.push_in_sub_port}
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={self.control_port}
push_in_http_max_headers_size=10000
push_in_http_max_body_size=1000000
stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats
command_spec=tcp://127.0.0.1:{self.command_port}
message_rate={self.message_rate}
message_hwm={self.message_hwm}
message_wait={self.message_wait_ms}
id_cache_ttl=60
connection_subscription_max={self.connection_subscription_max}
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
"""

    def start(self) -> Pushpin:
        """Write the config and routes, start ``pushpin`` in a process group of its own, and wait until it serves.

        The origin must be running: readiness includes a request that reaches it. A Pushpin whose
        services all started but that never serves (seen about once in 50 starts on a loaded 2-CPU
        machine) is stopped and started once more.
        """
        require_pushpin()
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("Pushpin is already running")
        for attempt in range(START_ATTEMPTS):
            try:
                return self._start_once(START_TIMEOUT / START_ATTEMPTS)
            except RuntimeError:
                if attempt == START_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> Pushpin:
        self.starts += 1
        rundir, logdir = self._rundir(), self._logdir()
        rundir.mkdir(parents=True, exist_ok=True)
        logdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config(rundir, logdir))
        self._write_routes()
        with open(logdir / "pushpin.log", "wb") as output:
            self.proc = subprocess.Popen(
                ["pushpin", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._ready(logdir):
                return self
            time.sleep(0.05)
        code = self.proc.poll()
        self.stop()
        why = f"exited with code {code}" if code is not None else f"did not answer within {timeout:g} s"
        raise RuntimeError(f"Pushpin {why} (http port {self.http_port}):\n{self.log_text()}")

    def _ready(self, logdir: Path) -> bool:
        """Every service logged "started", the control port answers, a held stream opens through Pushpin,
        and a request reaches the origin through it (zurl, the proxy's HTTP client, is up)."""
        for name in _SERVICE_LOGS:
            try:
                if not _STARTED.search((logdir / name).read_text(errors="replace")):
                    return False
            except OSError:
                return False
        control = _http_get(self.control_port, "/", timeout=1.0)
        if control is None or control[0] != 200:
            return False
        if not _stream_opens(self.http_port, timeout=0.3):
            return False
        origin = _http_get(self.http_port, "/pushpin-ready-probe", timeout=1.0)
        return origin is not None and origin[0] < 500

    def stop(self) -> None:
        """Kill the whole process group: SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; wait. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session: the runner leads its own group
            self._signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            # The services die with the runner's SIGTERM; SIGKILL whatever is left (an orphan is never reaped here).
            deadline = time.monotonic() + STOP_TIMEOUT
            while _group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _group_members(pgid):
                self._signal_group(pgid, signal.SIGKILL)
                deadline = time.monotonic() + STOP_TIMEOUT
                while _group_members(pgid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if self._short_rundir is not None:
            shutil.rmtree(self._short_rundir, ignore_errors=True)
            self._short_rundir = None

    @staticmethod
    def _signal_group(pgid: int, signum: signal.Signals) -> None:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass

    def _write_routes(self) -> None:
        self.routes_path.write_text(f"{READY_HOST} test\n* 127.0.0.1:{self.origin_port}\n")

    def route_to(self, origin_port: int) -> None:
        """Send what follows to the origin at *origin_port* (a restarted app); Pushpin reloads its routes file."""
        self.origin_port = origin_port
        self._write_routes()

    def restart(self) -> None:
        """Stop, then start again on the same ports (every held connection is dropped)."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """Every log file of every start, each under a header with its path (for failure messages)."""
        parts = []
        if self.logs_root.is_dir():
            for path in sorted(self.logs_root.glob("*/*.log"), key=lambda p: (int(p.parent.name), p.name)):
                parts.append(f"==> {path.relative_to(self.directory)} <==\n{path.read_text(errors='replace')}")
        return "\n".join(parts)
