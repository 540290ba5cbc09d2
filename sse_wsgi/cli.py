"""``python -m sse_wsgi``: serve the demo chat on an embedded threaded server."""

from __future__ import annotations

import argparse
import socketserver
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .demo import make_app
from .errors import BrokerUnavailable
from .publisher import Publisher

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["main", "serve_forever"]

Serve = Callable[["WSGIApplication", str, int], None]


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server with one daemon thread per connection, so that streams do not block each other."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """Log requests without reverse DNS lookups."""

    def address_string(self) -> str:
        return str(self.client_address[0])


def serve_forever(app: WSGIApplication, host: str, port: int) -> None:
    """Serve *app* on *host*:*port* (0 picks a free port) until Ctrl-C."""
    with make_server(host, port, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler) as server:
        print(f"sse_wsgi demo chat: open http://{host}:{server.server_port}/ (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sse_wsgi", description="Serve the sse_wsgi demo chat (EventSource in the page)."
    )
    parser.add_argument("--host", default="localhost", help="interface to listen on (default: localhost)")
    parser.add_argument("--port", type=int, default=5000, help="port (default: 5000; 0 picks a free one)")
    parser.add_argument("--redis", metavar="URL", help="use the Redis broker at URL (redis://host:6379/0)")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="seconds between keep-alive comments")
    parser.add_argument("--retry", type=int, help="reconnection delay (ms) sent to browsers")
    parser.add_argument("--max-lifetime", type=float, help="end each stream after this many seconds")
    return parser


def main(argv: list[str] | None = None, *, _serve: Serve | None = None) -> int:
    """Run the demo; return the exit status."""
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be 0 to 65535, not {args.port}", file=sys.stderr)
        return 2
    try:
        publisher = Publisher.from_url(args.redis) if args.redis else Publisher()
    except (ImportError, BrokerUnavailable, ValueError) as error:
        print(f"error: cannot use the Redis broker: {error}", file=sys.stderr)
        return 2
    try:
        app = make_app(publisher, heartbeat=args.heartbeat, retry=args.retry, max_lifetime=args.max_lifetime)
    except (TypeError, ValueError) as error:
        publisher.close()
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        (_serve or serve_forever)(app, args.host, args.port)
    finally:
        publisher.close()  # ends every stream, so browsers reconnect to the next server
    return 0
