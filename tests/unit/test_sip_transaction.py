"""Transaction state machines (RFC 3261 §17, RFC 6026) with a fake clock and exact times."""

from __future__ import annotations

from collections.abc import Hashable

import pytest

from gateway.sip.errors import TransactionStateError
from gateway.sip.events import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
)
from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from gateway.sip.transaction import TimerSettings, TransactionLayer, TransactionState
from gateway.sip.uri import parse_uri
from tests.testdata import RFC4475_DIR

PEER: Hashable = ("udp", "192.0.2.10", 5060)
DATA = RFC4475_DIR


def request(method: str, branch: str = "z9hG4bKabc", cseq: int = 1) -> SipRequest:
    return SipRequest(
        method,
        parse_uri("sip:bob@biloxi.example.com"),
        [
            ("Via", f"SIP/2.0/UDP pc33.example.com;branch={branch}"),
            ("Route", "<sip:proxy.example.com;lr>"),
            ("Max-Forwards", "70"),
            ("From", "<sip:alice@atlanta.example.com>;tag=a1"),
            ("To", "<sip:bob@biloxi.example.com>"),
            ("Call-ID", "call-1"),
            ("CSeq", f"{cseq} {method}"),
        ],
    )


def response(req: SipRequest, status: int, to_tag: str = "b2") -> SipResponse:
    return make_response(req, status, to_tag=to_tag)


def events(layer: TransactionLayer) -> list[TransactionEvent]:
    result = []
    while (event := layer.next_event()) is not None:
        result.append(event)
    return result


