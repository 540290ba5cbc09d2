"""What the middleware learns about the WSGI server from the environ: disconnect signals, concurrency."""

from __future__ import annotations

import functools
import logging
import select
import socket
import ssl
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["disconnect_probe", "warn_if_not_concurrent"]

logger = logging.getLogger("sse_wsgi")

_warned = False  # one warning per process is enough


def disconnect_probe(environ: WSGIEnvironment) -> Callable[[], bool] | None:
    """A callable telling whether the client has gone, from the server's own means; ``None`` if it has none.

    waitress offers ``waitress.client_disconnected`` (with
    ``channel_request_lookahead > 0``); gunicorn and werkzeug expose the
    client socket, on which a closed peer reads as end of file.
    """
    probe = environ.get("waitress.client_disconnected")
    if callable(probe):
        return probe
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return None  # no socket, or TLS, which cannot peek
    return functools.partial(_peer_closed, sock)


def _peer_closed(sock: socket.socket) -> bool:
    try:
        readable, _, _ = _os_select()([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except ValueError:  # the socket is already closed on our side: the server will notice
        return False
    except OSError:  # reset by the peer
        return True


@functools.cache
def _os_select() -> Callable[..., tuple[list[Any], list[Any], list[Any]]]:
    """The operating system's ``select.select``: with a zero timeout it never blocks.

    gevent's monkey-patched ``select`` yields to the hub after every call,
    even a zero-timeout one, which would put each heartbeat at the back of
    the run queue. (Found once: the original stays the original.)
    """
    gevent_monkey: Any = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("select"):
        return gevent_monkey.get_original("select", "select")
    return select.select


def _cooperative() -> bool:
    """True under gevent or eventlet monkey-patching (one greenlet per request)."""
    gevent_monkey: Any = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("socket"):
        return True
    eventlet_patcher: Any = sys.modules.get("eventlet.patcher")
    return eventlet_patcher is not None and bool(eventlet_patcher.is_monkey_patched("socket"))


def warn_if_not_concurrent(environ: WSGIEnvironment) -> None:
    """Log once per process when the server runs one request at a time (gunicorn ``sync``, say)."""
    global _warned
    if _warned or environ.get("wsgi.multithread") or _cooperative():
        return
    if str(environ.get("SERVER_SOFTWARE", "")).startswith("WSGIServer/"):
        return  # wsgiref always says multithread=False, even under socketserver.ThreadingMixIn
    _warned = True
    logger.warning(
        "this WSGI server handles one request at a time per process (wsgi.multithread is false), so each "
        "event stream blocks a whole worker: use a threaded or async worker, e.g. gunicorn -k gthread "
        "--threads 100, or -k gevent"
    )
