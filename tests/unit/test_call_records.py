"""Confirmed calls exported from one core, sealed, and taken over by a fresh core (issue 14).

Each test sets up a call through a scripted phone and provider (the helpers of
``test_b2bua``), exports it, encodes it with a sealer, decodes it and restores it into a new
core; then the phone or the provider goes on with the call as if nothing had happened.
"""

from __future__ import annotations

import base64
import secrets

import msgspec
import pytest

from gateway.media.control import OpenStream, SsrcIndex, StreamCheckpoint, UpdateStream
from gateway.media.ports import PortAllocator
from gateway.sip.b2bua import PairState
from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from gateway.state.calls import CallRecord, ReplicatedStream, decode_call, encode_call
from gateway.state.seal import Sealer
from tests.unit.test_b2bua import (
    PHONE_IP,
    Harness,
    only,
    phone_request,
    phone_sdp,
    provider_answer,
    provider_in_dialog,
    register,
    respond,
)

WALL = 1_780_000_000.0
KEY = secrets.token_bytes(32)
SITE = "site-a"
EDGE_ROUTE = "<sip:edge.provider.example;transport=tls;lr>"


def outbound_call(h: Harness) -> tuple[SipRequest, SipResponse, SipResponse]:
    """Phone -> provider, answered through a provider edge proxy that Record-Routes; the
    phone's ACK in. Returns the WAN INVITE, the provider's 200 and the phone's 200."""
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    answer = respond(invite, 200, body=provider_answer(invite.body))
    answer.add("Record-Route", EDGE_ROUTE)
    h.from_provider(answer)
    ok = only(h.take_lan(), SipResponse)[-1]
    h.from_phone(phone_request("ACK", cseq=1, to_tag=ok.to.tag))
    h.take_wan()
    h.take_lan()
    return invite, answer, ok


def inbound_call(h: Harness) -> tuple[SipRequest, SipRequest]:
    """Provider -> registered phone, answered and ACKed. Returns the provider's INVITE and
    the gateway's INVITE to the phone."""
    register(h)
    [upstream] = only(h.take_wan(), SipRequest)
    registered = make_response(upstream, 200, to_tag="r")
    registered.add("Contact", upstream.get("Contact") or "")
    h.from_provider(registered)
    h.take_lan()
    token = upstream.contacts[0].uri.user
    key = base64.b64encode(secrets.token_bytes(30)).decode()
    offer = (
        "v=0\r\no=prov 1 1 IN IP4 127.0.0.30\r\ns=-\r\nc=IN IP4 127.0.0.30\r\nt=0 0\r\n"
        "m=audio 30002 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"
    )
    head = (
        f"INVITE sip:{token}@127.0.0.21:5061;transport=tls SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 127.0.0.30:5061;branch=z9hG4bKin1\r\nMax-Forwards: 70\r\n"
        "From: <sip:+4420123@provider.example>;tag=pf1\r\nTo: <sip:1001@provider.example>\r\n"
        "Call-ID: inbound-1@provider\r\nCSeq: 7 INVITE\r\n"
        "Contact: <sip:pbx@127.0.0.30:5061;transport=tls>\r\n"
        "Content-Type: application/sdp\r\n"
    )
    invite = parse_message(f"{head}Content-Length: {len(offer)}\r\n\r\n{offer}".encode())
    assert isinstance(invite, SipRequest)
    h.from_provider(invite)
    h.take_wan()
    [to_phone] = only(h.take_lan(), SipRequest)
    answer = make_response(to_phone, 200, to_tag="phoneans")
    answer.add("Contact", f"<sip:1001@{PHONE_IP}:5062>")
    answer.add("Content-Type", "application/sdp")
    answer.body = phone_sdp(8002).encode()
    h.from_phone(bytes(answer))
    [ok] = [m for m in only(h.take_wan(), SipResponse) if m.status == 200]
    ack = SipRequest("ACK", invite.contacts[0].uri)  # any URI: the core matches by dialog
    for name, value in (
        ("Via", "SIP/2.0/TLS 127.0.0.30:5061;branch=z9hG4bKin1ack"),
        ("Max-Forwards", "70"),
        ("From", str(invite.from_)),
        ("To", str(ok.to)),
        ("Call-ID", invite.call_id),
        ("CSeq", "7 ACK"),
    ):
        ack.add(name, value)
    h.from_provider(ack)
    h.take_lan()
    h.take_wan()
    return invite, to_phone


