"""A short slice of every fuzzer, as CI runs it: a few thousand inputs per target, fixed seed.

The built-in engine without coverage tracing (tests/fuzz/engine.py), so a slice is quick and
the same inputs run every time. Crashing inputs are saved under a temporary directory and
named in the failure. A finding already reported and not yet fixed is listed in the target's
``KNOWN_FINDINGS`` (docs/robustness.md) and tolerated here, nothing else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.engine import load_target, run_builtin

SLICES = {"sip": 3000, "sdp": 3000, "b2bua": 2000, "relay": 3000}


@pytest.mark.parametrize("name", sorted(SLICES))
def test_fuzz_slice_finds_nothing_new(name: str, tmp_path: Path) -> None:
    known = getattr(load_target(name), "KNOWN_FINDINGS", ())
    result = run_builtin(name, SLICES[name], seed=20260101, crash_dir=tmp_path, coverage=False)
    assert result.inputs == SLICES[name]
    new = {sig: n for sig, n in result.signatures.items() if not any(k in sig for k in known)}
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert not new, f"{name}: {new}; inputs and tracebacks in {tmp_path}: {saved}"


def test_fuzz_slice_of_the_c_lanes(tmp_path: Path) -> None:
    """The lanes over loopback with the normal build (the ASan build runs in campaigns)."""
    from gateway.media import worker

    if worker._fastpath is None:
        pytest.skip("the C fast path is not built here (setup.py build_ext --inplace)")
    result = run_builtin("lanes", 300, seed=20260101, crash_dir=tmp_path, coverage=False)
    assert result.inputs == 300
    assert not result.signatures, f"lanes: {result.signatures}; see {tmp_path}"


def test_saved_b2bua_finding_replays_cleanly() -> None:
    from tests.fuzz.target_b2bua import check

    check(
        (Path(__file__).parent / "findings" / "b2bua-cancelled-invite-never-given-up").read_bytes()
    )


def test_saved_b2bua_reinvite_finding_replays_cleanly() -> None:
    from tests.fuzz.target_b2bua import check

    check(
        (Path(__file__).parent / "findings" / "b2bua-reinvite-without-final-response").read_bytes()
    )


def test_saved_b2bua_tel_uri_finding_replays_cleanly() -> None:
    # An INVITE to tel:+15551234567@127.0.7.20: the '@' of the tel: body went into the user
    # part of the INVITE sent to the provider, which no parser could read.
    from tests.fuzz.target_b2bua import check

    check((Path(__file__).parent / "findings" / "b2bua-tel-uri-with-an-at-sign").read_bytes())
