"""A TCP relay for the tests that can go silent without closing anything.

:class:`Relay` listens on a free loopback port and forwards each connection it accepts to a target port, both
ways, with one named daemon thread per direction. :meth:`Relay.silence` freezes the connections open at that
moment: they stay open (no FIN, no RST) but nothing crosses any more; what either side sends is read and dropped,
so each peer sees neither an error nor data, as behind a frozen host, a network partition or a NAT that dropped
its mapping. Connections accepted later are forwarded again, as through a load balancer with a new route.
:meth:`Relay.silence_all` also silences the connections accepted from then on, until :meth:`Relay.resume`.

Every wait is bounded: the threads poll a stop flag every ``POLL`` seconds and :meth:`Relay.close` joins them
with a timeout.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType

HOST = "127.0.0.1"
POLL = 0.05  # seconds between checks of the stop flags
BUFSIZE = 65536
CONNECT_TIMEOUT = 5.0  # seconds to connect to the target
JOIN_TIMEOUT = 5.0  # seconds for close() to join the threads


class _Connection:
    """One accepted connection: the client's socket and, unless accepted silenced, the target's."""

    def __init__(self, number: int, client: socket.socket, upstream: socket.socket | None, silenced: bool) -> None:
        self.number = number
        self.client = client
        self.upstream = upstream
        self.silenced = threading.Event()  # nothing crosses any more
        if silenced:
            self.silenced.set()
        self.broken = threading.Event()  # one direction failed: end the other as well
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._pumping = 0
        self.closed = False

    @property
    def sockets(self) -> list[socket.socket]:
        return [sock for sock in (self.client, self.upstream) if sock is not None]

    def pump_started(self) -> None:
        with self._lock:
            self._pumping += 1

    def pump_ended(self) -> None:
        """Count a direction as done; close the sockets once both are, unless silenced (it stays open)."""
        with self._lock:
            self._pumping -= 1
            last = self._pumping == 0
        if last and not self.silenced.is_set():
            self.close()

    def close(self) -> None:
        """Close both sockets; safe to call more than once."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