def taken_over(h: Harness) -> tuple[Harness, list[CallRecord], list[bytes]]:
    """Every call of ``h`` exported, sealed, opened and restored into a fresh core."""
    keys = h.core.take_changed_calls()
    records = [r for k in sorted(keys) if (r := h.core.export_call(k, h.now, WALL))]
    sealer = Sealer(KEY, SITE)
    encoded = [encode_call(r, sealer, SITE) for r in records]
    assert all(data is not None for data in encoded)
    blobs = [data for data in encoded if data is not None]
    decoded = [decode_call(data, Sealer(KEY, SITE)) for data in blobs]
    assert decoded == records
    fresh = Harness()
    fresh.now = 500.0  # another process: another monotonic clock
    restored = fresh.core.restore_calls([r for r in decoded if r is not None], fresh.now, WALL + 30)
    assert restored == [r.key for r in records] and fresh.core.call_restore_skipped == {}
    fresh.collect()
    assert not fresh.media and not fresh.lan and not fresh.wan  # restore sends nothing
    return fresh, records, blobs


def crypto_lines(body: bytes) -> dict[str, str]:
    """tag -> "suite inline:key" of each a=crypto line."""
    lines = [line for line in body.decode().split("\r\n") if line.startswith("a=crypto:")]
    return {line.split()[0].split(":")[1]: " ".join(line.split()[1:3]) for line in lines}


def origin_version(body: bytes) -> tuple[str, int]:
    [origin] = [line for line in body.decode().split("\r\n") if line.startswith("o=")]
    fields = origin.split()
    return fields[1], int(fields[2])


# ------------------------------------------------------------------------------ tests


def test_bye_from_the_provider_after_the_takeover_reaches_the_phone_on_its_dialog() -> None:
    h = Harness()
    invite, _answer, ok = outbound_call(h)
    fresh, [record], _ = taken_over(h)
    assert fresh.core.active_calls[0].state == PairState.CONFIRMED
    fresh.from_provider(provider_in_dialog(invite, "BYE", 20))
    [bye] = only(fresh.take_lan(), SipRequest)
    assert bye.method == "BYE" and bye.call_id == "call-1@phone"
    assert bye.from_.tag == ok.to.tag and bye.to.tag == "phonetag"
    assert bye.cseq.seq > record.caller.local_cseq
    assert str(bye.uri) == f"sip:1001@{PHONE_IP}:5062"
    [answered] = only(fresh.take_wan(), SipResponse)
    assert answered.status == 200 and answered.cseq.method == "BYE"
    assert fresh.core.active_calls == []


def test_bye_from_the_phone_after_the_takeover_follows_the_providers_route_set() -> None:
    h = Harness()
    invite, _answer, ok = outbound_call(h)
    fresh, [record], _ = taken_over(h)
    fresh.from_phone(phone_request("BYE", cseq=2, to_tag=ok.to.tag))
    [bye] = only(fresh.take_wan(), SipRequest)
    assert bye.method == "BYE" and bye.call_id == invite.call_id
    assert bye.to.tag == "provtag" and bye.from_.tag == invite.from_.tag
    assert bye.cseq.seq == record.callee.local_cseq + 1 and bye.cseq.seq > invite.cseq.seq
    assert bye.get_all("Route") == [EDGE_ROUTE]
    assert str(bye.uri) == "sip:pbx@127.0.0.30:5061;transport=tls"
    [answered] = only(fresh.take_lan(), SipResponse)
    assert answered.status == 200 and answered.cseq.method == "BYE"


