"""Self-checks of the interop harness against real peers (no gateway involved).

Each test proves one helper of tests/interop/peers.py works with the real program, so a
failing gateway interop test points at the gateway, not at the harness.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.lab.audio import (
    analyse_samples,
    analyse_wav,
    ulaw_to_samples,
)
from tests.interop.conftest import ProcessSet, Tones
from tests.interop.peers import (
    Baresip,
    Capture,
    Kamailio,
    ManagedProcess,
    NetNamespace,
    PeerError,
    Rtpengine,
    Sipp,
    Stunnel,
    bdecode,
    bencode,
    byte_entropy,
    free_port,
    port_is_bound,
    status_code,
    tls_register,
    wait_for_port,
)
from tests.pki import TestPki, make_test_pki

Need = Callable[..., dict[str, str]]

# --------------------------------------------------------------------------------------------
# pure helpers (no peers)


def test_bencode_roundtrip() -> None:
    """The ng protocol codec round-trips nested values and rejects trailing junk."""
    value = {"command": "offer", "flags": ["a", "b"], "n": -3, "raw": b"\xff\x00"}
    assert bdecode(bencode(value)) == value
    assert bencode({"b": 1, "a": "x"}) == b"d1:a1:x1:bi1ee"
    with pytest.raises(ValueError):
        bdecode(b"i1ei2e")


def test_managed_process_stop_and_failure_message(tmp_path: Path) -> None:
    """stop() kills a TERM-ignoring process and its child; failures carry the log tail."""
    script = "trap '' TERM; echo started-marker; sleep 60 & sleep 60"
    proc = ManagedProcess(["bash", "-c", script], name="stubborn", logdir=tmp_path)
    with proc:
        proc.wait_ready(log_regex="started-marker", timeout=5)
        t0 = time.monotonic()
        proc.stop(grace=0.5)
        assert time.monotonic() - t0 < 3
    assert not proc.running()
    # SIGKILLed orphans linger a moment as zombies until init reaps them.
    deadline = time.monotonic() + 3
    while True:
        res = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, check=False)
        if res.stdout == b"" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert res.stdout == b"", "children of the process group survived"

    failing = ManagedProcess(
        [sys.executable, "-c", "import sys; print('boom-marker', file=sys.stderr); sys.exit(3)"],
        name="failing",
        logdir=tmp_path,
    )
    with failing, pytest.raises(PeerError, match=r"(?s)exited before.*boom-marker"):
        failing.wait_ready(log_regex="never-printed", timeout=5)
    assert failing.returncode == 3


def test_ports_and_pki(tmp_path: Path) -> None:
    """free_port/wait_for_port/port_is_bound agree; the PKI verifies with Python ssl."""
    port = free_port(span=2)
    assert not port_is_bound("127.0.0.1", port, "udp")
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        wait_for_port("127.0.0.1", port, "udp", timeout=2)
    with pytest.raises(PeerError):
        wait_for_port("127.0.0.1", port, "tcp", timeout=0.2)
    pki = make_test_pki(tmp_path / "pki")
    assert (pki.server.key.stat().st_mode & 0o777) == 0o600
    assert (pki.ca_key.stat().st_mode & 0o777) == 0o600
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server.cert, pki.server.key)
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        addr = ls.getsockname()
        c = socket.create_connection(addr)
        srv, _ = ls.accept()
        import threading

        t = threading.Thread(target=lambda: server_ctx.wrap_socket(srv, server_side=True).close())
        t.start()
        with client_ctx.wrap_socket(c, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        t.join(5)


# --------------------------------------------------------------------------------------------
# sipp


def test_sipp_call_udp_with_rtp_tone(
    need: Need, netns: NetNamespace, procs: ProcessSet, tmp_path: Path, tones: Tones
) -> None:
    """sipp UAC -> sipp UAS: INVITE/180/200(SDP)/ACK/BYE over UDP, the UAC streams a 440 Hz
    PCMU tone and the capture (tshark) sees it as RTP."""
    need("sipp", "tshark")
    cap = procs.start(Capture(tmp_path / "cap", bpf="udp", netns=netns.name))
    uas = procs.start(Sipp(tmp_path, "uas_answer", name="uas", user="bob", netns=netns.name))
    uac = procs.start(
        Sipp(
            tmp_path,
            "uac_invite",
            remote=("127.0.0.1", uas.port),
            name="uac",
            rtp_file=tones.ulaw_440,
            params={"hold_ms": "1500"},
            netns=netns.name,
        )
    )
    assert uac.wait_done(20, expect_success=1).successful == 1
    assert uas.wait_done(10, expect_success=1).successful == 1
    cap.stop()
    packets = cap.packets()
    sip = [p for p in packets if p.is_plain_sip()]
    assert {p.payload.split(b" ", 1)[0] for p in sip} >= {b"INVITE", b"ACK", b"BYE"}
    rtp = [p for p in packets if p.is_rtp_like() and p.dst[1] not in (uac.port, uas.port)]
    assert len(rtp) > 30, f"only {len(rtp)} RTP packets"
    assert all(p.payload[1] & 0x7F == 0 for p in rtp)  # PCMU
    heard = analyse_samples(ulaw_to_samples(b"".join(p.payload[12:] for p in rtp)))
    assert heard.is_tone(440.0), heard
    # tshark's own RTP dissector agrees when told the port.
    port = rtp[0].dst[1]
    rows = cap.tshark_fields(["rtp.p_type"], display_filter="rtp", decode_as={port: "rtp"})
    assert len(rows) >= len([p for p in rtp if p.dst[1] == port])


def test_sipp_register_with_digest(need: Need, procs: ProcessSet, tmp_path: Path) -> None:
    """register_auth answers a 401 challenge (verified by the sipp registrar); a wrong
    password fails on both sides; the plain register scenario gets its 200."""
    need("sipp")
    uas = procs.start(Sipp(tmp_path, "register_uas_auth", name="reg-uas", auth=("alice", "pw1")))
    uac = procs.start(
        Sipp(tmp_path, "register_auth", remote=("127.0.0.1", uas.port), auth=("alice", "pw1"))
    )
    uac.wait_done(15, expect_success=1)
    uas.wait_done(10, expect_success=1)

    uas2 = procs.start(
        Sipp(tmp_path, "register_uas_auth", name="reg-uas2", auth=("alice", "pw1"), timeout=5)
    )
    uac2 = procs.start(
        Sipp(
            tmp_path,
            "register_auth",
            remote=("127.0.0.1", uas2.port),
            name="reg-bad",
            auth=("alice", "wrong"),
            timeout=5,
        )
    )
    assert uac2.wait_done(15).failed == 1
    assert uas2.wait_done(15).failed == 1

    uas3 = procs.start(Sipp(tmp_path, "register_uas", name="reg-uas3"))
    uac3 = procs.start(Sipp(tmp_path, "register", remote=("127.0.0.1", uas3.port)))
    uac3.wait_done(15, expect_success=1)
    uas3.wait_done(10, expect_success=1)


# --------------------------------------------------------------------------------------------
# kamailio (+ stunnel)


def test_kamailio_tls_register_from_python(
    need: Need, kamailio: Kamailio, pki: TestPki, procs: ProcessSet, tmp_path: Path
) -> None:
    """Python ssl (verifying the test CA) registers over TLS; an untrusted CA is refused;
    with require_client_cert only a client presenting a CA-signed cert gets through."""
    assert status_code(tls_register(*kamailio.tls_address, pki, user="alice")) == 200
    other = make_test_pki(tmp_path / "other-ca")
    fake = TestPki(other.dir, other.ca_cert, other.ca_key, pki.server, pki.client)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_register(*kamailio.tls_address, fake)

    strict = procs.start(Kamailio(tmp_path / "strict", pki, require_client_cert=True))
    with pytest.raises((ssl.SSLError, OSError, PeerError)):
        tls_register(*strict.tls_address, pki, timeout=3)
    assert status_code(tls_register(*strict.tls_address, pki, client_cert=True)) == 200


def test_kamailio_call_between_sipps_over_stunnel(
    need: Need, netns: NetNamespace, pki: TestPki, procs: ProcessSet, tmp_path: Path
) -> None:
    """sipp (TCP) behind stunnel registers to kamailio over TLS, and a call is routed by
    kamailio from a TLS sipp UAC to a TLS sipp UAS; the capture shows no plaintext SIP on
    kamailio's TLS port while the sipp legs are plain TCP."""
    need("kamailio", "sipp", "stunnel", "tshark")
    ns = netns.name
    kam = procs.start(Kamailio(tmp_path / "kam", pki, netns=ns))
    cap = procs.start(Capture(tmp_path / "cap", bpf="tcp", netns=ns))
    assert status_code(tls_register(*kam.tls_address, pki, user="dave", ns=netns)) == 200

    uas = procs.start(Sipp(tmp_path, "uas_answer", transport="t1", name="uas", netns=ns))
    tunnel = Stunnel(tmp_path / "stunnel", pki, netns=ns)
    to_kam = tunnel.add_client(kam.tls_address)
    to_uas = tunnel.add_server(("127.0.0.1", uas.port))
    procs.start(tunnel)

    contact = f"sip:bob@127.0.0.1:{to_uas.accept[1]};transport=tls"
    reg = procs.start(
        Sipp(
            tmp_path,
            "register",
            remote=to_kam.accept,
            transport="t1",
            user="bob",
            contact=contact,
            domain="127.0.0.1",
            name="reg-bob",
            netns=ns,
        )
    )
    reg.wait_done(15, expect_success=1)
    uac = procs.start(
        Sipp(
            tmp_path,
            "uac_invite",
            remote=to_kam.accept,
            transport="t1",
            user="carol",
            to_user="bob",
            domain="127.0.0.1",
            name="uac",
            params={"hold_ms": "300"},
            netns=ns,
        )
    )
    uac.wait_done(15, expect_success=1)
    uas.wait_done(10, expect_success=1)
    cap.stop()
    tls_port = kam.tls_port
    on_tls = [p for p in cap.packets() if tls_port in (p.src[1], p.dst[1]) and p.payload]
    on_tcp = [p for p in cap.packets() if uas.port in (p.src[1], p.dst[1]) and p.payload]
    assert on_tls and not any(p.is_plain_sip() for p in on_tls)
    assert any(p.payload.startswith(b"INVITE ") for p in on_tcp)
    assert "INVITE sip:bob@" in kam.stderr()  # kamailio's xlog of the routed request


