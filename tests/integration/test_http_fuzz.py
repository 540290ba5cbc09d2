"""Real servers answer thousands of random requests with no 5xx, leave no subscriber behind, and still stream."""

from __future__ import annotations

import json
import random
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sse_wsgi.testing import EventStreamParser
from tests.support.servers.harness import start_server

METHODS = ["GET"] * 6 + ["HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH", "TRACE", "FOO", "G\xe9T"]
PATH_PARTS = ["", "/", "/chat", "/%", "/%zz", "/%ff%fe", "/%C3%BC", "/%00", "/a%2Fb", "/" + "x" * 250, "/%E2%80%A8",
              "/\xff", "/..", "/%0d%0aSet-Cookie:x", "/" + "%41" * 150]  # fmt: skip
QUERY_PARTS = ["", "channel=a", "channel=", "channel=%ff", "channel=%", "lastEventId=1", "lastEventId=" + "9" * 500,
               "&".join(f"channel=c{n}" for n in range(40)), "channel=a&channel=b", "channel=%0A", "x=\xff",
               "channel=" + "y" * 300, "lastEventId=%00"]  # fmt: skip
HEADER_VALUES = ["1", "", "abc", "9" * 20, "x" * 8000, "\xff\xfe", "ünï".encode().decode("latin-1"), "1-0",
                 "99999999999999-0", " 1 "]  # fmt: skip


def random_request(rng: random.Random) -> bytes:
    method = rng.choice(METHODS)
    prefix = rng.choice(["/events", "/events", "/events", "/other", "/event", "/stats"])
    path = prefix + rng.choice(PATH_PARTS)
    query = "&".join(rng.sample(QUERY_PARTS, rng.randint(0, 3)))
    target = path + ("?" + query if query else "")
    headers = ["Host: 127.0.0.1"]
    if rng.random() < 0.5:
        headers.append("Last-Event-ID: " + rng.choice(HEADER_VALUES))
    if rng.random() < 0.2:
        headers.append("Origin: " + rng.choice(["http://127.0.0.1", "https://evil.example", "null", "\xff"]))
    if method in ("POST", "PUT", "PATCH"):
        headers.append("Content-Length: 0")
    head = f"{method} {target} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\nConnection: close\r\n\r\n"
    return head.encode("latin-1", errors="replace")


def send(port: int, request: bytes) -> int:
    """Send one raw request; return the status (0 when the server closed without an answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            part = sock.recv(4096)
            if not part:
                break
            data += part
    line = data.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["waitress", "gunicorn-gthread"])
def test_http_fuzz_gives_no_5xx_leaks_nothing_and_still_streams(kind: str) -> None:
    requests = 2600  # per server: at least 5,000 in all
    rng = random.Random(f"sse-wsgi-{kind}")
    batch = [random_request(rng) for _ in range(requests)]
    with start_server(kind, "tests.support.servers.apps.basic:app", env={"SSE_HEARTBEAT": "1"}) as server:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="test-fuzz") as pool:
            statuses = Counter(pool.map(lambda request: send(server.port, request), batch))
        elapsed = time.monotonic() - started
        classes = Counter(f"{status // 100}xx" if status else "closed" for status in statuses.elements())
        print("FIGURES http-fuzz " + json.dumps({"server": kind, "requests": requests, "seconds": round(elapsed, 1),
                                                 "answers": dict(sorted(classes.items()))}))  # fmt: skip
        assert sum(statuses.values()) == requests
        assert not [status for status in statuses if status >= 500], statuses
        deadline = time.monotonic() + 1 + 3
        while httpx.get(server.url + "/stats", timeout=5).json()["subscriptions"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(server.url + "/stats", timeout=5).json()["subscriptions"] == 0
        with httpx.Client(timeout=5) as client, client.stream("GET", server.url + "/events/after") as stream:
            chunks = stream.iter_raw()
            next(chunks)
            event_id = client.post(server.url + "/publish?channel=after", content="still streaming").text
            parser = EventStreamParser()
            events = []
            while not events:
                events = parser.feed(next(chunks))
        assert (events[0].data, events[0].last_event_id) == ("still streaming", event_id)