def test_hold_after_the_takeover_keeps_the_srtp_key_and_raises_the_origin_version() -> None:
    h = Harness()
    invite, answer, ok = outbound_call(h)
    fresh, [record], _ = taken_over(h)
    agreed_tag = answer.body.decode().split("a=crypto:")[1].split()[0]
    hold = phone_sdp().replace("a=sendrecv", "a=sendonly")
    fresh.from_phone(phone_request("INVITE", cseq=2, body=hold, to_tag=ok.to.tag))
    [reinvite] = only(fresh.take_wan(), SipRequest)
    assert reinvite.method == "INVITE" and reinvite.to.tag == "provtag"
    assert reinvite.cseq.seq == invite.cseq.seq + 1
    assert reinvite.get_all("Route") == [EDGE_ROUTE]
    assert "a=sendonly" in reinvite.body.decode()
    # Our key toward the provider is the one agreed before the takeover: no re-key.
    assert crypto_lines(reinvite.body)[agreed_tag] == crypto_lines(invite.body)[agreed_tag]
    session, version = origin_version(reinvite.body)
    old_session, old_version = origin_version(invite.body)
    assert session == old_session and version > old_version
    assert record.media is not None and version > record.media.wan_origin.version
    # The provider's answer keeps its key too: the stream is updated, nothing re-keyed.
    held = provider_answer(reinvite.body).replace(
        b"RTP/SAVP 0 101\r\n", b"RTP/SAVP 0 101\r\na=recvonly\r\n"
    )
    held = held.replace(
        crypto_lines(held)[agreed_tag].split()[1].encode(),
        crypto_lines(answer.body)[agreed_tag].split()[1].encode(),
    )
    fresh.from_provider(respond(reinvite, 200, body=held))
    [ack] = only(fresh.take_wan(), SipRequest)
    assert ack.method == "ACK" and ack.cseq.seq == reinvite.cseq.seq
    [to_phone] = [m for m in only(fresh.take_lan(), SipResponse) if m.status == 200]
    assert "a=recvonly" in to_phone.body.decode()
    [update] = [c for c in fresh.media if isinstance(c, UpdateStream)]
    [stream] = record.streams
    assert update.spec.wan_tx == stream.spec.wan_tx and update.spec.wan_rx == stream.spec.wan_rx
    assert update.spec.direction == "sendonly" and update.spec.lan_port == stream.spec.lan_port


def test_an_inbound_call_is_taken_over_in_both_directions() -> None:
    h = Harness()
    invite, to_phone = inbound_call(h)
    fresh, [record], _ = taken_over(h)
    assert record.caller_side == "wan" and record.callee.local_cseq == to_phone.cseq.seq
    # The provider ends it: the phone gets BYE on the gateway's LAN dialog, CSeq above its
    # INVITE's.
    fresh.from_provider(
        provider_in_dialog_inbound(invite, to_tag=record.caller.local.split("tag=")[1])
    )
    [bye] = only(fresh.take_lan(), SipRequest)
    assert bye.method == "BYE" and bye.call_id == to_phone.call_id
    assert bye.from_.tag == to_phone.from_.tag and bye.to.tag == "phoneans"
    assert bye.cseq.seq == to_phone.cseq.seq + 1
    [answered] = only(fresh.take_wan(), SipResponse)
    assert answered.status == 200


def provider_in_dialog_inbound(invite: SipRequest, *, to_tag: str) -> SipRequest:
    bye = SipRequest("BYE", parse_message(bytes(invite)).uri)  # type: ignore[union-attr]
    bye.add("Via", "SIP/2.0/TLS 127.0.0.30:5061;branch=z9hG4bKinbye")
    bye.add("Max-Forwards", "70")
    bye.add("From", str(invite.from_))
    bye.add("To", str(invite.to.with_tag(to_tag)))
    bye.add("Call-ID", invite.call_id)
    bye.add("CSeq", "8 BYE")
    return bye


def test_the_phone_hangs_up_an_inbound_call_after_the_takeover() -> None:
    h = Harness()
    invite, to_phone = inbound_call(h)
    fresh, _records, _ = taken_over(h)
    bye = make_response(to_phone, 200)  # only for its headers: the dialog as the phone sees it
    request = SipRequest("BYE", parse_message(bytes(to_phone)).uri)  # type: ignore[union-attr]
    request.add("Via", f"SIP/2.0/UDP {PHONE_IP}:5062;branch=z9hG4bKphonebye;rport")
    request.add("Max-Forwards", "70")
    request.add("From", str(bye.to.with_tag("phoneans")))
    request.add("To", str(to_phone.from_))
    request.add("Call-ID", to_phone.call_id)
    request.add("CSeq", "1 BYE")
    fresh.from_phone(bytes(request))
    [upstream] = only(fresh.take_wan(), SipRequest)
    assert upstream.method == "BYE" and upstream.call_id == invite.call_id
    assert upstream.to.tag == "pf1" and upstream.cseq.seq >= 1
    assert str(upstream.uri) == "sip:pbx@127.0.0.30:5061;transport=tls"
    [answered] = only(fresh.take_lan(), SipResponse)
    assert answered.status == 200


