"""The examples: each app chats in-process, and each file runs as a real server."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from werkzeug.test import Client

from sse_wsgi.testing import read_events
from tests.chat import chat_once
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["flask_chat", "bottle_chat", "pyramid_app"]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Pyramid's Configurator looks its caller up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_chats_in_process(name: str) -> None:
    app = load(name).app
    client = Client(app)
    page = client.get("/")
    assert page.status_code == 200 and b"new EventSource(" in page.data

    def send(publisher) -> None:
        assert client.post("/send", json={"name": "ann", "text": "two\nlines ✓"}).status_code == 200

    [event] = read_events(app, "/events?channel=chat", 1, publish=send)
    assert event.type == "chat"
    assert json.loads(event.data) == {"name": "ann", "text": "two\nlines ✓"}
    assert client.post("/send", data=b"nope").status_code == 400
    app.publisher.close()


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the example exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.integration
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_file_runs_and_chats(name: str) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, f"examples/{name}.py", str(port)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        event, sent_id = chat_once(f"http://localhost:{port}", {"name": "bo", "text": "ünï"})
        assert (event.type, event.last_event_id) == ("chat", sent_id)
        assert json.loads(event.data) == {"name": "bo", "text": "ünï"}
    finally:
        proc.terminate()
        proc.wait(10)
