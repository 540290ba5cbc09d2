"""Run a WSGI app on one server in this process: ``python -m tests.support.servers.serve KIND module:attr``.

Binds 127.0.0.1 on a free port and prints ``PORT <n>`` once it listens.
gunicorn is started by the harness with its own command line instead.
"""

from __future__ import annotations

import argparse
import importlib
import socketserver
import sys
from wsgiref.simple_server import WSGIServer, make_server

THREADS = 100  # enough worker threads for the concurrent-stream tests


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def load(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "app")


def announce(port: int) -> None:
    print(f"PORT {port}", flush=True)


def serve(kind: str, app) -> None:
    if kind == "werkzeug":
        from werkzeug.serving import make_server as make_werkzeug_server

        server = make_werkzeug_server("127.0.0.1", 0, app, threaded=True)
        announce(server.server_port)
        server.serve_forever()
    elif kind == "wsgiref":
        server = make_server("127.0.0.1", 0, app, server_class=ThreadingWSGIServer)
        announce(server.server_port)
        server.serve_forever()
    elif kind == "waitress":
        from waitress.server import create_server

        server = create_server(app, host="127.0.0.1", port=0, threads=THREADS, channel_request_lookahead=1)
        announce(server.effective_port)
        server.run()
    elif kind == "cheroot":
        from cheroot.wsgi import Server

        server = Server(("127.0.0.1", 0), app, numthreads=THREADS)
        server.prepare()
        announce(server.bind_addr[1])
        server.serve()
    elif kind == "eventlet":
        import eventlet
        import eventlet.wsgi

        listener = eventlet.listen(("127.0.0.1", 0))
        announce(listener.getsockname()[1])
        eventlet.wsgi.server(listener, app, log_output=False, max_size=THREADS * 10)
    else:
        raise SystemExit(f"unknown server kind: {kind}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind")
    parser.add_argument("app")
    args = parser.parse_args(argv)
    if args.kind == "eventlet":  # monkey-patching must come before the app is imported
        import eventlet

        eventlet.monkey_patch()
    serve(args.kind, load(args.app))


if __name__ == "__main__":
    sys.exit(main())
