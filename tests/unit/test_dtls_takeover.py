"""A DTLS-SRTP keyed call taken over by the other gateway of a pair (issue 14; RFC 5763,
RFC 5764 §4.2, RFC 8842 §5).

The core exports the call with its association (role, the provider's fingerprints, tls-ids,
generation); the glue adds the keys the worker's handshake gave (``DtlsKeyed``, held by the
media controller) to the streams, sealed like SDES keys. The new core carries the association
on: a hold re-INVITE keeps role, tls-id and generation, so the worker starts no handshake.
"""

from __future__ import annotations

import secrets

import msgspec

from gateway.media.control import DtlsKeyed, OpenStream, SrtpKeying, UpdateStream
from gateway.media.controller import _Record
from gateway.sip.message import SipRequest, SipResponse
from gateway.state.calls import CallRecord, ReplicatedStream, decode_call, encode_call
from gateway.state.seal import Sealer
from tests.unit.test_b2bua import Harness, only, phone_request, phone_sdp, respond
from tests.unit.test_b2bua_dtls import OUR_FP, dtls_harness, provider_dtls_sdp

WALL = 1_780_000_000.0
KEY = secrets.token_bytes(32)
SITE = "site-a"
SUITE = "AES_CM_128_HMAC_SHA1_80"


def _keys() -> DtlsKeyed:
    tx = SrtpKeying(SUITE, secrets.token_bytes(30))
    rx = SrtpKeying(SUITE, secrets.token_bytes(30))
    return DtlsKeyed("c1", 0, 0, tx, rx)


def _attributes(body: bytes, name: str) -> list[str]:
    prefix = f"a={name}:"
    return [line[len(prefix) :] for line in body.decode().split("\r\n") if line.startswith(prefix)]


def dtls_call() -> tuple[Harness, SipRequest, SipResponse]:
    """Phone -> provider, the provider answering a=setup:active (the gateway is the DTLS
    server); returns the harness, the WAN INVITE and the phone's 200."""
    h = dtls_harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(respond(invite, 200, body=provider_dtls_sdp("active")))
    [ok] = [m for m in only(h.take_lan(), SipResponse) if m.status == 200]
    h.from_phone(phone_request("ACK", cseq=1, to_tag=ok.to.tag))
    h.take_wan()
    h.take_lan()
    return h, invite, ok


def with_handshake_keys(h: Harness, keys: DtlsKeyed) -> CallRecord:
    """The record as the active's glue writes it: the streams from the media controller,
    whose records hold the handshake's keys (DtlsKeyed)."""
    [key] = h.core.take_changed_calls()
    record = h.core.export_call(key, h.now, WALL)
    assert record is not None
    [opened] = [c for c in h.media if isinstance(c, OpenStream)]
    kept = _Record(opened.spec)
    kept.dtls_keys = msgspec.structs.replace(keys, call_id=key)
    streams = (ReplicatedStream(opened.stream, kept.carried_spec(), None),)
    return msgspec.structs.replace(record, streams=streams)


def test_a_dtls_call_is_exported_with_its_keys_sealed_and_taken_over() -> None:
    h, invite, ok = dtls_call()
    keys = _keys()
    record = with_handshake_keys(h, keys)
    data = encode_call(record, Sealer(KEY, SITE), SITE)
    assert data is not None
    for keying in (keys.tx, keys.rx):
        assert keying.master not in data and keying.master.hex().encode() not in data
    decoded = decode_call(data, Sealer(KEY, SITE))
    assert decoded == record
    assert decode_call(data, Sealer(secrets.token_bytes(32), SITE)) is None
    [stream] = decoded.streams
    assert stream.spec.wan_dtls is not None and stream.spec.wan_dtls.role == "server"
    assert (stream.spec.wan_tx, stream.spec.wan_rx) == (keys.tx, keys.rx)

    fresh = dtls_harness()
    fresh.now = 500.0
    assert fresh.core.restore_calls([decoded], fresh.now, WALL + 30) == [record.key]
    fresh.collect()
    assert not fresh.media and not fresh.wan and not fresh.lan

    # Hold from the phone: the re-offer keeps the association (RFC 8842 §5.5: the role we
    # hold, the same tls-id and fingerprint) and a higher o= version.
    hold = phone_sdp().replace("a=sendrecv", "a=sendonly")
    fresh.from_phone(phone_request("INVITE", cseq=2, body=hold, to_tag=ok.to.tag))
    [reinvite] = only(fresh.take_wan(), SipRequest)
    assert _attributes(reinvite.body, "setup") == ["passive"]
    assert _attributes(reinvite.body, "tls-id") == _attributes(invite.body, "tls-id")
    assert _attributes(reinvite.body, "fingerprint") == [f"{OUR_FP[0]} {OUR_FP[1]}"]
    assert "a=crypto" not in reinvite.body.decode()
    fresh.from_provider(respond(reinvite, 200, body=provider_dtls_sdp("active")))
    [update] = [c for c in fresh.media if isinstance(c, UpdateStream)]
    assert update.spec.wan_dtls == stream.spec.wan_dtls  # same generation: no new handshake
    assert update.spec.direction == "sendonly"


def test_the_successors_record_keeps_the_keys_apart_from_the_signalled_spec() -> None:
    h, _invite, _ok = dtls_call()
    keys = _keys()
    record = with_handshake_keys(h, keys)
    [stream] = record.streams
    taken = _Record.carried(record.key, stream.index, stream.spec)
    # The spec compared with the core's updates has no keys (as the core sends it) ...
    assert taken.spec.wan_tx is None and taken.spec.wan_rx is None
    # ... and a restarted worker on this gateway still opens with the association's keys.
    reopened = taken.restore(record.key, stream.index)
    assert (reopened.spec.wan_tx, reopened.spec.wan_rx) == (keys.tx, keys.rx)
    [opened] = [c for c in h.media if isinstance(c, OpenStream)]
    taken.update(opened.spec)  # the same association: the keys stay
    assert taken.carried_spec().wan_tx == keys.tx
