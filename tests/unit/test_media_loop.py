"""gateway.media.loop: which packet loop a media worker would run, and why, in words the
start-up log, /metrics and ``gateway audit`` use."""

from __future__ import annotations

import pytest

from gateway.media import worker
from gateway.media.loop import REASONS, MediaLoop, probe_media_loop


@pytest.fixture(autouse=True)
def fast_path_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_MEDIA_FASTPATH", raising=False)


def test_extension_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "_fastpath", None)
    loop = probe_media_loop(keep_core_awake=True)
    assert (loop.engine, loop.reason) == ("python", "extension not built")
    assert loop.describe() == "Python (reason: extension not built); keep_core_awake ignored"
    assert probe_media_loop(keep_core_awake=False).describe() == (
        "Python (reason: extension not built)"
    )


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    if worker._fastpath is None:
        pytest.skip("the _fastpath extension is not built here")
    monkeypatch.setenv("GATEWAY_MEDIA_FASTPATH", "0")
    loop = probe_media_loop()
    assert (loop.engine, loop.reason) == ("python", "turned off by GATEWAY_MEDIA_FASTPATH=0")


def test_another_libsrtp_major_version_is_a_signature_mismatch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if worker._fastpath is None:
        pytest.skip("the _fastpath extension is not built here")
    monkeypatch.setattr(worker, "_libsrtp_version", lambda: (3 << 24, "libsrtp3 3.0.0"))
    loop = probe_media_loop(keep_core_awake=True)
    assert (loop.engine, loop.reason) == ("python", "libsrtp signature mismatch")
    assert "libsrtp3 3.0.0 (major version 3)" in loop.detail
    assert loop.describe().startswith("Python (reason: libsrtp signature mismatch: libsrtp3")
    assert loop.describe().endswith("; keep_core_awake ignored")


def test_unreadable_libsrtp_version(monkeypatch: pytest.MonkeyPatch) -> None:
    if worker._fastpath is None:
        pytest.skip("the _fastpath extension is not built here")
    monkeypatch.setattr(worker, "_libsrtp_version", lambda: "no symbol")
    loop = probe_media_loop()
    assert (loop.engine, loop.reason) == ("python", "libsrtp version unreadable")


def test_the_c_loop_names_the_libsrtp_it_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    if worker._fastpath is None:
        pytest.skip("the _fastpath extension is not built here")
    monkeypatch.setattr(
        worker, "_libsrtp_version", lambda: ((2 << 24) | (7 << 16), "libsrtp2 2.7.0")
    )
    loop = probe_media_loop(keep_core_awake=True)
    assert loop == MediaLoop("c", "fast path built", "libsrtp2 2.7.0")
    assert loop.describe() == "C fast path (libsrtp2 2.7.0)"


def test_reasons_are_a_small_fixed_set() -> None:
    # They are metric label values: a new one must be added here on purpose.
    assert len(REASONS) == len(set(REASONS)) == 5
