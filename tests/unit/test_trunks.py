"""Several trunks: routes, failover before an answer, trunks skipped while down, number
formats per trunk, emergency calls on whichever trunk is up (gateway.sip.trunks, call_setup).

The core runs under a fake clock with two trunks, "primary" (127.0.0.30) and "backup"
(127.0.0.40); what each trunk receives is told apart by the peer the core sends to.
"""

from __future__ import annotations

from datetime import datetime

from gateway.policy import PolicyEngine, PolicySettings
from gateway.policy.settings import AllowlistSettings, DialPlanSettings
from gateway.sdp.negotiation import MediaPolicy
from gateway.sip.actions import SendMessage
from gateway.sip.b2bua import B2bua, EdgeSettings, PairState
from gateway.sip.call_events import TrunkFailover
from gateway.sip.message import SipRequest, SipResponse, parse_message
from gateway.sip.peer import Peer, Side
from gateway.sip.transaction import TimerSettings
from gateway.sip.trunks import Route, Trunk
from tests.unit.test_b2bua import PHONE, phone_request, phone_sdp, provider_answer, respond

PRIMARY = Peer(Side.WAN, "tls", ("127.0.0.30", 5061))
BACKUP = Peer(Side.WAN, "tls", ("127.0.0.40", 5061))
WALL = datetime(2026, 11, 25, 10, 0)


def core(
    routes: tuple[Route, ...] = (),
    *,
    primary_format: str = "e164",
    backup_format: str = "e164",
    policy: bool = False,
) -> B2bua:
    media = MediaPolicy(lan_address="127.0.0.20", wan_address="127.0.0.21")
    trunks = (
        Trunk("primary", PRIMARY, "primary.example", primary_format, answer_timeout=5.0),  # type: ignore[arg-type]
        Trunk("backup", BACKUP, "backup.example", backup_format, answer_timeout=5.0),  # type: ignore[arg-type]
    )
    settings = EdgeSettings(
        lan_address="127.0.0.20",
        lan_port=5060,
        wan_address="127.0.0.21",
        wan_port=5061,
        provider=None,
        domain="",
        media=media,
        lan_media_ports=(40000, 40099),
        wan_media_ports=(41000, 41099),
        timers=TimerSettings(t1=0.5, t2=4.0, t4=5.0),
        trunks=trunks,
        routes=routes,
    )
    engine = None
    if policy:
        engine = PolicyEngine(
            PolicySettings(
                allowlist=AllowlistSettings(lan=("127.0.0.0/8",)),
                dialplan=DialPlanSettings(),
            )
        )
    b2bua = B2bua(settings, policy=engine)
    for name in ("primary", "backup"):
        b2bua.wan_connection_state(True, "TLSv1.3 verified", 0.0, WALL, name)
    b2bua.actions()
    return b2bua


class Sent:
    """What the core sent, per destination."""

    def __init__(self, b2bua: B2bua) -> None:
        self.by_peer: dict[tuple[str, int], list[SipRequest | SipResponse]] = {}
        self.events: list[object] = []
        for action in b2bua.actions():
            if isinstance(action, SendMessage):
                self.by_peer.setdefault(action.peer.address, []).append(parse_message(action.data))
            else:
                self.events.append(action)

    def requests(self, peer: Peer) -> list[SipRequest]:
        return [m for m in self.by_peer.get(peer.address, []) if isinstance(m, SipRequest)]

    def to_phone(self) -> list[SipResponse]:
        return [m for m in self.by_peer.get(PHONE.address, []) if isinstance(m, SipResponse)]


def call(b2bua: B2bua, ruri: str = "sip:+15551234567@127.0.0.20", now: float = 0.0) -> Sent:
    raw = phone_request("INVITE", body=phone_sdp(), ruri=ruri, call_id=f"c{now}@phone")
    b2bua.receive_datagram(PHONE, raw.encode(), now, WALL)
    return Sent(b2bua)