def run_timers(layer: TransactionLayer, until: float) -> list[tuple[float, bytes]]:
    """Fire timers in order up to ``until``; return (time, bytes) of everything sent."""
    sent: list[tuple[float, bytes]] = []
    while (deadline := layer.get_timer()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        sent.extend((deadline, data) for _, data in layer.datagrams_to_send())
    return sent


def start_lines(sent: list[tuple[float, bytes]]) -> list[tuple[float, str]]:
    return [(at, data.split(b"\r\n", 1)[0].decode()) for at, data in sent]


# -- INVITE client (§17.1.1) -----------------------------------------------------------------


def test_invite_client_udp_retransmits_then_times_out() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    key = layer.send_request(invite, PEER, reliable=False, now=0.0)
    assert layer.datagrams_to_send() == [(PEER, bytes(invite))]
    sent = run_timers(layer, 100.0)
    assert [at for at, _ in sent] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(data == bytes(invite) for _, data in sent)
    assert events(layer) == [TransactionTimedOut(key, invite), TransactionTerminated(key)]
    assert layer.get_timer() is None and len(layer) == 0


def test_timers_fire_at_their_deadlines_when_handled_late() -> None:
    layer = TransactionLayer()
    key = layer.send_request(request("INVITE"), PEER, reliable=False, now=0.0)
    layer.handle_timer(40.0)
    assert len(layer.datagrams_to_send()) == 7  # the INVITE and its 6 retransmissions
    assert [type(e) for e in events(layer)] == [TransactionTimedOut, TransactionTerminated]
    assert layer.transaction(key) is None


def test_invite_client_reliable_never_retransmits() -> None:
    layer = TransactionLayer()
    layer.send_request(request("INVITE"), PEER, reliable=True, now=0.0)
    assert len(layer.datagrams_to_send()) == 1
    assert layer.get_timer() == 32.0
    assert run_timers(layer, 100.0) == []
    assert [type(e) for e in events(layer)] == [TransactionTimedOut, TransactionTerminated]


def test_invite_client_provisional_stops_retransmission_and_timer_b() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    key = layer.send_request(invite, PEER, reliable=False, now=0.0)
    layer.datagrams_to_send()
    ringing = response(invite, 180)
    layer.receive_response(ringing, now=0.2)
    assert events(layer) == [ResponseReceived(key, ringing)]
    assert layer.client_transaction(key).state is TransactionState.PROCEEDING  # type: ignore[union-attr]
    assert layer.get_timer() is None
    assert run_timers(layer, 100.0) == []


def test_invite_client_acks_non_2xx_itself() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    key = layer.send_request(invite, PEER, reliable=False, now=0.0)
    layer.datagrams_to_send()
    busy = response(invite, 486, to_tag="x9")
    layer.receive_response(busy, now=1.0)
    assert events(layer) == [ResponseReceived(key, busy)]
    [(destination, ack_bytes)] = layer.datagrams_to_send()
    assert destination == PEER
    ack = parse_message(ack_bytes)
    assert isinstance(ack, SipRequest)
    assert ack.method == "ACK"
    assert str(ack.uri) == "sip:bob@biloxi.example.com"
    assert ack.headers == [
        ("Via", "SIP/2.0/UDP pc33.example.com;branch=z9hG4bKabc"),
        ("Route", "<sip:proxy.example.com;lr>"),
        ("Max-Forwards", "70"),
        ("From", "<sip:alice@atlanta.example.com>;tag=a1"),
        ("Call-ID", "call-1"),
        ("To", "<sip:bob@biloxi.example.com>;tag=x9"),
        ("CSeq", "1 ACK"),
        ("Content-Length", "0"),
    ]
    # A retransmitted 486 is absorbed and answered with the same ACK.
    layer.receive_response(busy, now=2.0)
    assert events(layer) == []
    assert layer.datagrams_to_send() == [(PEER, ack_bytes)]
    # Timer D: 32 s after the first final response.
    assert layer.get_timer() == 33.0
    run_timers(layer, 100.0)
    assert events(layer) == [TransactionTerminated(key)]


def test_invite_client_reliable_non_2xx_terminates_at_once() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    key = layer.send_request(invite, PEER, reliable=True, now=0.0)
    layer.receive_response(response(invite, 503), now=0.3)
    assert [type(e) for e in events(layer)] == [ResponseReceived, TransactionTerminated]
    assert len(layer.datagrams_to_send()) == 2  # INVITE and ACK
    assert layer.transaction(key) is None


def test_invite_client_2xx_accepted_then_stray() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    key = layer.send_request(invite, PEER, reliable=False, now=0.0)
    ok = response(invite, 200)
    layer.receive_response(ok, now=0.7)
    layer.receive_response(ok, now=1.2)
    # RFC 6026: both go up; the TU ACKs 2xx itself, the transaction sends nothing.
    assert events(layer) == [ResponseReceived(key, ok), ResponseReceived(key, ok)]
    assert layer.datagrams_to_send() == [(PEER, bytes(invite))]
    assert layer.get_timer() == 0.7 + 32.0
    run_timers(layer, 100.0)
    assert events(layer) == [TransactionTerminated(key)]
    layer.receive_response(ok, now=40.0)
    assert events(layer) == [StrayResponse(ok)]


def test_stray_non_2xx_is_dropped_and_counted() -> None:
    layer = TransactionLayer()
    layer.receive_response(response(request("INVITE"), 486), now=0.0)
    layer.receive_response(response(request("BYE"), 200), now=0.0)
    assert events(layer) == []
    assert layer.stray_responses_dropped == 2


# -- non-INVITE client (§17.1.2) -------------------------------------------------------------


def test_non_invite_client_udp_schedule_capped_at_t2() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS")
    key = layer.send_request(options, PEER, reliable=False, now=0.0)
    layer.datagrams_to_send()
    sent = run_timers(layer, 100.0)
    assert [at for at, _ in sent] == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5
    ]  # fmt: skip
    assert events(layer) == [TransactionTimedOut(key, options), TransactionTerminated(key)]


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    layer = TransactionLayer()
    bye = request("BYE")
    key = layer.send_request(bye, PEER, reliable=False, now=0.0)
    layer.datagrams_to_send()
    layer.receive_response(response(bye, 100), now=0.2)
    sent = run_timers(layer, 13.0)
    assert [at for at, _ in sent] == [0.5, 4.5, 8.5, 12.5]
    final = response(bye, 200)
    layer.receive_response(final, now=13.0)
    layer.receive_response(final, now=13.5)  # retransmission: absorbed
    assert [type(e) for e in events(layer)] == [ResponseReceived, ResponseReceived]
    assert layer.get_timer() == 18.0  # Timer K = T4
    run_timers(layer, 100.0)
    assert events(layer) == [TransactionTerminated(key)]


def test_non_invite_client_reliable() -> None:
    layer = TransactionLayer()
    register = request("REGISTER")
    key = layer.send_request(register, PEER, reliable=True, now=0.0)
    assert layer.get_timer() == 32.0  # Timer F only
    layer.receive_response(response(register, 200), now=0.1)
    assert [type(e) for e in events(layer)] == [ResponseReceived, TransactionTerminated]
    assert layer.transaction(key) is None and layer.get_timer() is None


