"""The admin package sees a running gateway only through ``gateway.operations``' two seams.

Every module of ``gateway/admin/`` is parsed (not imported) and each of its imports, at any
depth (function-level and ``TYPE_CHECKING`` ones included), must come from the short list
below: the seams, the typed call and security events, the media counters' record, the
configuration's settings and the listeners' limit accounting (``gateway.limits``). Nothing
from the composition root (``gateway.app``) or the cores
(``gateway.sip.b2bua`` and the rest of ``gateway.sip``, ``gateway.sdp``, ``gateway.policy``'s
engine, ``gateway.media``'s controller, ``gateway.cdr``, ``gateway.console``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.admin

ADMIN = Path(gateway.admin.__file__).parent

#: Project modules the admin package may import (a module or anything below it).
ALLOWED = (
    "gateway.admin",
    "gateway.operations",
    "gateway.sip.call_events",
    "gateway.policy.events",
    "gateway.media.control",
    "gateway.config",
    # The listeners' limit accounting (sans-IO, no core): the admin listener's own limits.
    "gateway.limits",
)


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a ``gateway`` module in the file."""
    found: list[tuple[int, str]] = []
    package = "gateway.admin"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # ``from gateway import app`` imports the module gateway.app.
            found += [(node.lineno, module)]
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return [(line, m) for line, m in found if m == "gateway" or m.startswith("gateway.")]


def is_allowed(module: str) -> bool:
    if module == "gateway":
        return True  # only ever the package itself; its submodules are checked one by one
    return any(module == a or module.startswith(a + ".") for a in ALLOWED)


def forbidden(path: Path) -> list[str]:
    # ``from gateway.operations import StatusView`` yields "gateway.operations.StatusView":
    # a name inside an allowed module, allowed with it.
    return [f"{path.name}:{line}: {m}" for line, m in project_imports(path) if not is_allowed(m)]


def test_admin_imports_only_the_seams() -> None:
    modules = sorted(ADMIN.rglob("*.py"))
    assert {p.name for p in modules} >= {"server.py", "views.py", "metrics.py", "observe.py"}
    problems = [problem for path in modules for problem in forbidden(path)]
    assert problems == []


def test_the_check_catches_a_reach_into_the_app_or_a_core(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(
        "from typing import TYPE_CHECKING\n"
        "from gateway import app\n"
        "if TYPE_CHECKING:\n"
        "    from gateway.app import Gateway\n"
        "def f():\n"
        "    import gateway.sip.b2bua\n"
        "    from gateway.cdr import read_records\n"
        "    from .views import call_views\n"
        "    from gateway.operations import StatusView\n"
    )
    assert [p.split(": ", 1)[1] for p in forbidden(sneaky)] == [
        "gateway.app",
        "gateway.app",
        "gateway.app.Gateway",
        "gateway.sip.b2bua",
        "gateway.cdr",
        "gateway.cdr.read_records",
    ]
