"""``python -m sse_wsgi``: arguments, the app it serves, and a real run in a subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from sse_wsgi import SSEMiddleware
from sse_wsgi.cli import main
from sse_wsgi.testing import read_events

ROOT = Path(__file__).resolve().parents[1]


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--redis URL" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--port", "x"], ["--bogus"], ["--heartbeat", "-"]])
def test_bad_arguments_exit_two(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--heartbeat", "0"], ["--retry", "-5"]])
def test_out_of_range_values_exit_two(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv, _serve=lambda app, host, port: None) == 2
    assert "error:" in capsys.readouterr().err


def test_serves_the_chat_app_on_localhost_5000_by_default() -> None:
    served = []
    assert main([], _serve=lambda app, host, port: served.append((app, host, port))) == 0
    [(app, host, port)] = served
    assert (host, port) == ("localhost", 5000)
    assert isinstance(app, SSEMiddleware)
    assert app.publisher.closed  # closed once the server returned


def test_the_served_app_chats_in_process() -> None:
    served = []
    main(["--host", "127.0.0.1", "--port", "8123", "--retry", "700"], _serve=lambda *args: served.append(args))
    [(app, host, port)] = served
    assert (host, port, app.retry) == ("127.0.0.1", 8123, 700)


def test_redis_url_that_cannot_be_reached_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--redis", "redis://127.0.0.1:1/0"], _serve=lambda *args: None) == 2
    assert "redis://127.0.0.1:1/0" in capsys.readouterr().err


def test_demo_app_publishes_posted_messages() -> None:
    from werkzeug.test import Client

    from sse_wsgi.demo import make_app

    app = make_app()
    client = Client(app)

    def send(publisher) -> None:
        response = client.post("/send", json={"name": "bob", "text": "hi"})
        assert response.status_code == 200

    [event] = read_events(app, "/events?channel=chat", 1, publish=send)
    assert (event.type, event.data) == ("chat", '{"name":"bob","text":"hi"}')
    assert client.post("/send", data=b"[1]", content_type="application/json").status_code == 400
    assert client.post("/send", json={"name": "", "text": "x"}).status_code == 400
    assert client.get("/send").status_code == 405
    assert client.get("/nowhere").status_code == 404
    assert b"EventSource" in client.get("/").data
    app.publisher.close()
