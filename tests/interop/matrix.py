"""The interop matrix: which real peer passed which scenario through the gateway, written down.

Two halves:

- A pytest plugin (:class:`MatrixRecorder`, registered by tests/interop/conftest.py). Tests
  carry ``@pytest.mark.matrix(peer="linphone-udp", scenario="call out")`` (several marks for
  several cells); when the session ends, each marked test's outcome (``pass``, ``fail``,
  ``skip``, ``xfail`` = a known gap the test documents) is merged into
  ``tests/interop/.matrix-results.json`` with the date and the commit it ran on. Tests not run
  in a session keep their last result, so running one test file updates only its cells.
- A command, ``python -m tests.interop.matrix [--results FILE] [--output FILE]``, that writes
  docs/interop.md from that file: a table scenario x peer -> pass / FAIL / skip / known gap /
  not run, then one section per peer with the hand-written notes of tests/interop/quirks.md
  (headless recipe, quirks the gateway absorbs) and the tests behind each cell.

Scenarios are named from the gateway's point of view: "call out" is a call from a LAN phone
toward the provider, "call in" a call from the provider side to a LAN phone, whichever peer
plays which end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / ".matrix-results.json"
QUIRKS = HERE / "quirks.md"
OUTPUT = ROOT / "docs" / "interop.md"

MARKER_HELP = (
    "matrix(peer, scenario): record this test's outcome in the interop matrix "
    "(tests/interop/matrix.py, docs/interop.md)"
)

#: How a cell reads in the table, and which outcome wins when several tests share a cell.
LABELS = {"fail": "FAIL", "xfail": "known gap", "pass": "pass", "skip": "skip"}
PRECEDENCE = ("fail", "xfail", "pass", "skip")


def commit_id(root: Path = ROOT) -> str:
    """The short commit of the work tree, with ``+dirty`` when tracked files changed."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# ---------------------------------------------------------------------------------------------
# recording (pytest plugin)


def cells_of(item: pytest.Item) -> list[tuple[str, str]]:
    """The (peer, scenario) pairs of an item's matrix marks, in the order written."""
    out: list[tuple[str, str]] = []
    for mark in reversed(list(item.iter_markers("matrix"))):
        peer = mark.kwargs.get("peer")
        scenario = mark.kwargs.get("scenario")
        if not isinstance(peer, str) or not isinstance(scenario, str):
            raise pytest.UsageError(f"{item.nodeid}: matrix mark needs peer= and scenario=")
        if (peer, scenario) not in out:
            out.append((peer, scenario))
    return out


def outcome_of(reports: Iterable[pytest.TestReport]) -> str:
    """One outcome from a test's setup, call and teardown reports."""
    result = "pass"
    for report in reports:
        # An expected failure (skipped + wasxfail) is a gap the test documents; a strict
        # xfail that passed is reported as failed by pytest itself.
        if hasattr(report, "wasxfail") and report.skipped:
            return "xfail"
        if report.failed:
            return "fail"
        if report.skipped:
            result = "skip"
    return result


class MatrixRecorder:
    """Collects the outcome of every matrix-marked test; merges them into the JSON file."""

    def __init__(self, results: Path = RESULTS) -> None:
        self.results = results
        # Stamped when the session starts: the commit the tests ran on, not whatever HEAD is
        # when they finish (other work may be committed meanwhile).
        self.date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.commit = commit_id()
        self.cells: dict[str, list[tuple[str, str]]] = {}
        self.reports: dict[str, list[pytest.TestReport]] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            cells = cells_of(item)
            if cells:
                self.cells[item.nodeid] = cells

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if item.nodeid in self.cells:
            self.reports.setdefault(item.nodeid, []).append(report)
        return report

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Merge this session's outcomes into the results file (only if any ran)."""
        if not self.reports:
            return
        fresh = [
            {
                "test": nodeid,
                "peer": peer,
                "scenario": scenario,
                "outcome": outcome_of(reports),
                "date": self.date,
                "commit": self.commit,
            }
            for nodeid, reports in self.reports.items()
            for peer, scenario in self.cells[nodeid]
        ]
        kept = [r for r in load_results(self.results) if r["test"] not in self.reports]
        self.results.write_text(json.dumps(kept + fresh, indent=1, sort_keys=True) + "\n")


def load_results(path: Path = RESULTS) -> list[dict[str, str]]:
    """The recorded rows (an empty list when nothing was recorded yet)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise SystemExit(f"{path}: not JSON ({exc}); delete it and run the interop tests") from exc
    if not isinstance(data, list):
        raise SystemExit(f"{path}: expected a list of results")
    return [dict(row) for row in data]


# ---------------------------------------------------------------------------------------------
# writing docs/interop.md


@dataclass(frozen=True)
class PeerNotes:
    """One peer's hand-written section of quirks.md."""

    peer: str
    title: str
    text: str