class Relay:
    """Forward connections from a free port on 127.0.0.1 to ``host:target_port``; see the module docstring."""

    def __init__(self, target_port: int, host: str = HOST) -> None:
        self.target = (host, target_port)
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._all_silenced = False
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._accepted = 0

    # -- life cycle ---------------------------------------------------------------------------------------------

    def start(self) -> Relay:
        """Listen on a free port and start accepting; connections are accepted once this returns."""
        if self._listener is not None:
            raise RuntimeError("the relay was started already")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen(64)
        listener.settimeout(POLL)
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"test-relay-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, end every connection's threads, close every socket; raise if a thread hangs."""
        self._stopping.set()
        if self._accept_thread is not None:  # once it has ended, no connection is added
            self._accept_thread.join(JOIN_TIMEOUT)
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        pumps = [thread for connection in connections for thread in connection.threads]
        for thread in pumps:
            thread.join(JOIN_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        for connection in connections:
            connection.close()
        threads = [self._accept_thread, *pumps] if self._accept_thread is not None else pumps
        hanging = [thread.name for thread in threads if thread.is_alive()]
        if hanging:
            raise RuntimeError(f"relay threads still running after {JOIN_TIMEOUT} s: {hanging}")

    def __enter__(self) -> Relay:
        return self.start() if self._listener is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- inspection ---------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the relay listens on."""
        if self._listener is None:
            raise RuntimeError("the relay is not started")
        return int(self._listener.getsockname()[1])

    def url_for(self, db: int = 0) -> str:
        """A Redis URL that connects through the relay."""
        return f"redis://{HOST}:{self.port}/{db}"

    @property
    def accepted(self) -> int:
        """How many connections the relay accepted so far (silenced or not)."""
        with self._lock:
            return self._accepted

    @property
    def open_connections(self) -> int:
        """How many accepted connections are still open (a silenced one stays open until :meth:`close`)."""
        with self._lock:
            return sum(1 for connection in self._connections if not connection.closed)

    # -- faults -------------------------------------------------------------------------------------------------

    def silence(self) -> None:
        """Stop forwarding on every connection open now, both ways, without closing it; later ones forward."""
        with self._lock:
            for connection in self._connections:
                connection.silenced.set()

    def silence_all(self) -> None:
        """Silence every open connection and every one accepted from now on, until :meth:`resume`."""
        with self._lock:
            self._all_silenced = True
            for connection in self._connections:
                connection.silenced.set()

    def resume(self) -> None:
        """Forward the connections accepted from now on again; the silenced ones stay silent."""
        with self._lock:
            self._all_silenced = False

    # -- forwarding ---------------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        """Accept connections until :meth:`close`; a target that refuses closes the client's connection."""
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            with self._lock:
                self._accepted += 1
                number = self._accepted
                silenced = self._all_silenced
            upstream = None
            if not silenced:  # silenced from the start: the target never hears of it
                try:
                    upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
                except OSError:
                    client.close()
                    continue
            self._add(_Connection(number, client, upstream, silenced))

    def _add(self, connection: _Connection) -> None:
        """Register *connection* and start a thread per direction (one, reading and dropping, if no target)."""
        for sock in connection.sockets:
            sock.setblocking(False)
        directions = [("up", connection.client, connection.upstream)]
        if connection.upstream is not None:
            directions.append(("down", connection.upstream, connection.client))
        for direction, source, destination in directions:
            connection.threads.append(
                threading.Thread(
                    target=self._pump,
                    args=(connection, source, destination),
                    name=f"test-relay-{self.port}-{connection.number}-{direction}",
                    daemon=True,
                )
            )
        with self._lock:
            if self._stopping.is_set():
                connection.close()
                return
            self._connections.append(connection)
            if self._all_silenced:  # silence_all() came while connecting to the target
                connection.silenced.set()
        for _ in connection.threads:  # all counted first: one ending early must not close the other's socket
            connection.pump_started()
        for thread in connection.threads:
            thread.start()

    def _ended(self, connection: _Connection) -> bool:
        return self._stopping.is_set() or connection.broken.is_set()

    def _pump(self, connection: _Connection, source: socket.socket, destination: socket.socket | None) -> None:
        """Copy *source* to *destination* until EOF, an error or :meth:`close`; drop the bytes once silenced.

        Not silenced, an EOF is passed on as one (shutdown of the writing side) and an error ends both
        directions; silenced, the other side hears of neither.
        """
        try:
            while not self._ended(connection):
                try:
                    readable, _, _ = select.select([source], [], [], POLL)
                    if not readable:
                        continue
                    data = source.recv(BUFSIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except (OSError, ValueError):  # ValueError: closed by close() after its join timed out
                    if not connection.silenced.is_set():
                        connection.broken.set()
                    return
                if not data:
                    if not connection.silenced.is_set() and destination is not None:
                        with contextlib.suppress(OSError):
                            destination.shutdown(socket.SHUT_WR)
                    return
                if connection.silenced.is_set() or destination is None:
                    continue  # read and dropped
                if not self._send(connection, destination, data):
                    connection.broken.set()
                    return
        finally:
            connection.pump_ended()

    def _send(self, connection: _Connection, destination: socket.socket, data: bytes) -> bool:
        """Send *data* to *destination*, dropping the rest once silenced; false on an error or :meth:`close`."""
        view = memoryview(data)
        while view:
            if connection.silenced.is_set():
                return True
            if self._ended(connection):
                return False
            try:
                sent = destination.send(view)
            except (BlockingIOError, InterruptedError):
                try:
                    select.select([], [destination], [], POLL)
                except (OSError, ValueError):
                    return False
                continue
            except OSError:
                return False
            view = view[sent:]
        return True
