"""Top-level pytest setup: tests under tests/interop are marked ``interop`` automatically.

Run only the fast tests with ``-m "not interop"``, only the real-peer tests with ``-m interop``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_INTEROP_DIR = Path(__file__).parent / "interop"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the ``interop`` marker to every test collected from tests/interop."""
    for item in items:
        if _INTEROP_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)
