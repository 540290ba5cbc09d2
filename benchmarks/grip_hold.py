"""What one stream held by a GRIP proxy costs the app: ``SSEMiddleware`` called in process, in memory.

python -m benchmarks.grip_hold              # 20,000 calls of each request, the best of 5 rounds
python -m benchmarks.grip_hold --n 2000 --rounds 2 --out /tmp/hold

Each request is one WSGI call with its body read to the end (and closed):

- ``hold``: ``GET /events/room`` with a valid ``Grip-Sig`` (an HS256 JWT made as Pushpin makes
  it), answered at once with ``Grip-Hold: stream`` and the opening chunk;
- ``grip_sig_verify``: checking that signature alone (``verify_grip_sig``), a part of ``hold``;
- ``plain``: ``GET /other``, which the middleware hands to the inner app (a 2-byte answer);
- ``stream_open_close``: ``GET /events/room`` without a signature, a stream the app serves
  itself: subscribe, take the opening chunk, close (unsubscribe).

The publisher's GRIP URL names port 9, where nothing listens: a hold does not contact the proxy.
The figures are microseconds per call on the server CPU, a fresh copy of the environ each call
included. Writes ``grip-hold-DATE.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import io
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sse_wsgi import Publisher, SSEMiddleware
from sse_wsgi.grip import verify_grip_sig

from .targets import SERVER_CPUS

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "bench-grip-key"
GRIP_URL = f"http://127.0.0.1:9?key={KEY}"  # nothing listens on port 9: holds never contact the proxy

Call = Callable[[], None]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def grip_sig(key: str, lifetime: float = 3600.0) -> str:
    """A ``Grip-Sig`` as Pushpin signs forwarded requests: an HS256 JWT with ``iss`` and ``exp``."""
    compact = (",", ":")
    header = _b64url(json.dumps({"typ": "JWT", "alg": "HS256"}, separators=compact).encode())
    payload = _b64url(json.dumps({"iss": "pushpin", "exp": int(time.time() + lifetime)}, separators=compact).encode())
    signature = hmac.new(key.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


def inner_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The app behind the middleware: a 2-byte answer to anything."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def environ_for(path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A gunicorn-like WSGI environ of a ``GET`` (threaded: no warning about one request at a time)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "bench",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_ACCEPT": "text/event-stream",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def recording(status: list[str], headers: dict[str, str] | None = None) -> StartResponse:
    """A ``start_response`` that appends the status to *status* and puts the headers in *headers*."""

    def start_response(code: str, response_headers: list[tuple[str, str]], exc_info: object = None) -> Any:
        status.append(code)
        if headers is not None:
            headers.update(response_headers)
        return lambda data: None

    return start_response


def request(app: SSEMiddleware, environ: dict[str, Any], *, first_chunk_only: bool = False) -> Call:
    """One call of *app* with a copy of *environ*; the body read to the end (or its first chunk), then closed."""
    status: list[str] = []
    start_response = recording(status)

    def call() -> None:
        body = app(dict(environ), start_response)
        try:
            if first_chunk_only:
                next(iter(body))
            else:
                for _ in body:
                    pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    call()  # once, to check that it answers 200
    if status != ["200 OK"]:
        raise RuntimeError(f"{environ['PATH_INFO']} answered {status}")
    return call


def per_call_us(call: Call, n: int, rounds: int) -> dict[str, float]:
    """Microseconds per call: the best and the median of *rounds* rounds of *n* calls."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            call()
        times.append((time.perf_counter() - started) / n * 1e6)
    times.sort()
    return {"best_us": round(times[0], 2), "median_us": round(times[len(times) // 2], 2)}


def measure(n: int, rounds: int) -> dict[str, Any]:
    publisher = Publisher(grip=GRIP_URL)
    app = SSEMiddleware(inner_app, publisher, path="/events", heartbeat=15)
    signed = {"Grip-Sig": grip_sig(KEY)}
    hold = environ_for("/events/room", signed)
    hold_call = request(app, hold)
    answer: dict[str, str] = {}
    b"".join(app(dict(hold), recording([], answer)))
    if answer.get("Grip-Hold") != "stream":
        raise RuntimeError(f"a signed request was not held: {answer}")
    keys = publisher.grip_keys
    token = signed["Grip-Sig"]

    def verify() -> None:
        verify_grip_sig(token, keys)

    calls: dict[str, Call] = {
        "hold": hold_call,
        "grip_sig_verify": verify,
        "plain": request(app, environ_for("/other")),
        "stream_open_close": request(app, environ_for("/events/room"), first_chunk_only=True),
    }
    try:
        figures = {name: per_call_us(call, n, rounds) for name, call in calls.items()}
        if publisher.subscription_count:
            raise RuntimeError(f"{publisher.subscription_count} self-served streams were left open")
    finally:
        publisher.close()
    return figures


def markdown(report: dict[str, Any]) -> str:
    figures = report["results"]
    hold = figures["hold"]["best_us"]
    lines = [
        f"# What a stream held by a GRIP proxy costs the app ({report['machine']['date']})",
        "",
        f"`SSEMiddleware` called in process on CPU {report['machine']['server_cpus']}, in memory, Python "
        f"{report['machine']['python']}; {report['n']:,} calls per round, {report['rounds']} rounds.",
        "",
        "| request | best µs/call | median µs/call | vs hold |",
        "|---|---|---|---|",
    ]
    for name, figure in figures.items():
        best, median = figure["best_us"], figure["median_us"]
        lines.append(f"| {name} | {best} | {median} | {round(best / hold, 2)}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grip_hold", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="calls per round (default: 20,000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best and the median are kept (default: 5)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds take whole numbers of at least 1")
    os.sched_setaffinity(0, SERVER_CPUS)
    report = {
        "machine": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "server_cpus": sorted(SERVER_CPUS),
        },
        "n": args.n,
        "rounds": args.rounds,
        "results": measure(args.n, args.rounds),
    }
    print(json.dumps(report["results"], indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"grip-hold-{datetime.date.today().isoformat()}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
