"""A DTLS-SRTP call's suite and keying in its records (RFC 5764 §4.1.2: the handshake, not the
SDP, agrees the protection profile): the worker's DtlsKeyed report reaches the call's media
(``CallMedia.dtls_keyed``), the core emits ``CallKeyed``, and the call detail record and the
operator's views (``gateway calls``, /api/calls) show the suite with keying "dtls"."""

from __future__ import annotations

from gateway.admin.views import call_views
from gateway.cdr import CallRecorder
from gateway.media.ports import PortAllocator
from gateway.media.suites import SrtpSuite
from gateway.operations import CallStatus
from gateway.sdp.negotiation import CallMedia, MediaPolicy
from gateway.sip.call_events import CallAnswered, CallEnded, CallKeyed, CallStarted
from gateway.sip.message import SipRequest, SipResponse
from tests.unit.test_b2bua import only, phone_request, phone_sdp, respond
from tests.unit.test_b2bua_dtls import OUR_FP, dtls_harness, provider_dtls_sdp
from tests.unit.test_sdp_dtls import PHONE_OFFER, RTPENGINE_PASSIVE_ANSWER
from tests.unit.test_sdp_feedback import KEY, PHONE_ANSWER, offer

GCM = "AEAD_AES_128_GCM"


def dtls_call() -> CallMedia:
    policy = MediaPolicy(
        lan_address="192.0.2.1",
        wan_address="203.0.113.1",
        keying=("dtls",),
        dtls_fingerprint=lambda: OUR_FP,
    )
    return CallMedia("c", policy, PortAllocator(10000, 10099), PortAllocator(20000, 20099))


def test_the_handshakes_suite_becomes_the_calls() -> None:
    call = dtls_call()
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER)
    assert call.keying == "dtls" and call.chosen_suite() is None  # not before the handshake
    assert not call.dtls_keyed(0, 1, GCM)  # a generation that is not in force
    assert not call.dtls_keyed(3, 0, GCM)  # no such stream
    assert call.chosen_suite() is None
    assert call.dtls_keyed(0, 0, GCM)
    assert call.chosen_suite() is SrtpSuite.AEAD_AES_128_GCM
    # A new association (the provider moved) forgets it until its own handshake reports.
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER.replace(b"m=audio 31656", b"m=audio 31700"))
    assert call.chosen_suite() is None
    assert not call.dtls_keyed(0, 0, GCM)  # the old one's late report
    assert call.dtls_keyed(0, 1, "AES_CM_128_HMAC_SHA1_80")
    assert call.chosen_suite() is SrtpSuite.AES_CM_128_HMAC_SHA1_80


def test_sdes_calls_say_sdes() -> None:
    policy = MediaPolicy(lan_address="192.0.2.1", wan_address="203.0.113.1")
    call = CallMedia("c", policy, PortAllocator(10000, 10099), PortAllocator(20000, 20099))
    assert call.keying is None
    call.offer_from_wan(offer("RTP/SAVP", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY[:40]}"))
    call.answer_from_lan(PHONE_ANSWER)
    assert call.keying == "sdes" and call.chosen_suite() is SrtpSuite.AES_CM_128_HMAC_SHA1_80
    assert not call.dtls_keyed(0, 0, GCM)  # no association on an SDES stream
    assert call.chosen_suite() is SrtpSuite.AES_CM_128_HMAC_SHA1_80


def test_the_core_emits_call_keyed_once_the_worker_reports() -> None:
    h = dtls_harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(respond(invite, 200, body=provider_dtls_sdp("active")))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [200]
    [answered] = [e for e in h.events if isinstance(e, CallAnswered)]
    assert (answered.suite, answered.keying) == (None, "dtls")
    h.core.media_keyed(answered.pair, 0, 7, GCM, h.now, h.wall)  # a replaced association
    h.collect()
    assert not [e for e in h.events if isinstance(e, CallKeyed)]
    h.core.media_keyed(answered.pair, 0, 0, GCM, h.now, h.wall)
    h.core.media_keyed("no-such-call", 0, 0, GCM, h.now, h.wall)
    h.collect()
    [keyed] = [e for e in h.events if isinstance(e, CallKeyed)]
    assert (keyed.pair, keyed.suite, keyed.keying) == (answered.pair, GCM, "dtls")
    assert keyed.call_id == answered.call_id and keyed.kind == "keyed"


def test_the_record_shows_the_dtls_suite() -> None:
    written: list[dict[str, object]] = []
    rec = CallRecorder(None)
    rec.record_listeners.append(written.append)
    rec.on_event(CallStarted("a@phone", "c1", "INVITE", "lan", "201", "0044", "gw1"), 1000.0)
    rec.on_event(CallAnswered("a@phone", "c1", None, False, "dtls"), 1002.0)
    rec.on_event(CallKeyed("a@phone", "c1", GCM), 1002.1)
    rec.on_event(CallEnded("a@phone", "c1", "BYE from wan", 10.0), 1012.0)
    rec.settle(lambda: set(), 1012.0)
    [record] = written
    assert (record["suite"], record["keying"]) == (GCM, "dtls")


def test_a_handshake_done_before_the_answer_is_kept_by_it() -> None:
    """Early media: the handshake finished on the 183; the 200's event still carries it."""
    written: list[dict[str, object]] = []
    rec = CallRecorder(None)
    rec.record_listeners.append(written.append)
    rec.on_event(CallStarted("a@phone", "c1", "INVITE", "lan", "201", "0044", "gw1"), 1000.0)
    rec.on_event(CallKeyed("a@phone", "c1", GCM), 1001.0)
    rec.on_event(CallAnswered("a@phone", "c1", None, False, "dtls"), 1002.0)
    rec.on_event(CallEnded("a@phone", "c1", "BYE from wan", 10.0), 1012.0)
    rec.settle(lambda: set(), 1012.0)
    assert (written[0]["suite"], written[0]["keying"]) == (GCM, "dtls")


class _Status:
    def __init__(self, call: CallStatus) -> None:
        self._call = call

    def calls(self) -> list[CallStatus]:
        return [self._call]


def test_the_operators_view_shows_suite_and_keying() -> None:
    call = CallStatus(
        call_id="a@phone",
        pair="c1",
        state="confirmed",
        caller_side="lan",
        caller="201",
        callee="0044",
        phone="127.0.0.10:5062",
        provider="127.0.0.30:5061",
        started=1000.0,
        answered=1002.0,
        suite=GCM,
        plaintext_downgrade=False,
        keying="dtls",
    )
    [view] = call_views(_Status(call), None)  # type: ignore[arg-type]
    assert (view["suite"], view["keying"], view["encryption"]) == (GCM, "dtls", "srtp")