# --------------------------------------------------------------------------------------------
# baresip


def _baresip_call(
    ns: NetNamespace,
    procs: ProcessSet,
    tmp_path: Path,
    tones: Tones,
    *,
    tls: bool,
    pki: TestPki | None,
) -> tuple[Baresip, Baresip, Capture]:
    """alice (440 Hz) calls bob (1000 Hz) directly; both record; alice hangs up via ctrl_tcp."""
    srtp = "srtp-mand" if tls else None
    cap = procs.start(Capture(tmp_path / "cap", bpf="udp or tcp", netns=ns.name))
    bob = procs.start(
        Baresip(
            tmp_path / "bob",
            user="bob",
            audio_file=tones.wav_1000,
            netns=ns.name,
            tls=tls,
            srtp=srtp,
            pki=pki,
        )
    )
    target = f"sip:bob@127.0.0.1:{bob.sip_port + 1};transport=tls" if tls else bob.uri
    alice = procs.start(
        Baresip(
            tmp_path / "alice",
            user="alice",
            audio_file=tones.wav_440,
            netns=ns.name,
            tls=tls,
            srtp=srtp,
            pki=pki,
            dial=target,
        )
    )
    alice.wait_established(10)
    bob.wait_established(10)
    time.sleep(2.0)  # let two seconds of audio flow both ways
    assert alice.command(ns, "hangup").get("ok") is True
    alice.wait_terminated(5)
    bob.wait_terminated(5)
    alice.stop()
    bob.stop()
    cap.stop()
    for phone, expected_heard, expected_sent in ((alice, 1000.0, 440.0), (bob, 440.0, 1000.0)):
        (heard_file,) = phone.recordings("dec")
        (sent_file,) = phone.recordings("enc")
        heard, sent = analyse_wav(heard_file), analyse_wav(sent_file)
        assert heard.is_tone(expected_heard), (phone.name, heard)
        assert sent.is_tone(expected_sent), (phone.name, sent)
    return alice, bob, cap


