"""The gateway's certificates against real peers: rotation during a call, refused reloads,
refused providers, refusal to start.

What each test proves (the issue's "show it works"):

- ``test_rotation_during_call_keeps_the_call_and_next_connection_gets_new_cert``: a call
  phone A → gateway → kamailio (TLS) → gateway's WAN listener (TLS) → phone B keeps going
  while ``gateway certs rotate`` installs a new certificate and key and SIGHUP reloads them;
  it ends normally with BYE/200 on both phones; the next TLS connection to the WAN listener
  presents the new certificate (SPKI pin and serial), the one before presented the old.
- ``test_bad_material_on_reload_is_refused_and_old_cert_keeps_serving``: a key that does not
  match, then an expired certificate, put in place of the files (no ``rotate``, which would
  refuse them itself) are refused by both the file watch and SIGHUP; the log names the file
  and the reason; the listener keeps presenting the old certificate; good material is then
  taken up.
- ``test_provider_with_bad_certificate_gets_no_sip``: a provider (a Python TLS server that
  records every byte it receives, raw and decrypted) presenting an expired, wrong-name or
  unpinned certificate: the gateway refuses it, sends zero bytes of SIP, and a phone's
  REGISTER and INVITE get 503 with a Warning naming the reason.
- ``test_recording_provider_sees_sip_from_a_verified_gateway``: the control — with a good
  certificate the same recorder does receive the REGISTER (inside TLS only).
- ``test_provider_refusing_the_gateway_certificate_is_retried_with_backoff``: kamailio
  requiring a client certificate from another CA: the gateway says why ("unknown ca"), backs
  off instead of reconnecting in a tight loop, and kamailio receives no SIP.
- ``test_refuses_to_start_with_bad_identity``: ``python -m gateway run --config`` exits
  non-zero with an expired certificate or a key that does not match, naming file and reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from gateway.certs.authority import IssuedCertificate, generate_key
from gateway.certs.inspect import spki_pin
from gateway.certs.store import write_certificates, write_private_key
from tests.gateway_config import write_gateway_config
from tests.interop.conftest import GatewayFactory, ProcessSet, Tones
from tests.interop.gateway_process import GatewayLayout, gateway_config
from tests.interop.peers import Kamailio, Sipp, free_port
from tests.pki import TestPki, make_ca, make_leaf, write_pair

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
PHONE_A = "127.0.0.10"
PHONE_B = "127.0.0.11"
GATEWAY_WAN = "127.0.0.21"


# ---------------------------------------------------------------------------------------------
# certificates made by the tests


def expired(pki: TestPki, names: list[str]) -> IssuedCertificate:
    now = dt.datetime.now(dt.UTC)
    return pki.issue(
        names, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )


def write_identity(directory: Path, issued: IssuedCertificate) -> tuple[Path, Path]:
    """``cert.pem`` (the chain) and ``cert.key`` (mode 0600) in ``directory``."""
    return write_pair(directory, "cert", issued.chain, issued.key)


def with_identity(cert: Path, key: Path) -> dict[str, Any]:
    """Settings that make ``cert``/``key`` the gateway's [wan.identity]."""
    return {"wan": {"identity": {"certificate": str(cert), "private_key": str(key)}}}


@dataclass(frozen=True)
class Presented:
    pin: str
    serial: int


def presented_certificate(pki: TestPki, port: int, host: str = GATEWAY_WAN) -> Presented:
    """What a new TLS connection to the gateway's WAN listener is shown (verified against the
    test CA and the name 127.0.0.21, as a provider would)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der, "the listener presented no certificate"
    cert = x509.load_der_x509_certificate(der)
    return Presented(spki_pin(cert), cert.serial_number)


def of(issued: IssuedCertificate) -> Presented:
    return Presented(spki_pin(issued.certificate), issued.certificate.serial_number)


def gateway_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _json_lines(gw_output: str) -> list[dict[str, Any]]:
    out = []
    for line in gw_output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def log_messages(gw_output: str) -> list[str]:
    """The gateway logs JSON lines: their ``message`` fields."""
    return [str(r["message"]) for r in _json_lines(gw_output) if "message" in r]


def event_records(gw_output: str) -> list[dict[str, Any]]:
    """The gateway's call event records (JSON lines with an ``event`` field)."""
    return [r for r in _json_lines(gw_output) if "event" in r]


# ---------------------------------------------------------------------------------------------
# 1. rotation during a call


