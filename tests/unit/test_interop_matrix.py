"""The interop matrix writer (tests/interop/matrix.py): outcomes per test, cells per peer and
scenario, the page it writes, and the recorder inside a real pytest session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.interop.matrix import cell_outcome, parse_quirks, render

pytest_plugins = ["pytester"]

QUIRKS = """Preamble line.

## linphone-udp: linphonec as the plain phone

Needs a terminal on stdin.

## kamailio-tls
"""


def row(
    test: str, peer: str, scenario: str, outcome: str, date: str = "2026-12-04 10:00 UTC"
) -> dict[str, str]:
    return {
        "test": test,
        "peer": peer,
        "scenario": scenario,
        "outcome": outcome,
        "date": date,
        "commit": "abc1234",
    }


def test_quirks_sections_keep_their_order_and_titles() -> None:
    preamble, notes = parse_quirks(QUIRKS)
    assert preamble == "Preamble line."
    assert [(n.peer, n.title, n.text) for n in notes] == [
        ("linphone-udp", "linphonec as the plain phone", "Needs a terminal on stdin."),
        ("kamailio-tls", "kamailio-tls", ""),
    ]


def test_a_failure_beats_a_known_gap_beats_a_pass_beats_a_skip() -> None:
    assert cell_outcome(["pass", "skip"]) == "pass"
    assert cell_outcome(["pass", "xfail"]) == "xfail"
    assert cell_outcome(["xfail", "fail", "pass"]) == "fail"
    assert cell_outcome([]) == ""


def test_page_has_a_row_per_peer_a_column_per_scenario_and_the_notes() -> None:
    rows = [
        row("t.py::a", "linphone-udp", "call in", "pass"),
        row("t.py::b", "linphone-udp", "register", "pass"),
        row("t.py::c", "kamailio-tls", "call in", "fail", "2026-12-03 09:00 UTC"),
        row("t.py::d", "rtpengine-edge", "call in (UDP/TLS)", "xfail"),
    ]
    page = render(rows, QUIRKS)
    lines = page.splitlines()
    assert "Last run: 2026-12-04 10:00 UTC, commit `abc1234`." in lines
    assert "Some cells come from earlier runs: 2026-12-03 09:00 UTC (`abc1234`)." in lines
    header = next(line for line in lines if line.startswith("| scenario |"))
    assert header == "| scenario | linphone-udp | kamailio-tls | rtpengine-edge |"
    assert "| register | pass | · | · |" in lines
    assert "| call in | pass | FAIL | · |" in lines
    assert "| call in (UDP/TLS) | · | · | known gap |" in lines
    assert "## linphone-udp: linphonec as the plain phone" in lines
    assert "Needs a terminal on stdin." in lines
    assert "- call in (UDP/TLS): `t.py::d` — known gap" in lines


def test_recorder_merges_outcomes_of_marked_tests(pytester: pytest.Pytester) -> None:
    results = pytester.path / "results.json"
    results.write_text(json.dumps([row("old.py::kept", "sipp-udp", "register", "pass")]))
    pytester.makeconftest(
        f"""
from pathlib import Path
from tests.interop.matrix import MARKER_HELP, MatrixRecorder

def pytest_configure(config):
    config.addinivalue_line("markers", MARKER_HELP)
    config.pluginmanager.register(MatrixRecorder(Path({str(results)!r})), "interop-matrix")
"""
    )
    pytester.makepyfile(
        test_cells="""
import pytest

@pytest.mark.matrix(peer="p", scenario="ok")
def test_ok():
    pass

@pytest.mark.matrix(peer="p", scenario="bad")
def test_bad():
    assert False

@pytest.mark.matrix(peer="p", scenario="gap")
@pytest.mark.xfail(strict=True, reason="not yet")
def test_gap():
    assert False

@pytest.mark.matrix(peer="p", scenario="skipped")
def test_skipped():
    pytest.skip("no binary")

def test_unmarked():
    pass
"""
    )
    pytester.syspathinsert(str(Path(__file__).resolve().parents[2]))
    pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio").assert_outcomes(
        passed=2, failed=1, xfailed=1, skipped=1
    )
    recorded = {r["test"].split("::")[-1]: r["outcome"] for r in json.loads(results.read_text())}
    assert recorded == {
        "kept": "pass",
        "test_ok": "pass",
        "test_bad": "fail",
        "test_gap": "xfail",
        "test_skipped": "skip",
    }