def test_baresip_plain_call_tones_both_ways(
    need: Need, netns: NetNamespace, procs: ProcessSet, tmp_path: Path, tones: Tones
) -> None:
    """Two plain (UDP, RTP/AVP) baresips in a namespace call each other; each records the
    other's tone; the capture shows cleartext SIP and low-entropy PCMU RTP."""
    need("baresip", "tshark")
    _, _, cap = _baresip_call(netns, procs, tmp_path, tones, tls=False, pki=None)
    packets = cap.packets()
    assert any(p.is_plain_sip() for p in packets)
    rtp = [p for p in packets if p.is_rtp_like()]
    assert len(rtp) > 100
    assert byte_entropy(b"".join(p.payload[12:] for p in rtp)) < 7.0


def test_baresip_tls_srtp_call_tones_both_ways(
    need: Need, netns: NetNamespace, pki: TestPki, procs: ProcessSet, tmp_path: Path, tones: Tones
) -> None:
    """Two TLS + srtp-mand baresips call each other; tones arrive both ways; the capture
    shows no cleartext SIP and ciphertext-like RTP payloads."""
    need("baresip", "tshark")
    _alice, bob, cap = _baresip_call(netns, procs, tmp_path, tones, tls=True, pki=pki)
    assert "SRTP is Enabled" in bob.output()
    packets = cap.packets()
    assert not any(p.is_plain_sip() for p in packets)
    assert any(p.proto == "tcp" and p.payload[:1] == b"\x16" for p in packets)  # TLS handshake
    rtp = [p for p in packets if p.is_rtp_like()]
    assert len(rtp) > 100
    assert byte_entropy(b"".join(p.payload[12:] for p in rtp)) > 7.5