def test_rotation_during_call_keeps_the_call_and_next_connection_gets_new_cert(
    need: Callable[..., dict[str, str]],
    pki: TestPki,
    kamailio: Kamailio,
    gateway: GatewayFactory,
    procs: ProcessSet,
    tmp_path: Path,
    tones: Tones,
) -> None:
    need("sipp")
    names = [GATEWAY_WAN, "gateway.test"]
    old = pki.issue(names)
    cert, key = write_identity(tmp_path / "identity", old)
    gw = gateway(kamailio.tls_port, config=with_identity(cert, key))
    gw.wait_listening()
    listen_port = gw.layout.wan_listen_port
    assert presented_certificate(pki, listen_port) == of(old)

    # Phone B registers through the gateway; kamailio will deliver B's calls to the
    # gateway's WAN listener over TLS.
    uas_port = free_port(PHONE_B)
    reg = procs.start(
        Sipp(
            tmp_path / "reg",
            "register",
            remote=gw.lan,
            host=PHONE_B,
            user="1002",
            contact=f"sip:1002@{PHONE_B}:{uas_port}",
            params={"expires": "300"},
        )
    )
    reg.wait_done(15, expect_success=1)
    uas = procs.start(
        Sipp(
            tmp_path / "b",
            "uas_answer",
            host=PHONE_B,
            port=uas_port,
            user="1002",
            rtp_file=tones.ulaw_440,
            timeout=40,
        )
    )
    hold_s = 10
    uac = procs.start(
        Sipp(
            tmp_path / "a",
            "uac_invite",
            remote=gw.lan,
            host=PHONE_A,
            user="1001",
            to_user="1002",
            params={"hold_ms": str(hold_s * 1000)},
            rtp_file=tones.ulaw_440,
            timeout=40,
        )
    )
    # The call is up when B has seen the ACK (B's side of the call came in over TLS from
    # kamailio to the gateway's listener).
    wait_for(
        lambda: uas.msg_path.exists() and "ACK sip:" in uas.msg_path.read_text(errors="replace"),
        15,
        "the call to be established (ACK at phone B)",
    )
    answered_at = time.monotonic()

    # Rotate mid-call: the operator's command, then SIGHUP (the file watch would also do).
    new = pki.issue(names)
    staged_cert, staged_key = write_identity(tmp_path / "staged", new)
    res = gateway_cli(
        "certs", "rotate", "--config", str(gw.config_path),
        "--cert", str(staged_cert), "--key", str(staged_key),
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert spki_pin(new.certificate) in res.stdout
    gw.signal(signal.SIGHUP)
    gw.wait_log(r"certificate reloaded \(SIGHUP\)", timeout=5)
    assert time.monotonic() - answered_at < hold_s - 2, "rotation did not happen mid-call"
    assert uac.running() and uas.running(), "a phone gave up during the rotation"

    # The very next connection sees the new certificate, while the call goes on.
    now_presented = presented_certificate(pki, listen_port)
    assert now_presented == of(new)
    assert now_presented != of(old)

    # The call ends normally: A sent BYE and got 200, B received BYE and answered 200.
    uac.wait_done(hold_s + 15, expect_success=1)
    uas.wait_done(10, expect_success=1)
    assert "BYE sip:" in uas.msg_path.read_text(errors="replace")
    messages = log_messages(gw.output())
    assert not [m for m in messages if "refused" in m and "certificate" in m], messages
    # Exactly one reload: SIGHUP took the files up, the file watch did not load them again.
    assert len([m for m in messages if m.startswith("certificate reloaded")]) == 1, messages
    # B's leg came in over kamailio's TLS connection to the listener, set up before the
    # rotation; the BYE after the rotation arrived on that same connection (it kept its
    # session), and both legs ended by BYE.
    invite = _first(messages, r"recv (wan:tls:\S+): INVITE sip:gw")
    bye = _first(messages, r"recv (wan:tls:\S+): BYE sip:gw")
    assert invite == bye, (invite, bye)
    records = event_records(gw.output())
    ended = [r for r in records if r.get("event") == "ended"]
    assert {r.get("reason") for r in ended} == {"BYE from lan", "BYE from wan"}, ended
    # Media flowed both ways through both legs for the whole call (50 packets/s each way).
    closed = [r for r in records if r.get("event") == "media-closed"]
    assert len(closed) == 2, closed
    for record in closed:
        for stream in record["streams"].values():
            assert stream["lan_in_packets"] >= 40 * (hold_s - 2), record
            assert stream["lan_out_packets"] >= 40 * (hold_s - 2), record
            assert stream["drop_auth"] == 0 and stream["drop_replay"] == 0, record
    assert gw.running()


def _first(messages: list[str], pattern: str) -> str:
    for m in messages:
        found = re.search(pattern, m)
        if found:
            return found.group(1)
    raise AssertionError(f"no /{pattern}/ in the gateway log")


# ---------------------------------------------------------------------------------------------
# 2. bad material on reload


def test_bad_material_on_reload_is_refused_and_old_cert_keeps_serving(
    pki: TestPki, kamailio: Kamailio, gateway: GatewayFactory, tmp_path: Path
) -> None:
    names = [GATEWAY_WAN, "gateway.test"]
    good = pki.issue(names)
    cert, key = write_identity(tmp_path / "identity", good)
    gw = gateway(kamailio.tls_port, config=with_identity(cert, key))
    gw.wait_listening()
    port = gw.layout.wan_listen_port
    assert presented_certificate(pki, port) == of(good)

    # (a) A key that belongs to another certificate, copied over the configured key file.
    # The file watch (every 2 s) refuses it by itself and says why, once.
    write_private_key(key, generate_key())
    mismatch = f"{key}: private key does not match the certificate in {cert}"
    m = gw.wait_log(r"new certificate refused, the old one stays in service: [^\n\"]*", 6)
    assert mismatch in m.group(0)
    assert presented_certificate(pki, port) == of(good)
    # SIGHUP tries again, is refused again and says so.
    gw.signal(signal.SIGHUP)
    m = gw.wait_log(r"certificate reload \(SIGHUP\) refused[^\n\"]*", timeout=5)
    assert mismatch in m.group(0)
    assert presented_certificate(pki, port) == of(good)

    # (b) An expired certificate with its own (matching) key.
    stale = expired(pki, names)
    write_private_key(key, stale.key)
    write_certificates(cert, stale.chain)
    m = gw.wait_log(r"new certificate refused, the old one stays in service: [^\n\"]*expired", 6)
    assert f"{cert}: certificate expired" in m.group(0)
    assert presented_certificate(pki, port) == of(good)
    gw.signal(signal.SIGHUP)
    m = gw.wait_log(r"certificate reload \(SIGHUP\) refused[^\n\"]*expired[^\n\"]*", timeout=5)
    assert f"{cert}: certificate expired" in m.group(0)
    assert presented_certificate(pki, port) == of(good)
    assert gw.running()
    assert "certificate reloaded" not in gw.output()

    # Good material afterwards is taken up by the file watch alone (no signal).
    fresh = pki.issue(names)
    staged_cert, staged_key = write_identity(tmp_path / "staged", fresh)
    res = gateway_cli(
        "certs", "rotate", "--config", str(gw.config_path),
        "--cert", str(staged_cert), "--key", str(staged_key),
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    gw.wait_log(r"certificate reloaded \(files changed\)", timeout=6)
    assert presented_certificate(pki, port) == of(fresh)


# ---------------------------------------------------------------------------------------------
# 3. a provider with a bad certificate


@dataclass
class RecordingTlsServer:
    """A TLS "provider" that keeps every byte it receives: the raw stream of each connection
    (handshake records included) and the application data decrypted after a handshake."""

    cert: Path
    key: Path
    host: str = "127.0.0.1"
    port: int = 0
    handshakes_failed: list[str] = field(default_factory=list)
    handshakes_ok: int = 0
    #: Decrypted application data, all connections.
    received: bytearray = field(default_factory=bytearray)
    #: Raw bytes off the wire, all connections.
    raw: bytearray = field(default_factory=bytearray)
    connections: int = 0

    def __post_init__(self) -> None:
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(self.cert), str(self.key))
        self._sock = socket.create_server((self.host, self.port))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> RecordingTlsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._ctx.wrap_bio(incoming, outgoing, server_side=True)
        handshaken = False
        conn.settimeout(5)
        with conn:
            while True:
                try:
                    if not handshaken:
                        tls.do_handshake()
                        handshaken = True
                        with self._lock:
                            self.handshakes_ok += 1
                    while True:
                        data = tls.read(65536)
                        with self._lock:
                            self.received += data
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return
                except ssl.SSLError as exc:
                    if not handshaken:
                        with self._lock:
                            self.handshakes_failed.append(str(exc))
                    return
                finally:
                    pending = outgoing.read()
                    if pending:
                        with contextlib.suppress(OSError):
                            conn.sendall(pending)
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    if not handshaken:
                        with self._lock:
                            self.handshakes_failed.append("closed during the handshake")
                    return
                with self._lock:
                    self.raw += chunk
                incoming.write(chunk)


@pytest.fixture
def bad_provider(tmp_path: Path) -> Iterator[Callable[[IssuedCertificate], RecordingTlsServer]]:
    servers: list[RecordingTlsServer] = []

    def start(issued: IssuedCertificate) -> RecordingTlsServer:
        cert, key = write_identity(tmp_path / "provider", issued)
        server = RecordingTlsServer(cert, key).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _register_request(lan: tuple[str, int], port: int, user: str) -> bytes:
    return (
        f"REGISTER sip:{lan[0]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PHONE_A}:{port};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{lan[0]}>;tag={os.urandom(4).hex()}\r\n"
        f"To: <sip:{user}@{lan[0]}>\r\n"
        f"Call-ID: {os.urandom(8).hex()}@{PHONE_A}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@{PHONE_A}:{port}>\r\n"
        "Expires: 300\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _register(lan: tuple[str, int], user: str = "1003") -> str:
    """A phone's REGISTER over UDP; the final response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((PHONE_A, 0))
        s.settimeout(5)
        s.sendto(_register_request(lan, s.getsockname()[1], user), lan)
        while True:
            data = s.recv(65535).decode(errors="replace")
            if not data.startswith("SIP/2.0 1"):
                return data


def _header(message: str, name: str) -> str:
    m = re.search(rf"^{name}\s*:\s*(.*)$", message, re.IGNORECASE | re.MULTILINE)
    return m.group(1).strip() if m else ""


PROVIDER_CASES = {
    # certificate for the provider, config change, reason the gateway must give
    "expired": ("expired", "certificate verification failed: certificate has expired"),
    "wrong-name": ("wrong-name", "certificate verification failed: hostname mismatch"),
    "unpinned": ("unpinned", "certificate pin mismatch"),
}


@pytest.mark.parametrize("case", list(PROVIDER_CASES))
def test_provider_with_bad_certificate_gets_no_sip(
    case: str,
    need: Callable[..., dict[str, str]],
    pki: TestPki,
    gateway: GatewayFactory,
    bad_provider: Callable[[IssuedCertificate], RecordingTlsServer],
    tmp_path: Path,
) -> None:
    need("sipp")
    provider_names = ["provider.test", "127.0.0.1"]
    if case == "expired":
        issued = expired(pki, provider_names)
    elif case == "wrong-name":
        issued = pki.issue(["sip.other-provider.test"])
    else:
        issued = pki.issue(provider_names)
    server = bad_provider(issued)
    # The gateway verifies the name provider.test (SNI and check) and, for "unpinned", pins a
    # key the provider does not have.
    trust: dict[str, Any] = {"server_name": "provider.test"}
    if case == "unpinned":
        trust["spki_pins"] = [spki_pin(pki.issue(provider_names).certificate)]

    gw = gateway(server.port, wait_up=False, config={"wan": {"trust": trust}})
    expected = PROVIDER_CASES[case][1]
    gw.wait_log(r"provider connection failed: [^\n]*", timeout=10)
    failure = next(m for m in log_messages(gw.output()) if "provider connection failed" in m)
    assert expected.lower() in failure.lower(), failure

    # A phone's REGISTER: 503, and the Warning says why.
    reply = _register(gw.lan)
    assert reply.startswith("SIP/2.0 503"), reply
    warning = _header(reply, "Warning")
    assert warning.startswith("399 "), reply
    assert expected.lower() in warning.lower(), warning

    # A phone's INVITE (sipp, a real UA): 503 with a Warning, ACKed.
    uac = Sipp(
        tmp_path / "a",
        "uac_expect_final",
        remote=gw.lan,
        host=PHONE_A,
        user="1001",
        to_user="1002",
        params={"status": "503"},
        timeout=15,
    )
    with uac:
        uac.wait_done(20, expect_success=1)
    invite_reply = uac.msg_path.read_text(errors="replace")
    m = re.search(r"^Warning:[^\r\n]*", invite_reply, re.MULTILINE | re.IGNORECASE)
    assert m and expected.lower() in m.group(0).lower(), invite_reply[-2000:]

    # And the provider never saw a single byte of SIP: no application data after any
    # handshake, and nothing SIP-shaped in the clear on the wire either.
    time.sleep(0.5)
    assert server.connections >= 1
    assert bytes(server.received) == b"", bytes(server.received)[:200]
    for marker in (b"SIP/2.0", b"REGISTER", b"INVITE", b"Via:"):
        assert marker not in server.raw, marker
    if case == "unpinned":
        # The chain verified, the handshake completed, the pin check closed it at once.
        assert server.handshakes_ok >= 1
    else:
        assert server.handshakes_ok == 0, server.handshakes_failed
        assert server.handshakes_failed, "the gateway never attempted a handshake"


def test_recording_provider_sees_sip_from_a_verified_gateway(
    pki: TestPki,
    gateway: GatewayFactory,
    bad_provider: Callable[[IssuedCertificate], RecordingTlsServer],
) -> None:
    """The control for the test above: with a certificate the gateway accepts, the same
    recording provider does receive the phone's REGISTER (so "no bytes" there is not a blind
    instrument), and only inside TLS: nothing SIP-shaped on the wire."""
    server = bad_provider(pki.issue(["provider.test", "127.0.0.1"]))
    gw = gateway(server.port, config={"wan": {"trust": {"server_name": "provider.test"}}})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((PHONE_A, 0))
        s.sendto(_register_request(gw.lan, s.getsockname()[1], "1003"), gw.lan)
        wait_for(lambda: b"REGISTER sip:" in server.received, 5, "the REGISTER at the provider")
    assert server.handshakes_ok >= 1
    for marker in (b"SIP/2.0", b"REGISTER", b"Via:"):
        assert marker not in server.raw, marker


def test_provider_refusing_the_gateway_certificate_is_retried_with_backoff(
    need: Callable[..., dict[str, str]],
    pki: TestPki,
    procs: ProcessSet,
    gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    """Mutual TLS: kamailio requires a client certificate from its CA and the gateway's comes
    from another. With TLS 1.3 the gateway's handshake completes before kamailio rejects the
    certificate, so the link comes up and drops at once: the gateway must say why and back
    off, not reconnect in a tight loop, and send no SIP."""
    need("kamailio")
    kam = procs.start(Kamailio(tmp_path / "kam", pki, require_client_cert=True))
    stranger = make_ca("Some Other CA", now=dt.datetime.now(dt.UTC))
    leaf = make_leaf(stranger, [GATEWAY_WAN], now=dt.datetime.now(dt.UTC))
    cert, key = write_identity(tmp_path / "identity", leaf)
    gw = gateway(kam.tls_port, wait_up=False, config=with_identity(cert, key))
    time.sleep(3.0)
    messages = log_messages(gw.output())
    reasons = [m for m in messages if m.startswith("provider unavailable")]
    assert any("unknown ca" in m.lower() for m in reasons), messages
    # reconnect_min 0.2 s doubling to 2 s: a handful of attempts in 3 s, not hundreds.
    attempts = len([m for m in messages if m.startswith("provider connected")])
    attempts += len([m for m in messages if m.startswith("provider connection failed")])
    assert 1 <= attempts <= 8, reasons
    assert gw.running()
    assert "REQ " not in kam.output(), "kamailio received SIP"


# ---------------------------------------------------------------------------------------------
# 4. refusal to start


@pytest.mark.parametrize("case", ["expired", "key-mismatch"])
def test_refuses_to_start_with_bad_identity(case: str, pki: TestPki, tmp_path: Path) -> None:
    names = [GATEWAY_WAN]
    if case == "expired":
        cert, key = write_identity(tmp_path / "identity", expired(pki, names))
        why = f"{cert}: certificate expired"
    else:
        cert, _ = write_identity(tmp_path / "identity", pki.issue(names))
        _, key = write_identity(tmp_path / "other", pki.issue(names))
        why = f"{key}: private key does not match the certificate in {cert}"
    layout = GatewayLayout(provider_port=free_port(proto="tcp"), config=with_identity(cert, key))
    config_path = write_gateway_config(tmp_path / "gateway.toml", gateway_config(layout, pki))
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode != 0, res.stdout + res.stderr
    assert time.monotonic() - started < 20
    assert why in res.stderr, res.stderr
    # One clear line, no traceback, and nothing was listening.
    assert "Traceback" not in res.stderr, res.stderr
    assert "gateway started" not in res.stderr + res.stdout
