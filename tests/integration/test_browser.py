"""The demo chat in headless Chromium: EventSource receives, reconnects and resumes without loss."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.redis_server import RedisServer
from tests.support.require import require
from tests.support.servers.harness import LiveServer, start_server

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator:
    require(os.path.exists(CHROMIUM), f"Chromium is not installed at {CHROMIUM} (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def chat() -> Iterator[LiveServer]:
    with start_server("werkzeug", "tests.support.servers.apps.demo_app:app", env={"SSE_RETRY": "300"}) as server:
        yield server


def open_chat(browser, url: str):
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_selector("#status[data-state=open]", timeout=TIMEOUT_MS)
    return page


def send_from_page(page, name: str, text: str) -> None:
    page.fill("#name", name)
    page.fill("#text", text)
    page.click("#submit")


def messages(page) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#messages li",
        "items => items.map(li => ({id: li.dataset.id, name: li.querySelector('.name').textContent,"
        " text: li.querySelector('.text').textContent}))",
    )


def wait_for_messages(page, count: int) -> list[dict[str, str]]:
    page.wait_for_function(f"document.querySelectorAll('#messages li').length >= {count}", timeout=TIMEOUT_MS)
    return messages(page)


def post(url: str, name: str, text: str) -> str:
    response = httpx.post(url + "/send", json={"name": name, "text": text}, timeout=5)
    assert response.status_code == 200
    return response.text


def test_two_pages_see_each_others_messages(browser, chat: LiveServer, tmp_path: Path) -> None:
    alice, bob = open_chat(browser, chat.url), open_chat(browser, chat.url)
    start = len(messages(alice))
    send_from_page(alice, "alice", "hi bob")
    wait_for_messages(bob, start + 1)
    send_from_page(bob, "bob", "hi alice")
    for page in (alice, bob):
        got = wait_for_messages(page, start + 2)[start:]
        assert [(m["name"], m["text"]) for m in got] == [("alice", "hi bob"), ("bob", "hi alice")]
    bob.screenshot(path=str(tmp_path / "two-pages.png"))
    assert (tmp_path / "two-pages.png").stat().st_size > 0
    alice.close()
    bob.close()


def test_multiline_and_non_ascii_arrive_intact(browser, chat: LiveServer) -> None:
    page = open_chat(browser, chat.url)
    start = len(messages(page))
    text = "line 1\nline 2\r\nline 3 — ünïcödé ✓ 🎉 \u2028 after u2028"
    post(chat.url, "zoë", text)
    [message] = wait_for_messages(page, start + 1)[start:]
    assert (message["name"], message["text"]) == ("zoë", text)
    page.close()


def test_named_events_reach_add_event_listener_only(browser, chat: LiveServer) -> None:
    page = open_chat(browser, chat.url)
    page.evaluate(
        "window.seen = []; const s = new EventSource('/events?channel=chat');"
        "s.addEventListener('chat', e => window.seen.push(['chat', e.data]));"
        "s.onmessage = e => window.seen.push(['message', e.data]);"
        "s.onopen = () => { window.opened = true; };"
    )
    page.wait_for_function("window.opened === true", timeout=TIMEOUT_MS)
    post(chat.url, "n", "named")
    page.wait_for_function("window.seen.length >= 1", timeout=TIMEOUT_MS)
    [[kind, data]] = page.evaluate("window.seen")
    assert kind == "chat" and json.loads(data) == {"name": "n", "text": "named"}
    page.close()


def test_max_lifetime_reconnects_and_loses_nothing(browser, tmp_path: Path) -> None:
    env = {"SSE_RETRY": "200", "SSE_MAX_LIFETIME": "1"}
    with start_server("werkzeug", "tests.support.servers.apps.demo_app:app", env=env) as server:
        page = open_chat(browser, server.url)
        ids = []
        for n in range(25):  # across at least two stream ends
            ids.append(post(server.url, "tick", f"message {n}"))
            time.sleep(0.1)
        got = wait_for_messages(page, 25)
        page.wait_for_function("Number(document.getElementById('reconnects').textContent) >= 2", timeout=TIMEOUT_MS)
        assert [m["id"] for m in got] == ids  # every one, once, in order
        assert [m["text"] for m in got] == [f"message {n}" for n in range(25)]
        page.screenshot(path=str(tmp_path / "after-reconnects.png"))
        page.close()


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 whose connections can be cut while the server behind it lives on.

    While cut, new connections wait (up to a bound) until :meth:`restore`.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._accept, name="test-proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), name="test-proxy-conn", daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        if not self.open.wait(30):
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        except OSError:  # the server behind is down: refuse, as a real proxy would
            client.close()
            return
        upstream.settimeout(None)
        with self.lock:
            self.sockets += [client, upstream]
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, target), name="test-proxy-pump", daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every connection and hold new ones."""
        self.open.clear()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.stopped = True
        self.listener.close()
        self.cut()
        self.open.set()