# --------------------------------------------------------------------------------------------
# rtpengine


def test_rtpengine_offer_answer_delete(need: Need, procs: ProcessSet, tmp_path: Path) -> None:
    """rtpengine answers ng offer/answer/delete; SDES offer without NULL suites."""
    need("rtpengine")
    base = free_port(span=100, proto="udp")
    eng = procs.start(Rtpengine(tmp_path, port_range=(base, base + 99)))
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    offer = eng.ng(
        {
            "command": "offer",
            "call-id": "selfcheck",
            "from-tag": "ft",
            "sdp": sdp,
            "transport-protocol": "RTP/SAVP",
            "DTLS": "off",
            "ICE": "remove",
            "SDES": ["no-NULL_HMAC_SHA1_80", "no-NULL_HMAC_SHA1_32"],
        }
    )
    assert offer["result"] == "ok", offer
    assert "RTP/SAVP" in offer["sdp"] and "a=crypto:" in offer["sdp"]
    assert "AES_CM_128_HMAC_SHA1_80" in offer["sdp"] and "NULL_HMAC" not in offer["sdp"]
    answer = eng.ng(
        {
            "command": "answer",
            "call-id": "selfcheck",
            "from-tag": "ft",
            "to-tag": "tt",
            "sdp": sdp.replace("40000", "40002"),
        }
    )
    assert answer["result"] == "ok" and "RTP/AVP" in answer["sdp"], answer
    assert eng.ng({"command": "delete", "call-id": "selfcheck", "from-tag": "ft"})["result"] == "ok"


def test_baresip_tls_srtp_via_kamailio(
    need: Need, netns: NetNamespace, pki: TestPki, procs: ProcessSet, tmp_path: Path, tones: Tones
) -> None:
    """Provider-side phones: two TLS + srtp-mand baresips register to kamailio and call each
    other through it (dial and hangup over ctrl_tcp); tones arrive both ways."""
    need("baresip", "kamailio")
    kam = procs.start(Kamailio(tmp_path / "kam", pki, netns=netns.name))
    domain = f"127.0.0.1:{kam.tls_port}"
    phones = {}
    for user, wav in (("bob", tones.wav_1000), ("alice", tones.wav_440)):
        phones[user] = procs.start(
            Baresip(
                tmp_path / user,
                user=user,
                audio_file=wav,
                netns=netns.name,
                tls=True,
                srtp="srtp-mand",
                pki=pki,
                domain=domain,
                regint=60,
            )
        )
    alice, bob = phones["alice"], phones["bob"]
    alice.wait_registered()
    bob.wait_registered()
    alice.dial(netns, f"sip:bob@{domain};transport=tls")
    alice.wait_established(10)
    bob.wait_established(10)
    time.sleep(1.5)
    alice.hangup(netns)
    alice.wait_terminated(5)
    bob.wait_terminated(5)
    assert re.search(r"REQ INVITE sip:bob@.* proto tls", kam.stderr())
    (heard_by_bob,) = bob.recordings("dec")
    (heard_by_alice,) = alice.recordings("dec")
    assert analyse_wav(heard_by_bob).is_tone(440.0)
    assert analyse_wav(heard_by_alice).is_tone(1000.0)
