"""Each example runs as a real server from its own file, a copy alone in a new directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.chat import chat_once
from tests.support.redis_server import free_port
from tests.support.servers.harness import start_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["flask_chat", "bottle_chat", "pyramid_app"]


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
def test_example_file_runs_and_chats(name: str, tmp_path: Path) -> None:
    # A copy, alone in a new directory: it reads nothing next to it in the repository.
    shutil.copy(ROOT / "examples" / f"{name}.py", tmp_path)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, f"{name}.py", str(port)], cwd=tmp_path, env=env,
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


@pytest.mark.integration
def test_auth_example_runs_as_a_file() -> None:
    with start_server("waitress", "examples.auth_flask:app") as server, httpx.Client(timeout=5) as client:
        assert client.post(server.url + "/login", data={"name": "alice"}).status_code == 200
        with client.stream("GET", server.url + "/events?channel=user:alice") as stream:
            assert stream.status_code == 200
            chunks = stream.iter_raw()
            next(chunks)
            event_id = httpx.post(server.url + "/notify/alice", content="hi alice", timeout=5).text
            body = next(chunks)
        assert f"id: {event_id}\ndata: hi alice\n\n".encode() in body
        assert httpx.get(server.url + "/events?channel=user:alice", timeout=5).status_code == 403  # no cookie
