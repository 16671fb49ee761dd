"""The shape the code must keep (docs/design.md §1): sans-IO cores, small modules.

The cores (sip, sdp, policy and the media packet rules) take bytes, addresses and the time as
inputs and return what to send: they import no clock, no event loop, no socket and no logging,
so that they run the same under a fake clock in tests and under asyncio in production.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
CORES = [
    *sorted((PACKAGE / "sip").glob("*.py")),
    *sorted((PACKAGE / "sdp").glob("*.py")),
    *sorted((PACKAGE / "policy").glob("*.py")),
    PACKAGE / "media" / "relay.py",
    PACKAGE / "media" / "ssrc_gate.py",
    PACKAGE / "media" / "srtp.py",
    PACKAGE / "media" / "control.py",
    PACKAGE / "media" / "ports.py",
    PACKAGE / "media" / "suites.py",
    PACKAGE / "state" / "model.py",
    PACKAGE / "state" / "seal.py",
    PACKAGE / "state" / "calls.py",
    PACKAGE / "media" / "dtls.py",
    PACKAGE / "ha" / "role.py",
]
#: Modules a core may not import, and why.
FORBIDDEN = {
    "asyncio": "event loop",
    "socket": "sockets",
    "selectors": "sockets",
    "select": "sockets",
    "ssl": "sockets",
    "logging": "logging belongs to the glue",
    "time": "a clock",
    "uvloop": "event loop",
    "aiohttp": "event loop",
}
#: Policy modules that persist or format records for the glue (they read no clock either:
#: the glue passes Unix times in), allowed datetime for conversions only.
MAX_LINES = 800


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def clock_reads(path: Path) -> list[str]:
    """Calls that read the wall clock: ``datetime.now()``, ``datetime.today()``,
    ``date.today()``, ``datetime.utcnow()``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    reads = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("now", "today", "utcnow")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("datetime", "date")
        ):
            reads.append(f"line {node.lineno}: {node.func.value.id}.{node.func.attr}()")
    return reads


@pytest.mark.parametrize("path", CORES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_core_imports_no_clock_loop_socket_or_logging(path: Path) -> None:
    bad = {m: FORBIDDEN[m] for m in imported_modules(path) if m in FORBIDDEN}
    assert not bad, f"{path.name} imports {bad}"
    assert clock_reads(path) == [], f"{path.name} reads the clock"


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_is_over_800_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines: split it"


def test_the_checks_see_a_forbidden_import() -> None:
    """The import walk finds what it must (a check that could not fail proves nothing)."""
    sample = PACKAGE / "media" / "worker.py"  # glue: it owns sockets and a clock
    assert {"socket", "time"} <= imported_modules(sample)