def test_without_routes_calls_go_to_the_first_trunk_in_its_domain() -> None:
    b = core()
    sent = call(b)
    [invite] = sent.requests(PRIMARY)
    assert str(invite.uri) == "sip:+15551234567@primary.example"
    assert sent.requests(BACKUP) == []


def test_routes_pick_the_trunk_by_destination() -> None:
    b = core(routes=(Route(("+44",), ("backup", "primary")), Route(("*",), ("primary",))))
    sent = call(b, "sip:+442079460000@127.0.0.20")
    assert [m.method for m in sent.requests(BACKUP)] == ["INVITE"]
    assert sent.requests(PRIMARY) == []
    sent = call(b, "sip:+15551234567@127.0.0.20", now=1.0)
    assert [m.method for m in sent.requests(PRIMARY)] == ["INVITE"]


def test_a_503_before_the_answer_sends_the_call_to_the_next_trunk() -> None:
    b = core()
    [first] = call(b).requests(PRIMARY)
    b.receive_message(PRIMARY, parse_message(bytes(respond(first, 503))), 0.1, WALL)
    sent = Sent(b)
    [second] = sent.requests(BACKUP)
    assert second.method == "INVITE" and second.call_id != first.call_id
    assert str(second.uri) == "sip:+15551234567@backup.example"
    assert "a=crypto:" in second.body.decode()  # fresh keys for the new trunk
    assert [m.status for m in sent.to_phone()] == []  # the phone hears nothing of it
    [failover] = [e for e in sent.events if isinstance(e, TrunkFailover)]
    assert (failover.from_trunk, failover.to_trunk) == ("primary", "backup")
    b.receive_message(
        BACKUP,
        parse_message(bytes(respond(second, 200, body=provider_answer(second.body)))),
        0.2,
        WALL,
    )
    sent = Sent(b)
    assert [m.status for m in sent.to_phone()] == [200]
    assert [p.state for p in b.active_calls] == [PairState.CONFIRMED]
    # The failed trunk is skipped for the next call while it is marked down.
    next_call = call(b, now=1.0)
    assert [m.method for m in next_call.requests(BACKUP)] == ["INVITE"]
    assert next_call.requests(PRIMARY) == []


def test_a_trunk_that_stays_silent_loses_the_call_and_a_late_answer_is_ended() -> None:
    b = core()
    [first] = call(b).requests(PRIMARY)
    deadline = b.get_timer()
    assert deadline is not None
    now = 0.0
    while now < 5.0:  # the answer timeout; retransmissions of the INVITE on TLS: none
        now = min(5.0, b.get_timer() or 5.0)
        b.handle_timer(now, WALL)
    sent = Sent(b)
    [second] = sent.requests(BACKUP)
    assert second.method == "INVITE"
    # The first trunk answers after all: ACKed and ended, never relayed.
    late = respond(first, 200, body=provider_answer(first.body))
    b.receive_message(PRIMARY, parse_message(bytes(late)), now + 0.1, WALL)
    sent = Sent(b)
    assert [m.method for m in sent.requests(PRIMARY)] == ["ACK", "BYE"]
    assert sent.to_phone() == []


def test_a_trunk_whose_link_is_down_is_skipped_and_with_none_up_the_phone_gets_503() -> None:
    b = core()
    b.wan_connection_state(False, "certificate expired", 0.0, WALL, "primary")
    sent = call(b)
    assert sent.requests(PRIMARY) == [] and len(sent.requests(BACKUP)) == 1
    b.wan_connection_state(False, "connection refused", 0.0, WALL, "backup")
    sent = call(b, now=1.0)
    [refusal] = [m for m in sent.to_phone() if m.status >= 300]
    assert refusal.status == 503
    assert "connection refused" in (refusal.get("Warning") or "")