def test_custom_t1_scales_the_timers() -> None:
    layer = TransactionLayer(TimerSettings(t1=0.1, t2=0.4, t4=1.0))
    layer.send_request(request("MESSAGE"), PEER, reliable=False, now=10.0)
    layer.datagrams_to_send()
    sent = run_timers(layer, 100.0)
    assert [round(at, 6) for at, _ in sent][:5] == [10.1, 10.3, 10.7, 11.1, 11.5]
    assert [type(e) for e in events(layer)] == [TransactionTimedOut, TransactionTerminated]


def test_ack_through_send_request_creates_no_transaction() -> None:
    layer = TransactionLayer()
    ack = request("ACK", branch="z9hG4bKack")
    layer.send_request(ack, PEER, reliable=False, now=0.0)
    assert layer.datagrams_to_send() == [(PEER, bytes(ack))]
    assert len(layer) == 0 and layer.get_timer() is None


def test_branch_reuse_is_refused() -> None:
    layer = TransactionLayer()
    layer.send_request(request("OPTIONS"), PEER, reliable=False, now=0.0)
    with pytest.raises(TransactionStateError):
        layer.send_request(request("OPTIONS"), PEER, reliable=False, now=0.0)


# -- INVITE server (§17.2.1) -----------------------------------------------------------------


def test_invite_server_sends_100_after_200_ms_and_on_retransmission() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    layer.receive_request(invite, PEER, reliable=False, now=0.0)
    [event] = events(layer)
    assert isinstance(event, RequestReceived) and event.matches is None
    sent = run_timers(layer, 0.3)
    assert start_lines(sent) == [(0.2, "SIP/2.0 100 Trying")]
    trying = parse_message(sent[0][1])
    assert trying.get("To") == "<sip:bob@biloxi.example.com>"
    layer.receive_request(invite, PEER, reliable=False, now=0.5)
    assert layer.datagrams_to_send() == [(PEER, sent[0][1])]
    assert events(layer) == [] and layer.retransmissions_absorbed == 1


def test_invite_server_no_auto_100_when_the_tu_answers_first() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    layer.receive_request(invite, PEER, reliable=False, now=0.0)
    [event] = events(layer)
    assert isinstance(event, RequestReceived)
    layer.send_response(event.key, response(invite, 180), now=0.1)
    assert len(layer.datagrams_to_send()) == 1
    assert run_timers(layer, 10.0) == []
    quiet = TransactionLayer(TimerSettings(trying_delay=None))
    quiet.receive_request(invite, PEER, reliable=False, now=0.0)
    assert quiet.get_timer() is None


def test_invite_server_non_2xx_timer_g_then_h() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    layer.receive_request(invite, PEER, reliable=False, now=0.0)
    key = events(layer)[0].key  # type: ignore[attr-defined]
    busy = response(invite, 486)
    layer.send_response(key, busy, now=0.1)
    assert layer.datagrams_to_send() == [(PEER, bytes(busy))]
    sent = run_timers(layer, 100.0)
    assert [round(at, 6) for at, _ in sent] == [
        0.6, 1.6, 3.6, 7.6, 11.6, 15.6, 19.6, 23.6, 27.6, 31.6
    ]  # fmt: skip
    assert all(data == bytes(busy) for _, data in sent)
    assert events(layer) == [TransactionTimedOut(key, invite), TransactionTerminated(key)]


def test_invite_server_ack_confirms_and_timer_i_ends_it() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    layer.receive_request(invite, PEER, reliable=False, now=0.0)
    key = events(layer)[0].key  # type: ignore[attr-defined]
    layer.send_response(key, response(invite, 404), now=0.1)
    layer.datagrams_to_send()
    ack = request("ACK")  # same branch as the INVITE: the ACK of a non-2xx (§17.1.1.3)
    layer.receive_request(ack, PEER, reliable=False, now=0.3)
    layer.receive_request(ack, PEER, reliable=False, now=0.4)
    assert events(layer) == []  # both absorbed
    assert layer.server_transaction(key).state is TransactionState.CONFIRMED  # type: ignore[union-attr]
    assert layer.get_timer() == 5.3  # Timer I = T4; Timer G is gone
    assert run_timers(layer, 100.0) == []
    assert events(layer) == [TransactionTerminated(key)]