def test_keys_never_appear_in_clear_in_the_encoded_record() -> None:
    h = Harness()
    outbound_call(h)
    _fresh, [record], [data] = taken_over(h)
    [stream] = record.streams
    assert stream.spec.wan_tx is not None and stream.spec.wan_rx is not None
    masters = [stream.spec.wan_tx.master, stream.spec.wan_rx.master]
    for master in masters:
        for form in (
            master,
            master.hex().encode(),
            base64.b64encode(master),
            base64.urlsafe_b64encode(master),
            base64.b64encode(master).rstrip(b"="),
        ):
            assert form not in data
        # Any 12-byte window of the key, base64 at any alignment, would show up here too.
        for shift in range(3):
            assert base64.b64encode(master[shift : shift + 12]) not in data
    assert record.key.encode() in data and b"sealed_keys" in data


def test_a_record_under_a_wrong_key_or_site_or_altered_decodes_to_none() -> None:
    h = Harness()
    outbound_call(h)
    _fresh, [record], [data] = taken_over(h)
    assert decode_call(data, Sealer(secrets.token_bytes(32), SITE)) is None
    assert decode_call(data, Sealer(KEY, "site-b")) is None
    assert decode_call(data, Sealer(None, SITE)) is None
    moved = data.replace(f'"key":"{record.key}"'.encode(), b'"key":"c999"')
    assert moved != data and decode_call(moved, Sealer(KEY, SITE)) is None
    assert decode_call(b"not json", Sealer(KEY, SITE)) is None
    assert decode_call(b'{"version":1}', Sealer(KEY, SITE)) is None
    # Without a state key a call with SRTP keys is not encoded at all.
    assert encode_call(record, Sealer(None, SITE), SITE) is None


def test_a_ringing_call_is_not_exported_and_an_ended_one_leaves_the_replica() -> None:
    h = Harness()
    assert h.core.take_changed_calls() == set()  # tracking starts with the first take
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.from_provider(respond(invite, 180))
    [pair] = h.core.active_calls
    assert h.core.export_call(pair.key, h.now, WALL) is None
    h.core.take_changed_calls()
    h.from_provider(respond(invite, 200, body=provider_answer(invite.body)))
    assert h.core.take_changed_calls() == {pair.key}
    assert h.core.export_call(pair.key, h.now, WALL) is not None
    assert h.core.take_changed_calls() == set()
    ok = only(h.take_lan(), SipResponse)[-1]
    h.from_phone(phone_request("BYE", cseq=2, to_tag=ok.to.tag))
    assert pair.key in h.core.take_changed_calls()
    assert h.core.export_call(pair.key, h.now, WALL) is None


def test_a_core_that_never_reported_changes_names_every_call_at_the_first_take() -> None:
    h = Harness()
    outbound_call(h)
    h.from_phone(phone_request("INVITE", body=phone_sdp(), call_id="ringing@phone"))
    assert h.core.take_changed_calls() == {p.key for p in h.core.active_calls}
    assert len(h.core.active_calls) == 2 and h.core.take_changed_calls() == set()


def test_times_are_unix_times_and_restore_keeps_the_calls_age() -> None:
    h = Harness()
    h.now = 100.0
    outbound_call(h)
    h.now = 160.0
    [pair] = h.core.active_calls
    record = h.core.export_call(pair.key, h.now, WALL)
    assert record is not None
    assert record.started == WALL - 60 and record.answered == WALL - 60
    fresh = Harness()
    fresh.now = 7.0
    assert fresh.core.restore_calls([record], fresh.now, WALL + 5) == [pair.key]
    [restored] = fresh.core.active_calls
    assert restored.answered == 7.0 - 65


def test_a_conflicting_record_is_skipped_and_named_never_raised() -> None:
    h = Harness()
    outbound_call(h)
    [pair] = h.core.active_calls
    record = h.core.export_call(pair.key, h.now, WALL)
    assert record is not None
    fresh = Harness()
    assert fresh.core.restore_calls([record], 0.0, WALL) == [pair.key]
    again = msgspec.structs.replace(record, key="c77")
    # Same dialogs and ports under another key: the first one wins, the second is skipped.
    assert fresh.core.restore_calls([record, again], 0.0, WALL) == []
    assert set(fresh.core.call_restore_skipped) == {pair.key, "c77"}
    # A port this core has handed out already.
    other = Harness()
    other.from_phone(phone_request("INVITE", body=phone_sdp(), call_id="other@phone"))
    moved = msgspec.structs.replace(record, key="c50")
    assert other.core.restore_calls([moved], 0.0, WALL) == []
    assert "port" in other.core.call_restore_skipped["c50"]


