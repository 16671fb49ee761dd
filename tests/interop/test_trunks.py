"""Several trunks against real providers: registration and calls on the first trunk, failover
to the backup when the primary's link is lost, when it refuses a call with 503 or when it
does not answer at all, routes by destination, and per-trunk number formats
(gateway.sip.trunks; RFC 3261 §16.7 and §8.1.3.4 on 503 and 408 as "try elsewhere").

Layout (loopback; every port fresh per test):

    phone A 127.0.5.10 ─┐                      ┌─ "primary": kamailio 127.0.0.1 (TLS)
                        ├─ UDP ─ gateway ─ TLS ┤     or a TLS server on 127.0.5.30 that
    phone B 127.0.5.11 ─┘ LAN .20   WAN .21    │     answers every INVITE with 503 (or not)
                                               └─ "backup": kamailio 127.0.0.1 (TLS)
                                                     └─ stunnel ─ sipp 127.0.5.40 (far end)

Which provider a request reached is read from that kamailio's own log (one ``REQ`` line per
request it received), never from the gateway's. Every peer is a child process stopped by PID
(``procs``) or a thread of this test stopped at its end; readiness is polled for.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import GatewayFactory, ProcessSet
from tests.interop.gateway_process import GatewayProcess
from tests.interop.peers import Kamailio, Sipp, Stunnel, free_port, status_code
from tests.interop.test_signalling import (
    Need,
    gateway_events,
    kamailio_contacts,
    kamailio_requests,
    requests,
    responses,
    sipp_messages,
    srtp_key,
    tls_register_at,
)
from tests.pki import TestPki, write_pair

PHONE_A = "127.0.5.10"
PHONE_B = "127.0.5.11"
#: The "primary" that is up but refuses every call (its own certificate names this address).
REFUSER = "127.0.5.30"
#: The provider-side far end (sipp over TCP; stunnel gives it TLS toward kamailio).
FAR_END = "127.0.5.40"
#: The providers' SIP domain (kamailio's address).
PROVIDER = "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def peers(need: Need) -> None:
    """The peers every test here needs."""
    need("sipp", "kamailio", "kamcmd")


def trunk(
    name: str, port: int, pki: TestPki, *, host: str = PROVIDER, **extra: Any
) -> dict[str, Any]:
    """One [[trunks]] entry for a provider at ``host:port`` trusted through the test CA."""
    return {
        "name": name,
        "provider_host": host,
        "provider_port": port,
        "domain": PROVIDER,
        "trust": {"ca_bundle": str(pki.ca_cert)},
        **extra,
    }


def start_gateway(
    gateway: GatewayFactory,
    trunks: Sequence[Mapping[str, Any]],
    *,
    routes: Sequence[Mapping[str, Any]] = (),
    config: Mapping[str, Any] | None = None,
) -> GatewayProcess:
    """The gateway with ``trunks`` (and ``routes``); waits until every trunk's link is up."""
    settings: dict[str, Any] = {"trunks": list(trunks), **(config or {})}
    if routes:
        settings["routes"] = list(routes)
    gw = gateway(trunks[0]["provider_port"], wait_up=False, config=settings)
    for t in trunks:
        host, port = re.escape(t["provider_host"]), t["provider_port"]
        gw.wait_log(rf"provider connected: {host}:{port}\b", timeout=15)
    return gw


def register_phone(
    tmp_path: Path, procs: ProcessSet, gw: GatewayProcess, user: str, *, contact_port: int
) -> Sipp:
    """REGISTER ``user`` from phone B through the gateway (Contact PHONE_B:contact_port)."""
    reg = procs.start(
        Sipp(
            tmp_path / f"reg-{user}",
            "register",
            host=PHONE_B,
            remote=gw.lan,
            user=user,
            domain=gw.lan[0],
            contact=f"sip:{user}@{PHONE_B}:{contact_port}",
            name=f"reg-{user}",
        )
    )
    reg.wait_done(20, expect_success=1)
    return reg


def phone_b(tmp_path: Path, procs: ProcessSet, *, calls: int = 1) -> Sipp:
    """Phone B: a sipp UAS that answers ``calls`` calls, bound and ready."""
    return procs.start(
        Sipp(tmp_path / "phone-b", "uas_answer", host=PHONE_B, user="1002", calls=calls,
             name="phone-b")
    )  # fmt: skip


