"""Fixtures for interop tests with real peers (see tests/interop/peers.py).

- ``pki``: a session-wide test CA with server and client certificates.
- ``tones``: 440 Hz and 1000 Hz 8 kHz WAVs and a 440 Hz PCMU file for sipp's rtp_stream.
- ``procs``: starts peers and always stops them (reverse order) at teardown; when the test
  failed, the log tails of every peer are printed into the report.
- ``netns``: a fresh network namespace with only ``lo``, deleted afterwards.
- ``kamailio``: a running TLS registrar/proxy on 127.0.0.1 (random port).
- ``need``: ``need("sipp", "kamailio")`` skips locally / fails under CI if binaries are missing.
- ``gateway``: ``gateway(provider_port, **layout)`` starts the real gateway (``python -m gateway
  run``) in front of a provider on 127.0.0.1 and waits for its verified provider connection.

Tests marked ``@pytest.mark.matrix(peer=..., scenario=...)`` have their outcome recorded for
docs/interop.md (tests/interop/matrix.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.lab.audio import write_tone, write_ulaw_tone
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.matrix import MARKER_HELP, MatrixRecorder
from tests.interop.peers import (
    Kamailio,
    ManagedProcess,
    NetNamespace,
    require_binaries,
)
from tests.pki import TestPki, make_test_pki

P = TypeVar("P", bound=ManagedProcess)


@dataclass(frozen=True)
class Tones:
    """Tone files shared by a test session."""

    wav_440: Path
    wav_1000: Path
    ulaw_440: Path


class ProcessSet:
    """Peers started by one test, stopped in reverse order at teardown."""

    def __init__(self) -> None:
        """Start empty."""
        self.procs: list[ManagedProcess] = []

    def start(self, proc: P) -> P:
        """Register ``proc`` for cleanup, then start it (its own readiness wait included)."""
        self.procs.append(proc)
        proc.start()
        return proc

    def stop_all(self) -> None:
        """Stop every registered process, newest first; never raises for one failure."""
        errors: list[str] = []
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{proc.name}: {exc}")
        if errors:
            raise AssertionError("cleanup failed:\n" + "\n".join(errors))

    def log_tails(self) -> str:
        """Log tails of all registered processes."""
        return "\n".join(p.log_tail(40) for p in self.procs if p.proc is not None)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``matrix`` mark and the recorder of docs/interop.md's results."""
    config.addinivalue_line("markers", MARKER_HELP)
    if not config.pluginmanager.has_plugin("interop-matrix"):
        config.pluginmanager.register(MatrixRecorder(), "interop-matrix")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item so fixtures can see if the test failed."""
    report = yield
    setattr(item, f"_report_{report.when}", report)
    return report


@pytest.fixture
def need() -> Callable[..., dict[str, str]]:
    """``need(*binaries)``: skip (locally) or fail (CI) when a peer binary is missing."""
    return require_binaries


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A test CA, a server cert (SAN IP:127.0.0.1, localhost, provider.test) and a client
    cert."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tones(tmp_path_factory: pytest.TempPathFactory) -> Tones:
    """Ten-second tone files: 440 Hz and 1000 Hz WAV (8 kHz mono), 440 Hz headerless PCMU."""
    d = tmp_path_factory.mktemp("tones")
    return Tones(
        wav_440=write_tone(d / "tone440.wav", 440.0, 10.0),
        wav_1000=write_tone(d / "tone1000.wav", 1000.0, 10.0),
        ulaw_440=write_ulaw_tone(d / "tone440.ulaw", 440.0, 10.0),
    )


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[ProcessSet]:
    """A :class:`ProcessSet`; peers are stopped at teardown, logs printed on failure."""
    ps = ProcessSet()
    try:
        yield ps
    finally:
        report = getattr(request.node, "_report_call", None)
        if report is not None and report.failed:
            print("\n===== peer logs =====\n" + ps.log_tails())
        ps.stop_all()


@pytest.fixture
def netns(need: Callable[..., dict[str, str]]) -> Iterator[NetNamespace]:
    """A fresh namespace (unique name with our PID) with only ``lo``; always deleted."""
    need("ip")
    ns = NetNamespace()
    try:
        ns.create()
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def kamailio(
    need: Callable[..., dict[str, str]], pki: TestPki, tmp_path: Path, procs: ProcessSet
) -> Kamailio:
    """A running kamailio TLS registrar/proxy on 127.0.0.1 (``kamailio.tls_address``)."""
    need("kamailio")
    return procs.start(Kamailio(tmp_path / "kamailio", pki))


GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture
def gateway(pki: TestPki, tmp_path: Path, procs: ProcessSet) -> GatewayFactory:
    """``gateway(provider_port, *, wait_up=True, **layout)``: start the real gateway (LAN
    127.0.0.20, WAN 127.0.0.21, fresh ports) in front of a provider on
    ``127.0.0.1:provider_port``, trusting the test CA. It is stopped by PID at teardown (after
    peers started later, before peers started earlier). ``layout`` goes to
    :class:`GatewayLayout`, whose ``config`` mapping is merged over the default settings
    (tests/gateway_config.py). Unless ``wait_up`` is false, waits until the log says the
    verified provider connection is up.
    """
    counter = itertools.count(1)

    def start(
        provider_port: int,
        *,
        wait_up: bool = True,
        **layout: Any,
    ) -> GatewayProcess:
        lay = GatewayLayout(provider_port=provider_port, **layout)
        gw = procs.start(GatewayProcess(tmp_path / f"gateway{next(counter)}", lay, pki))
        if wait_up:
            gw.wait_provider_up()
        return gw

    return start