def parse_quirks(text: str) -> tuple[str, list[PeerNotes]]:
    """Split quirks.md into its preamble and ``## peer-id: title`` sections, in order."""
    parts = re.split(r"(?m)^## ", text)
    preamble = parts[0].strip()
    notes = []
    for part in parts[1:]:
        heading, _, body = part.partition("\n")
        peer, _, title = heading.partition(":")
        notes.append(PeerNotes(peer.strip(), title.strip() or peer.strip(), body.strip()))
    return preamble, notes


def cell_outcome(outcomes: Iterable[str]) -> str:
    """The outcome a cell shows: a failure beats a known gap beats a pass beats a skip."""
    seen = set(outcomes)
    return next((o for o in PRECEDENCE if o in seen), "")


def render(rows: list[dict[str, str]], quirks: str) -> str:
    """docs/interop.md from the recorded rows and the text of quirks.md."""
    preamble, notes = parse_quirks(quirks)
    order = [n.peer for n in notes]
    peers = order + sorted({r["peer"] for r in rows} - set(order))
    scenarios: list[str] = []
    for row in sorted(rows, key=lambda r: (_scenario_rank(r["scenario"]), r["scenario"])):
        if row["scenario"] not in scenarios:
            scenarios.append(row["scenario"])
    by_cell: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        by_cell.setdefault((row["peer"], row["scenario"]), []).append(row)
    runs = sorted({(r["date"], r["commit"]) for r in rows}, reverse=True)

    out = [
        "# Interop matrix",
        "",
        "<!-- Written by `python -m tests.interop.matrix` from tests/interop/.matrix-results.json"
        " and tests/interop/quirks.md; edit quirks.md, not this file. -->",
        "",
    ]
    if runs:
        latest = runs[0]
        out.append(f"Last run: {latest[0]}, commit `{latest[1]}`.")
        older = [f"{d} (`{c}`)" for d, c in runs[1:]]
        if older:
            out.append("Some cells come from earlier runs: " + ", ".join(older) + ".")
    else:
        out.append("No interop run recorded yet: run `.venv/bin/pytest tests/interop` first.")
    out += ["", preamble, ""] if preamble else [""]
    counts = {o: sum(1 for r in rows if r["outcome"] == o) for o in PRECEDENCE}
    out.append(
        "Cells: " + ", ".join(f"{LABELS[o]} {counts[o]}" for o in PRECEDENCE if counts[o]) + "."
        if rows
        else ""
    )
    # Scenarios down, peers across: there are many more scenarios than peers.
    out += ["", "| scenario | " + " | ".join(peers) + " |"]
    out.append("|---|" + "---|" * len(peers))
    for scenario in scenarios:
        cells = []
        for peer in peers:
            outcome = cell_outcome(r["outcome"] for r in by_cell.get((peer, scenario), []))
            cells.append(LABELS.get(outcome, "·"))
        out.append(f"| {scenario} | " + " | ".join(cells) + " |")
    out += [
        "",
        "`·` not run (no test for it, or never recorded); `known gap`: a test asserts the "
        "intended behaviour and is marked xfail(strict) until the gateway does it.",
        "",
    ]
    notes_by_peer = {n.peer: n for n in notes}
    for peer in peers:
        note = notes_by_peer.get(peer)
        out += [f"## {peer}" + (f": {note.title}" if note and note.title != peer else ""), ""]
        if note and note.text:
            out += [note.text, ""]
        tests = sorted(
            {(r["test"], r["scenario"], r["outcome"]) for r in rows if r["peer"] == peer},
            key=lambda t: (_scenario_rank(t[1]), t[1], t[0]),
        )
        if tests:
            out.append("Tests:")
            out.append("")
            out += [f"- {scenario}: `{test}` — {LABELS[o]}" for test, scenario, o in tests]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


#: Scenario columns in a reading order (the rest follow alphabetically).
_SCENARIO_ORDER = ("register", "call out", "call in")


def _scenario_rank(scenario: str) -> int:
    for rank, prefix in enumerate(_SCENARIO_ORDER):
        if scenario == prefix or scenario.startswith(prefix + " "):
            return rank
    return len(_SCENARIO_ORDER)


def main(argv: list[str] | None = None) -> int:
    """Write docs/interop.md (or ``--output``) from the recorded results."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.interop.matrix", description=main.__doc__
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--quirks", type=Path, default=QUIRKS)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    rows = load_results(args.results)
    args.output.write_text(render(rows, args.quirks.read_text()))
    print(f"wrote {args.output} ({len(rows)} results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
