"""The documentation holds: the tests the promises page names exist, links resolve, the README stays short.

Pure file reads: no server, no network.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PROMISES = DOCS / "promises.md"
CI_RUN = ROOT / ".ci" / "run"

DEMO_COMMAND = "python -m pip install -e . && python -m sse_wsgi"
TEST_COMMAND = "sudo apt-get install -y chromium redis-server redis-tools pushpin && python -m pip install tox && tox"
README_MAX_LINES = 220

_BACKTICKED = re.compile(r"`([^`\n]+)`")
_TEST_NAME = re.compile(r"(?:test_|Test)\w+")
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def promise_table_rows(text: str) -> list[str]:
    """The rows of the first table on the page (the promises), header and rule left out."""
    rows: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return [row for row in rows[1:] if not re.fullmatch(r"[|\s:-]+", row)]


def names_in(rows: list[str]) -> set[str]:
    """Every backticked name that starts with ``test_`` or ``Test`` (a path like ``tests/x.py`` is not one)."""
    return {code.strip() for row in rows for code in _BACKTICKED.findall(row) if _TEST_NAME.fullmatch(code.strip())}


def paths_in(rows: list[str]) -> set[str]:
    """Every backticked ``tests/...py`` path."""
    return {code for row in rows for code in _BACKTICKED.findall(row) if re.fullmatch(r"tests/[\w/]+\.py", code)}


@cache
def source_of_the_tests() -> str:
    """The source text of every ``tests/**/*.py`` file."""
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted((ROOT / "tests").rglob("*.py")))


def is_defined(name: str, source: str) -> bool:
    """True when *name* is a function, a class or an assigned name in *source*.

    A parametrised test is named by its base name (``test_x``, collected as ``test_x[case]``),
    which is its ``def``.
    """
    base = name.split("[", 1)[0]
    pattern = rf"^\s*(?:async\s+def|def|class)\s+{re.escape(base)}\b|^\s*{re.escape(base)}\s*[:=]"
    return re.search(pattern, source, re.M) is not None


def relative_links(path: Path) -> list[str]:
    """The targets of the Markdown links in *path* that point into this repository (no URL, no bare anchor)."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    targets = []
    for target in _LINK.findall(text):
        if target.startswith("#") or re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
            continue
        targets.append(target)
    return targets


def last_command(script: str) -> str:
    """The last line of a shell script that is neither blank nor a comment."""
    lines = [line.strip() for line in script.splitlines()]
    return [line for line in lines if line and not line.startswith("#")][-1]


def test_every_test_the_promises_page_names_exists() -> None:
    rows = promise_table_rows(PROMISES.read_text(encoding="utf-8"))
    names = names_in(rows)
    assert len(rows) >= 20 and len(names) >= 40, "the promise table was not found, or names no tests"
    source = source_of_the_tests()
    missing = sorted(name for name in names if not is_defined(name, source))
    absent_files = sorted(path for path in paths_in(rows) if not (ROOT / path).is_file())
    assert not missing, f"docs/promises.md names tests that no file under tests/ defines: {missing}"
    assert not absent_files, f"docs/promises.md names test files that do not exist: {absent_files}"


def test_the_readme_stays_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move detail to docs/"
    pages = [README, *sorted(DOCS.glob("*.md"))]
    assert len(pages) > 1, "docs/ has no pages"
    broken = []
    for page in pages:
        for target in relative_links(page):
            file = unquote(target.split("#", 1)[0].split("?", 1)[0])
            if not (page.parent / file).resolve().exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"relative links to files that do not exist: {broken}"


def test_the_readme_gives_the_two_commands_ci_runs() -> None:
    readme = README.read_text(encoding="utf-8")
    assert DEMO_COMMAND in readme.splitlines()
    assert TEST_COMMAND in readme.splitlines()
    command = last_command(CI_RUN.read_text(encoding="utf-8")).removeprefix("exec ")
    assert command.split()[0] == "tox", f".ci/run ends with {command!r}, not with tox"


def test_the_architecture_page_names_every_module_of_the_package_and_no_other() -> None:
    """docs/architecture.md's module table is the package as it is: a module added or moved must be described."""
    named = set(re.findall(r"^\| `(sse_wsgi/[\w/]+\.py)` \|", (DOCS / "architecture.md").read_text(), re.M))
    present = {path.relative_to(ROOT).as_posix() for path in (ROOT / "sse_wsgi").rglob("*.py")}
    assert named == present, f"not described: {sorted(present - named)}; gone: {sorted(named - present)}"
