"""The examples: each app chats in-process, each file runs as a real server, and each stands alone.

Standing alone: a user copies one file into a new project and runs it with only
``pip install sse-wsgi <framework>``, so an example imports the standard library,
its framework and the public API of ``sse_wsgi``, nothing else.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from werkzeug.test import Client

from sse_wsgi.testing import read_events
from tests.support.examples import load

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["flask_chat", "bottle_chat", "pyramid_app"]
EXAMPLE_FILES = sorted(path.name for path in (ROOT / "examples").glob("*.py") if not path.name.startswith("_"))
#: The public modules of sse_wsgi an example may import from; each one's names are its ``__all__``.
PUBLIC_MODULES = ["sse_wsgi", "sse_wsgi.werkzeug", "sse_wsgi.webob"]
#: What ``pip install sse-wsgi flask`` (bottle, pyramid, waitress) brings besides sse_wsgi.
FRAMEWORKS = {"flask", "werkzeug", "itsdangerous", "bottle", "pyramid", "webob", "waitress"}


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


BAD_MESSAGES = {
    "not JSON": b"nope",
    "not UTF-8": b'{"name": "\xff", "text": "hi"}',
    "not an object": b'["ann", "hi"]',
    "nested too deep": b"[" * 10_000,
    "no name": b'{"text": "hi"}',
    "a blank name": b'{"name": "  ", "text": "hi"}',
    "a name too long": json.dumps({"name": "n" * 41, "text": "hi"}).encode(),
    "a text not a string": b'{"name": "ann", "text": 3}',
    "a blank text": b'{"name": "ann", "text": "\\n "}',
    "a text too long": json.dumps({"name": "ann", "text": "t" * 2001}).encode(),
    "a body over 16 KiB": json.dumps({"name": "ann", "text": "hi", "pad": "p" * 16 * 1024}).encode(),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_refuses_a_bad_message_with_400_and_a_short_text(name: str) -> None:
    app = load(name).app
    client = Client(app)
    try:
        for what, body in BAD_MESSAGES.items():
            answer = client.post("/send", data=body, content_type="application/json")
            assert answer.status_code == 400, what
            assert answer.mimetype == "text/plain" and 0 < len(answer.text) < 100, what
        largest = {"name": "n" * 40, "text": "t" * 2000}
        answer = client.post("/send", json=largest)
        assert answer.status_code == 200 and answer.mimetype == "text/plain"
    finally:
        app.publisher.close()


def imported_names(path: Path) -> list[tuple[str, str | None]]:
    """Each import of *path* as (module, name): ``import a.b`` is ("a.b", None), ``from a import b`` ("a", "b")."""
    imports: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            imports += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}:{node.lineno}: a relative import does not survive a copy"
            imports += [(node.module or "", alias.name) for alias in node.names]
    return imports


@pytest.mark.parametrize("filename", EXAMPLE_FILES)
def test_example_imports_only_the_public_api_its_framework_and_the_standard_library(filename: str) -> None:
    public = {module: set(importlib.import_module(module).__all__) for module in PUBLIC_MODULES}
    imports = imported_names(ROOT / "examples" / filename)
    assert ("sse_wsgi", "SSEMiddleware") in imports
    for module, name in imports:
        top = module.partition(".")[0]
        if top == "sse_wsgi":
            assert module in public, f"{filename} imports {module}: not a public module of sse_wsgi"
            assert name is None or name in public[module] or f"{module}.{name}" in public, (
                f"{filename} imports {name} from {module}: not in its __all__"
            )
        else:
            assert top in sys.stdlib_module_names or top in FRAMEWORKS, (
                f"{filename} imports {module}: neither the standard library nor its framework"
            )