def phone_a_calls(
    tmp_path: Path,
    procs: ProcessSet,
    gw: GatewayProcess,
    to_user: str,
    *,
    name: str,
    scenario: str = "uac_invite",
    params: Mapping[str, str] | None = None,
) -> Sipp:
    """Phone A (sipp UAC, the gateway as outbound proxy) calls ``to_user`` once."""
    return procs.start(
        Sipp(
            tmp_path / name,
            scenario,
            host=PHONE_A,
            remote=gw.lan,
            user="1001",
            to_user=to_user,
            domain=gw.lan[0],
            name=name,
            params={"hold_ms": "200", **(params or {})},
        )
    )


def invites_from_gateway(kam: Kamailio) -> list[str]:
    """The INVITEs ``kam`` received from the gateway's WAN side over TLS (Request-URIs)."""
    return [
        r.split(" ", 1)[0]
        for r in kamailio_requests(kam, "INVITE")
        if " from 127.0.0.21:" in r and r.endswith("proto tls")
    ]


def provider_far_end(
    tmp_path: Path, procs: ProcessSet, pki: TestPki, kam: Kamailio, user: str, *, calls: int = 1
) -> Sipp:
    """A provider-side party: sipp on FAR_END (TCP) behind stunnel (TLS), registered at
    ``kam`` as ``user``; it answers ``calls`` calls with SRTP."""
    port = free_port(FAR_END, proto="tcp")
    tunnel = Stunnel(tmp_path / "stunnel", pki)
    inbound = tunnel.add_server((FAR_END, port)).accept  # kamailio -> TLS -> sipp's TCP
    procs.start(tunnel)
    contact = f"sip:{user}@{inbound[0]}:{inbound[1]};transport=tls"
    party = procs.start(
        Sipp(
            tmp_path / "far-end",
            "wan_uas_answer",
            host=FAR_END,
            port=port,
            transport="t1",
            user=user,
            contact=contact,
            calls=calls,
            name="far-end",
            params={"crypto_key": srtp_key()},
        )
    )
    assert status_code(tls_register_at(kam, pki, user, contact)) == 200
    return party