def test_invite_server_reliable_no_retransmission_and_i_is_zero() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    layer.receive_request(invite, PEER, reliable=True, now=0.0)
    key = events(layer)[0].key  # type: ignore[attr-defined]
    layer.send_response(key, response(invite, 486), now=0.05)
    layer.datagrams_to_send()
    assert layer.get_timer() == 32.05  # only Timer H
    layer.receive_request(request("ACK"), PEER, reliable=True, now=1.0)
    assert events(layer) == [TransactionTerminated(key)]
    assert layer.datagrams_to_send() == [] and layer.get_timer() is None


def test_invite_server_2xx_accepted_absorbs_retransmissions() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    layer.receive_request(invite, PEER, reliable=False, now=0.0)
    key = events(layer)[0].key  # type: ignore[attr-defined]
    ok = response(invite, 200)
    layer.send_response(key, ok, now=0.1)
    layer.send_response(key, ok, now=0.6)  # the TU retransmits its 2xx (§13.3.1.4)
    assert layer.datagrams_to_send() == [(PEER, bytes(ok)), (PEER, bytes(ok))]
    layer.receive_request(invite, PEER, reliable=False, now=0.7)
    assert layer.datagrams_to_send() == []
    ack = request("ACK", branch="z9hG4bKnew")  # ACK of a 2xx: a new transaction id
    layer.receive_request(ack, PEER, reliable=False, now=0.8)
    [event] = events(layer)
    assert isinstance(event, RequestReceived) and event.request is ack
    with pytest.raises(TransactionStateError):
        layer.send_response(key, response(invite, 486), now=0.9)
    run_timers(layer, 100.0)
    assert events(layer) == [TransactionTerminated(key)]
    assert layer.get_timer() is None


def test_cancel_matches_the_invite_server_transaction() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    layer.receive_request(invite, PEER, reliable=False, now=0.0)
    invite_key = events(layer)[0].key  # type: ignore[attr-defined]
    cancel = request("CANCEL")
    layer.receive_request(cancel, PEER, reliable=False, now=0.5)
    [event] = events(layer)
    assert isinstance(event, RequestReceived)
    assert event.matches == invite_key and event.key != invite_key
    orphan = request("CANCEL", branch="z9hG4bKother")
    layer.receive_request(orphan, PEER, reliable=False, now=0.5)
    [event] = events(layer)
    assert isinstance(event, RequestReceived) and event.matches is None


# -- non-INVITE server (§17.2.2) -------------------------------------------------------------


def test_non_invite_server_absorbs_and_replays_final() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS")
    layer.receive_request(options, PEER, reliable=False, now=0.0)
    key = events(layer)[0].key  # type: ignore[attr-defined]
    layer.receive_request(options, PEER, reliable=False, now=0.5)  # Trying: nothing to send
    assert layer.datagrams_to_send() == [] and events(layer) == []
    ok = response(options, 200)
    layer.send_response(key, ok, now=1.0)
    layer.receive_request(options, PEER, reliable=False, now=1.5)
    assert layer.datagrams_to_send() == [(PEER, bytes(ok)), (PEER, bytes(ok))]
    with pytest.raises(TransactionStateError):
        layer.send_response(key, ok, now=2.0)
    assert layer.get_timer() == 33.0  # Timer J = 64*T1
    run_timers(layer, 100.0)
    assert events(layer) == [TransactionTerminated(key)]
    layer.receive_request(options, PEER, reliable=False, now=40.0)
    assert isinstance(layer.next_event(), RequestReceived)  # a new transaction now


def test_non_invite_server_reliable_terminates_on_final() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS")
    layer.receive_request(options, PEER, reliable=True, now=0.0)
    key = events(layer)[0].key  # type: ignore[attr-defined]
    layer.send_response(key, response(options, 100), now=0.1)
    layer.send_response(key, response(options, 200), now=0.2)
    assert events(layer) == [TransactionTerminated(key)]
    assert len(layer.datagrams_to_send()) == 2
    assert layer.get_timer() is None


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(TransactionStateError):
        TransactionLayer().send_response("nope", response(request("BYE"), 200), now=0.0)


# -- RFC 2543 matching -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["badbranch.dat", "inv2543.dat"])
def test_rfc2543_fallback_matches_retransmissions(name: str) -> None:
    message = parse_message((DATA / name).read_bytes())
    assert isinstance(message, SipRequest)
    layer = TransactionLayer()
    layer.receive_request(message, PEER, reliable=False, now=0.0)
    key = events(layer)[0].key  # type: ignore[attr-defined]
    assert key.startswith("server2543 ")
    layer.receive_request(message.copy(), PEER, reliable=False, now=0.5)
    assert events(layer) == []
    assert layer.retransmissions_absorbed == 1