def test_a_new_call_after_the_takeover_gets_a_key_and_ports_of_its_own() -> None:
    h = Harness()
    outbound_call(h)
    fresh, [record], _ = taken_over(h)
    fresh.from_phone(phone_request("INVITE", body=phone_sdp(), call_id="second@phone"))
    keys = {p.key for p in fresh.core.active_calls}
    assert len(keys) == 2 and record.key in keys
    [stream] = record.streams
    [new_invite] = [m for m in only(fresh.take_wan(), SipRequest) if m.method == "INVITE"]
    fresh.from_provider(respond(new_invite, 200, body=provider_answer(new_invite.body)))
    [opened] = [c for c in fresh.media if isinstance(c, OpenStream)]
    assert opened.call_id not in (record.key,)
    assert opened.spec.lan_port != stream.spec.lan_port
    assert opened.spec.wan_port != stream.spec.wan_port


def test_streams_with_checkpoints_as_the_glue_adds_them_survive_sealing() -> None:
    h = Harness()
    outbound_call(h)
    [pair] = h.core.active_calls
    record = h.core.export_call(pair.key, h.now, WALL)
    assert record is not None
    [stream] = record.streams
    checkpoint = StreamCheckpoint(
        call_id=pair.key,
        stream=0,
        updates=2,
        phone_rtp=(PHONE_IP, 8000),
        tx=(SsrcIndex(0xCAFE, 1, 17),),
        rx=(SsrcIndex(0xBEEF, 2, 65000),),
    )
    # MediaController.stream_records gives (index, spec, checkpoint) tuples.
    glued = msgspec.structs.replace(record, streams=((0, stream.spec, checkpoint),))
    data = encode_call(glued, Sealer(KEY, SITE), SITE)
    assert data is not None
    opened = decode_call(data, Sealer(KEY, SITE))
    assert opened is not None
    assert opened.streams == (ReplicatedStream(0, stream.spec, checkpoint),)


def test_a_port_pair_is_claimed_once_and_comes_back_on_release() -> None:
    ports = PortAllocator(40000, 40007)
    ports.claim(40002)
    with pytest.raises(ValueError, match="in use"):
        ports.claim(40002)
    with pytest.raises(ValueError, match="no RTP port"):
        ports.claim(40003)
    assert [ports.allocate(), ports.allocate(), ports.allocate()] == [40000, 40004, 40006]
    ports.release(40002)
    assert ports.allocate() == 40002


def test_a_provider_reinvite_after_the_takeover_keeps_both_keys() -> None:
    h = Harness()
    invite, answer, _ok = outbound_call(h)
    fresh, [record], _ = taken_over(h)
    [stream] = record.streams
    # The provider re-offers (a session refresh) with its key and address unchanged.
    fresh.from_provider(provider_in_dialog(invite, "INVITE", 11, answer.body))
    [to_phone] = only(fresh.take_lan(), SipRequest)
    assert to_phone.method == "INVITE" and "a=crypto" not in to_phone.body.decode()
    assert to_phone.cseq.seq == record.caller.local_cseq + 1
    session, version = origin_version(to_phone.body)
    assert record.media is not None and session == record.media.lan_origin.sess_id
    assert version > record.media.lan_origin.version
    reply = make_response(to_phone, 200)
    reply.add("Contact", f"<sip:1001@{PHONE_IP}:5062>")
    reply.add("Content-Type", "application/sdp")
    reply.body = phone_sdp().encode()
    fresh.from_phone(bytes(reply))
    [ok200] = [m for m in only(fresh.take_wan(), SipResponse) if m.status == 200]
    tag = answer.body.decode().split("a=crypto:")[1].split()[0]
    assert crypto_lines(ok200.body)[tag] == crypto_lines(invite.body)[tag]
    assert not [c for c in fresh.media if isinstance(c, UpdateStream)]  # nothing changed
    assert stream.spec.wan_tx is not None and stream.spec.wan_tx.generation == 0