class RefusingProvider:
    """A provider whose TLS link is up (it answers keep-alives, RFC 5626 §4.4.1) but who
    answers every INVITE with 100 Trying, then 503: a trunk that cannot take calls now. With
    ``silent`` set it answers INVITEs with nothing at all (a provider that hangs).

    Runs on threads of the test process: one accepting, one per connection.
    """

    def __init__(self, cert: Path, key: Path, host: str = REFUSER) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server((host, 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        #: The requests received (head and body), in order.
        self.received: list[str] = []
        self.silent = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    def start(self) -> None:
        self._spawn(self._accept)

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):  # the gateway may have closed it already
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed: stopping
            self._conns.append(raw)
            self._spawn(self._serve, raw)

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                buf = b""
                while not self._stop.is_set():
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    buf = self._handle(tls, buf)
        except (OSError, ssl.SSLError):
            return  # the gateway went away or the test is stopping

    def _handle(self, tls: ssl.SSLSocket, buf: bytes) -> bytes:
        """Answer every complete message at the start of ``buf``; return what is left."""
        while True:
            if buf.startswith(b"\r\n\r\n"):
                tls.sendall(b"\r\n")  # the keep-alive pong
                buf = buf[4:]
                continue
            if buf == b"\r\n" or b"\r\n\r\n" not in buf:
                return buf
            buf = buf.lstrip(b"\r\n")
            head, _, rest = buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(rest) < length:
                return buf
            buf = rest[length:]
            lines = head.decode("utf-8", "replace").split("\r\n")
            self.received.append((head + b"\r\n\r\n" + rest[:length]).decode("utf-8", "replace"))
            method = lines[0].split(" ", 1)[0]
            if method == "ACK" or (method == "INVITE" and self.silent):
                continue
            if method == "INVITE":
                tls.sendall(self._response(lines, "100 Trying", to_tag=False))
                tls.sendall(self._response(lines, "503 Service Unavailable"))
            else:
                tls.sendall(self._response(lines, "405 Method Not Allowed"))

    @staticmethod
    def _response(lines: list[str], status: str, *, to_tag: bool = True) -> bytes:
        """A response to the request whose start line and headers are ``lines`` (§8.2.6.2)."""
        out = [f"SIP/2.0 {status}"]
        for line in lines[1:]:
            name = line.split(":", 1)[0].strip().lower()
            if name in ("via", "v", "from", "f", "call-id", "i", "cseq"):
                out.append(line)
            elif name in ("to", "t"):
                out.append(line + (";tag=refuser" if to_tag and ";tag=" not in line else ""))
        out += ["Content-Length: 0", "", ""]
        return "\r\n".join(out).encode()


@pytest.fixture
def refuser(pki: TestPki, tmp_path: Path) -> Iterator[RefusingProvider]:
    """A running :class:`RefusingProvider` with a certificate for REFUSER from the test CA."""
    issued = pki.issue([REFUSER])
    cert, key = write_pair(tmp_path, "refuser", [issued.certificate], issued.key)
    server = RefusingProvider(cert, key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# 1. registration and a call on the first trunk


@pytest.mark.matrix(peer="kamailio-tls", scenario="two trunks: register, call out")
def test_register_and_call_on_primary(
    peers: None, pki: TestPki, gateway: GatewayFactory, procs: ProcessSet, tmp_path: Path
) -> None:
    """With trunks "primary" and "backup" (two kamailio instances), phone B's REGISTER goes to
    the first trunk only, and a call from phone A to B leaves through primary (and comes back
    through primary to the gateway's WAN listener); backup sees no request at all."""
    primary = procs.start(Kamailio(tmp_path / "kam-primary", pki))
    backup = procs.start(Kamailio(tmp_path / "kam-backup", pki))
    gw = start_gateway(
        gateway, [trunk("primary", primary.tls_port, pki), trunk("backup", backup.tls_port, pki)]
    )
    uas = phone_b(tmp_path, procs)
    register_phone(tmp_path, procs, gw, "1002", contact_port=uas.port)
    regs = kamailio_requests(primary, "REGISTER")
    assert regs and all(" from 127.0.0.21:" in r and r.endswith("proto tls") for r in regs), regs
    assert "AoR: 1002" in kamailio_contacts(primary)

    call = phone_a_calls(tmp_path, procs, gw, "1002", name="call-primary")
    call.wait_done(20, expect_success=1)
    uas.wait_done(10, expect_success=1)
    assert invites_from_gateway(primary) == [f"sip:1002@{PROVIDER}"], primary.stderr()[-2000:]
    assert not kamailio_requests(backup, "REGISTER"), backup.stderr()[-2000:]
    assert not kamailio_requests(backup, "INVITE"), backup.stderr()[-2000:]
    assert len(gateway_events(gw, "answered")) == 2  # A's call out, and its way back to B
    assert not gateway_events(gw, "failover")


# ---------------------------------------------------------------------------------------------
# 2. the primary's link is lost: new calls go to backup


@pytest.mark.matrix(peer="kamailio-tls", scenario="trunk failover: link lost")
def test_primary_lost_calls_go_to_backup(
    peers: None, pki: TestPki, gateway: GatewayFactory, procs: ProcessSet, tmp_path: Path
) -> None:
    """Phone B registers through the gateway (at primary); backup learns the same binding (the
    gateway's opaque contact, registered there directly, as a second provider routing the
    site's number would). Primary's kamailio is stopped by PID: the gateway logs the trunk
    down, and a new call A -> B goes out on backup, comes back from backup to the gateway's
    WAN listener, and is answered by B."""
    primary = procs.start(Kamailio(tmp_path / "kam-primary", pki))
    backup = procs.start(Kamailio(tmp_path / "kam-backup", pki))
    gw = start_gateway(
        gateway,
        [
            trunk("primary", primary.tls_port, pki, answer_timeout=4.0),
            trunk("backup", backup.tls_port, pki, answer_timeout=4.0),
        ],
    )
    uas = phone_b(tmp_path, procs)
    register_phone(tmp_path, procs, gw, "1002", contact_port=uas.port)
    contacts = re.findall(r"Address: (\S+)", kamailio_contacts(primary))
    assert len(contacts) == 1 and "@127.0.0.21:" in contacts[0], contacts
    assert status_code(tls_register_at(backup, pki, "1002", contacts[0])) == 200

    primary.stop()
    gw.wait_log(r"provider unavailable: .*\[trunk primary\]", timeout=10)
    call = phone_a_calls(tmp_path, procs, gw, "1002", name="call-backup")
    call.wait_done(20, expect_success=1)
    uas.wait_done(10, expect_success=1)

    assert invites_from_gateway(backup) == [f"sip:1002@{PROVIDER}"], backup.stderr()[-2000:]
    assert not invites_from_gateway(primary), primary.stderr()[-2000:]
    assert len(gateway_events(gw, "answered")) == 2
    # Primary was skipped, not tried and failed over from: its link was down.
    assert not gateway_events(gw, "failover")


# ---------------------------------------------------------------------------------------------
# 3. primary refuses the call with 503: the call goes on to backup


@pytest.mark.matrix(peer="kamailio-tls", scenario="trunk failover: 503")
@pytest.mark.matrix(peer="sipp-tls-stunnel", scenario="trunk failover: 503")
def test_primary_503_fails_over_to_backup(
    peers: None,
    need: Need,
    pki: TestPki,
    refuser: RefusingProvider,
    gateway: GatewayFactory,
    procs: ProcessSet,
    tmp_path: Path,
) -> None:
    """Primary is up (verified TLS, keep-alives answered) but answers the INVITE with 100 and
    then 503. The gateway ACKs the 503 and sends the call to backup (kamailio) with fresh SRTP
    keys, where a provider-side party answers it; phone A sees 200 and never the 503, and the
    gateway's JSON log has a "failover" event from primary to backup. The next call skips
    primary (it failed a call less than ``down_for`` ago) and goes straight to backup."""
    need("stunnel")
    backup = procs.start(Kamailio(tmp_path / "kam-backup", pki))
    host, port = refuser.address
    gw = start_gateway(
        gateway,
        [
            trunk("primary", port, pki, host=host, down_for=300.0),
            trunk("backup", backup.tls_port, pki),
        ],
    )
    far = provider_far_end(tmp_path, procs, pki, backup, "2000", calls=2)
    first = phone_a_calls(tmp_path, procs, gw, "2000", name="call-1")
    first.wait_done(20, expect_success=1)

    # Primary got the INVITE and the ACK of its 503; backup carried the call.
    starts = [r.split("\r\n", 1)[0] for r in refuser.received]
    assert starts == [f"INVITE sip:2000@{PROVIDER} SIP/2.0", f"ACK sip:2000@{PROVIDER} SIP/2.0"]
    assert invites_from_gateway(backup) == [f"sip:2000@{PROVIDER}"], backup.stderr()[-2000:]
    got = sipp_messages(first)
    assert responses(got, 200, "INVITE") and not responses(got, 503), got
    [failover] = gateway_events(gw, "failover")
    assert failover["from_trunk"] == "primary" and failover["to_trunk"] == "backup", failover
    assert "503" in failover["reason"], failover
    # Each trunk got its own SRTP master key (RFC 4568 §6.1: fresh for every offer).
    [to_backup] = requests(sipp_messages(far), "INVITE")
    primary_keys = re.findall(r"inline:([^|\s]+)", refuser.received[0])
    backup_keys = re.findall(r"inline:([^|\s]+)", to_backup)
    assert primary_keys and backup_keys and not set(primary_keys) & set(backup_keys)

    second = phone_a_calls(tmp_path, procs, gw, "2000", name="call-2")
    second.wait_done(20, expect_success=1)
    far.wait_done(10, expect_success=2)
    assert len(refuser.received) == 2, refuser.received  # primary skipped: nothing more
    assert len(invites_from_gateway(backup)) == 2, backup.stderr()[-2000:]
    assert len(gateway_events(gw, "failover")) == 1
    assert len(gateway_events(gw, "answered")) == 2


@pytest.mark.matrix(peer="kamailio-tls", scenario="trunk failover: no answer")
def test_silent_primary_times_out_to_backup(
    peers: None,
    need: Need,
    pki: TestPki,
    refuser: RefusingProvider,
    gateway: GatewayFactory,
    procs: ProcessSet,
    tmp_path: Path,
) -> None:
    """Primary's link is up but it never answers the INVITE: after primary's answer_timeout
    the call goes to backup (the silent attempt is abandoned, not cancelled: §9.1 allows no
    CANCEL before a provisional) and is answered there; the failover event says why."""
    need("stunnel")
    refuser.silent = True
    backup = procs.start(Kamailio(tmp_path / "kam-backup", pki))
    host, port = refuser.address
    gw = start_gateway(
        gateway,
        [
            trunk("primary", port, pki, host=host, answer_timeout=1.0),
            trunk("backup", backup.tls_port, pki),
        ],
    )
    far = provider_far_end(tmp_path, procs, pki, backup, "2000")
    call = phone_a_calls(tmp_path, procs, gw, "2000", name="call-2000")
    call.wait_done(20, expect_success=1)
    far.wait_done(10, expect_success=1)

    assert [r.split(" ", 1)[0] for r in refuser.received] == ["INVITE"], refuser.received
    assert invites_from_gateway(backup) == [f"sip:2000@{PROVIDER}"], backup.stderr()[-2000:]
    [failover] = gateway_events(gw, "failover")
    assert failover["from_trunk"] == "primary" and failover["to_trunk"] == "backup", failover
    assert failover["reason"] == "no response in 1 s", failover
    assert len(gateway_events(gw, "answered")) == 1


# ---------------------------------------------------------------------------------------------
# 4. routes by destination


@pytest.mark.matrix(peer="kamailio-tls", scenario="routes by destination")
def test_routes_choose_the_trunk(
    peers: None, pki: TestPki, gateway: GatewayFactory, procs: ProcessSet, tmp_path: Path
) -> None:
    """Routes send +44 numbers to backup and everything else to primary: a call to a London
    number reaches only backup's kamailio, a call to a US number only primary's. Nobody is
    registered there, so each provider answers 404, which reaches the phone as it is (a
    404 is no reason to try another trunk)."""
    primary = procs.start(Kamailio(tmp_path / "kam-primary", pki))
    backup = procs.start(Kamailio(tmp_path / "kam-backup", pki))
    gw = start_gateway(
        gateway,
        [trunk("primary", primary.tls_port, pki), trunk("backup", backup.tls_port, pki)],
        routes=[
            {"destinations": ["+44"], "trunks": ["backup"]},
            {"destinations": ["*"], "trunks": ["primary"]},
        ],
        # International calls are allowed on this site (the default template refuses them).
        config={"policy": {"dialplan": {"templates": ["no-premium", "no-satellite"]}}},
    )
    for number, name in (("+442079460000", "call-uk"), ("+12025550123", "call-us")):
        call = phone_a_calls(
            tmp_path, procs, gw, number, name=name, scenario="uac_expect_status",
            params={"status": "404"},
        )  # fmt: skip
        call.wait_done(20, expect_success=1)

    assert invites_from_gateway(backup) == [f"sip:+442079460000@{PROVIDER}"], backup.stderr()
    assert invites_from_gateway(primary) == [f"sip:+12025550123@{PROVIDER}"], primary.stderr()
    assert not gateway_events(gw, "failover")


# ---------------------------------------------------------------------------------------------
# 5. number formats per trunk


@pytest.mark.matrix(peer="kamailio-tls", scenario="trunk number format")
def test_national_number_format(
    peers: None, pki: TestPki, gateway: GatewayFactory, procs: ProcessSet, tmp_path: Path
) -> None:
    """A trunk with number_format "national" (a NANP site: country code 1, national prefix
    optional) gets 2025550123 for a phone dialling +12025550123, and a London number with
    the international prefix (011442079460000), in the Request-URI kamailio logs."""
    kam = procs.start(Kamailio(tmp_path / "kam-national", pki))
    gw = start_gateway(
        gateway,
        [trunk("national", kam.tls_port, pki, number_format="national")],
        config={"policy": {"dialplan": {"templates": ["no-premium", "no-satellite"]}}},
    )
    for number, name in (("+12025550123", "call-us"), ("+442079460000", "call-uk")):
        call = phone_a_calls(
            tmp_path, procs, gw, number, name=name, scenario="uac_expect_status",
            params={"status": "404"},
        )  # fmt: skip
        call.wait_done(20, expect_success=1)

    assert invites_from_gateway(kam) == [
        f"sip:2025550123@{PROVIDER}",
        f"sip:011442079460000@{PROVIDER}",
    ], kam.stderr()[-3000:]