def test_cut_connection_reconnects_and_resumes_by_last_event_id(browser, chat: LiveServer, tmp_path: Path) -> None:
    proxy = CuttableProxy(chat.port)
    try:
        page = open_chat(browser, proxy.url)
        start = len(messages(page))
        before = post(chat.url, "a", "before the cut")
        wait_for_messages(page, start + 1)
        proxy.cut()
        page.wait_for_selector("#status[data-state=reconnecting]", timeout=TIMEOUT_MS)
        missed = [post(chat.url, "a", f"while away {n}") for n in range(3)]
        proxy.restore()
        page.wait_for_selector("#status[data-state=open]", timeout=TIMEOUT_MS)
        after = post(chat.url, "a", "after the cut")
        got = wait_for_messages(page, start + 5)[start:]
        assert [m["id"] for m in got] == [before, *missed, after]  # exactly once, in order
        assert [m["text"] for m in got] == ["before the cut", "while away 0", "while away 1", "while away 2",
                                            "after the cut"]  # fmt: skip
        assert page.inner_text("#reconnects") == "1"
        page.screenshot(path=str(tmp_path / "after-cut.png"))
        page.close()
    finally:
        proxy.close()


@pytest.mark.redis
def test_resume_across_a_web_server_restart_on_redis(browser, redis_server: RedisServer, tmp_path: Path) -> None:
    """The page's server process is replaced while another process publishes: nothing is lost."""
    from sse_wsgi import Publisher
    from sse_wsgi.demo import publish_message

    env = {"SSE_RETRY": "300", "SSE_REDIS_URL": redis_server.url}
    app = "tests.support.servers.apps.demo_app:app"
    hook = ["-c", "tests/support/servers/gunicorn_conf.py"]  # streams end at once when the worker stops
    first = start_server("gunicorn-gthread", app, env=env, args=hook)
    proxy = CuttableProxy(first.port)
    try:
        page = open_chat(browser, proxy.url)
        before = post(first.url, "a", "before the restart")
        wait_for_messages(page, 1)
        proxy.cut()
        first.stop()
        with Publisher.from_url(redis_server.url) as elsewhere:  # another worker, on another host
            missed = [publish_message(elsewhere, {"name": "b", "text": f"during {n}"}) for n in range(3)]
        with start_server("gunicorn-gthread", app, env=env, args=hook) as second:
            proxy.upstream_port = second.port
            proxy.restore()
            page.wait_for_selector("#status[data-state=open]", timeout=TIMEOUT_MS)
            after = post(second.url, "a", "after the restart")
            got = wait_for_messages(page, 5)
            page.screenshot(path=str(tmp_path / "after-restart.png"))
            page.close()
        assert [m["id"] for m in got] == [before, *missed, after]
        assert [m["text"] for m in got] == ["before the restart", "during 0", "during 1", "during 2",
                                            "after the restart"]  # fmt: skip
    finally:
        proxy.close()
        first.stop()


@pytest.mark.pushpin
def test_two_pages_chat_through_pushpin_and_resume_after_a_pushpin_restart(browser, tmp_path: Path) -> None:
    """gunicorn ``sync`` (one worker, one request at a time) serves the chat: it can, because Pushpin holds
    the pages' streams and the worker answers each request at once."""
    from tests.support.pushpin import Pushpin

    pushpin = Pushpin(tmp_path / "pushpin", origin_port=0)
    env = {"SSE_RETRY": "300", "SSE_GRIP": pushpin.grip_url}
    with start_server("gunicorn-sync", "tests.support.servers.apps.demo_app:app", env=env) as app:
        pushpin.origin_port = app.port
        pushpin.start()
        # The pages reach Pushpin through a gate, as through a load balancer that checks Pushpin's health:
        # a Pushpin still starting answers some requests 500, which would make EventSource give up for good.
        gate = CuttableProxy(pushpin.http_port)
        try:
            alice, bob = open_chat(browser, gate.url), open_chat(browser, gate.url)
            send_from_page(alice, "alice", "hi bob")
            wait_for_messages(bob, 1)
            send_from_page(bob, "bob", "hi alice")
            for page in (alice, bob):
                got = wait_for_messages(page, 2)
                assert [(m["name"], m["text"]) for m in got] == [("alice", "hi bob"), ("bob", "hi alice")]
            gate.cut()  # the balancer takes Pushpin out of service
            pushpin.stop()  # every held connection drops
            for page in (alice, bob):
                page.wait_for_selector("#status[data-state=reconnecting]", timeout=TIMEOUT_MS)
            missed = post(app.url, "carol", "while the proxy was down")
            pushpin.start()
            gate.restore()  # and back once it serves
            for page in (alice, bob):
                page.wait_for_selector("#status[data-state=open]", timeout=TIMEOUT_MS)
            after = post(app.url, "carol", "after the restart")
            for page in (alice, bob):
                got = wait_for_messages(page, 4)
                assert [m["text"] for m in got][2:] == ["while the proxy was down", "after the restart"]
                assert [m["id"] for m in got][2:] == [missed, after]  # resumed by Last-Event-ID, once each
            alice.screenshot(path=str(tmp_path / "through-pushpin.png"))
            alice.close()
            bob.close()
        finally:
            gate.close()
            pushpin.stop()