def test_emergency_calls_go_out_on_a_trunk_that_is_up_whatever_the_routes_say() -> None:
    b = core(routes=(Route(("*",), ("primary",)),), policy=True)
    b.wan_connection_state(False, "connection refused", 0.0, WALL, "primary")
    sent = call(b, "sip:911@127.0.0.20")
    [invite] = sent.requests(BACKUP)
    assert str(invite.uri) == "sip:911@backup.example"
    # An ordinary call on the same route has no trunk.
    sent = call(b, now=1.0)
    assert [m.status for m in sent.to_phone() if m.status >= 300] == [503]


def test_each_trunk_gets_the_number_in_its_own_format() -> None:
    b = core(primary_format="national", backup_format="e164-no-plus", policy=True)
    [invite] = call(b, "sip:2025550123@127.0.0.20").requests(PRIMARY)
    assert invite.uri.user == "2025550123"  # type: ignore[union-attr]
    assert invite.to.uri.user == "2025550123"  # type: ignore[union-attr]
    b.receive_message(PRIMARY, parse_message(bytes(respond(invite, 503))), 0.1, WALL)
    [again] = Sent(b).requests(BACKUP)
    assert again.uri.user == "12025550123"  # type: ignore[union-attr]


def test_a_named_extension_goes_to_the_provider_as_dialled() -> None:
    b = core(policy=True)
    [invite] = call(b, "sip:reception@127.0.0.20").requests(PRIMARY)
    assert str(invite.uri) == "sip:reception@primary.example"


def register(b: B2bua, now: float, cseq: int = 1) -> Sent:
    raw = (
        "REGISTER sip:127.0.0.20 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PHONE.address[0]}:5062;branch=z9hG4bKreg{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@127.0.0.20>;tag=r1\r\nTo: <sip:1001@127.0.0.20>\r\n"
        f"Call-ID: reg-1@phone\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:1001@{PHONE.address[0]}:5062>\r\nExpires: 120\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    b.receive_datagram(PHONE, raw.encode(), now, WALL)
    return Sent(b)


def test_registrations_follow_the_first_trunk_that_is_up() -> None:
    """Phones register through the first trunk; while it is away they register through the
    next one (at once: the gateway re-registers every phone there), and back when it returns."""
    b = core()
    [upstream] = register(b, 0.0).requests(PRIMARY)
    assert str(upstream.uri) == "sip:primary.example"
    ok = respond(upstream, 200)
    ok.add("Expires", "120")
    b.receive_message(PRIMARY, parse_message(bytes(ok)), 0.1, WALL)
    Sent(b)
    b.wan_connection_state(False, "connection lost", 1.0, WALL, "primary")
    [moved] = Sent(b).requests(BACKUP)
    assert moved.method == "REGISTER" and str(moved.uri) == "sip:backup.example"
    assert moved.to.uri.host == "backup.example"  # type: ignore[union-attr]
    b.receive_message(BACKUP, parse_message(bytes(respond(moved, 200))), 1.1, WALL)
    Sent(b)
    [refresh] = register(b, 2.0, cseq=2).requests(BACKUP)  # the phone's own refresh
    assert refresh.method == "REGISTER"
    b.wan_connection_state(True, "TLSv1.3 verified", 3.0, WALL, "primary")
    [back] = Sent(b).requests(PRIMARY)
    assert back.method == "REGISTER"


def test_a_sites_only_trunk_that_refused_a_call_still_takes_the_next() -> None:
    """A trunk that failed a call goes last for new calls, not away: with one provider, a
    503 for one destination must not turn every following call into a 503 from the gateway."""
    b = core(routes=(Route(("*",), ("primary",)),))
    [first] = call(b).requests(PRIMARY)
    b.receive_message(PRIMARY, parse_message(bytes(respond(first, 503))), 0.1, WALL)
    assert [m.status for m in Sent(b).to_phone() if m.status >= 300] == [503]  # relayed
    [again] = call(b, now=1.0).requests(PRIMARY)
    assert again.method == "INVITE"
