"""Stream checkpoints and SRTP index restore without sockets (gateway/media/checkpoint.py,
RFC 3711 §3.3.1): a new context carries on where a dead worker's stopped, the far end's
independent libsrtp session accepts it, and no index is ever protected twice."""

from __future__ import annotations

import os
import struct
from typing import Any

import pylibsrtp
import pytest

from gateway.media import checkpoint
from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.relay import RelayStream
from gateway.media.srtp import (
    SrtpAuthError,
    SrtpProtector,
    SrtpReplayError,
    SrtpUnprotector,
    estimate_roc,
)
from gateway.media.suites import SrtpSuite

SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
SSRC = 0x11223344
PHONE = ("192.0.2.10", 4000)
PROVIDER = ("198.51.100.7", 5000)


def rtp(seq: int, ssrc: int = SSRC) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + b"a" * 80


def keying() -> SrtpKeying:
    return SrtpKeying(suite=SUITE.value, master=os.urandom(SUITE.master_length))


def far_end(k: SrtpKeying, ssrc_type: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(
        pylibsrtp.Policy(key=k.master, ssrc_type=ssrc_type, srtp_profile=SUITE.libsrtp_profile)
    )


@pytest.mark.parametrize(
    ("roc", "highest", "seq", "expected"),
    [
        (0, 100, 150, 0),
        (0, 65530, 10, 1),  # wrapped since the checkpoint
        (3, 65530, 65535, 3),
        (3, 5, 65530, 2),  # a late packet from before the wrap
        (0, 5, 65530, 0),  # never below 0
        (2, -1, 7, 2),  # sequence unknown: the ROC as it was
    ],
)
def test_roc_is_estimated_from_the_checkpoint(
    roc: int, highest: int, seq: int, expected: int
) -> None:
    assert estimate_roc(roc, highest, seq) == expected


def run(old_first: int, checkpoint_at: int, crash_at: int, resume_at: int) -> None:
    """The phone's stream through a protector that dies at ``crash_at``, a new one restored
    from the checkpoint taken at ``checkpoint_at``; the provider's session sees it all."""
    k = keying()
    provider = far_end(k, pylibsrtp.Policy.SSRC_ANY_INBOUND)
    old = SrtpProtector(k)
    saved = None
    for seq in range(old_first, crash_at + 1):
        provider.unprotect(old.protect(rtp(seq)))
        if seq == checkpoint_at:
            saved = (old.roc(SSRC), seq & 0xFFFF)
    assert saved is not None and saved[0] is not None
    new = SrtpProtector(k)
    new.restore([(SSRC, saved[0], saved[1])])
    assert new.native() is None  # the fast path waits for the first packet's ROC
    for seq in range(resume_at, resume_at + 40):
        assert provider.unprotect(new.protect(rtp(seq))) == rtp(seq)
    assert not new.restoring


def test_outbound_index_carries_on() -> None:
    run(1000, 1020, 1040, 1100)


def test_outbound_index_carries_on_across_a_wrap_after_the_checkpoint() -> None:
    run(65500, 65520, 65540, 65600)  # checkpoint at ROC 0, crash and resume at ROC 1


def test_outbound_index_at_or_before_the_checkpoint_is_never_protected_again() -> None:
    k = keying()
    old = SrtpProtector(k)
    for seq in range(10, 20):
        old.protect(rtp(seq))
    new = SrtpProtector(k)
    new.restore([(SSRC, 0, 19)])
    for seq in (19, 15):
        with pytest.raises(SrtpReplayError):
            new.protect(rtp(seq))  # same key, same index: a two-time pad
    assert new.restoring
    new.protect(rtp(20))
    assert not new.restoring


def test_inbound_context_accepts_the_provider_after_a_wrap_and_refuses_old_indexes() -> None:
    k = keying()
    provider = far_end(k, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    old = SrtpUnprotector(k)
    packets = {seq: provider.protect(rtp(seq)) for seq in range(65520, 65600)}
    for seq in range(65520, 65540):
        old.unprotect(packets[seq])
    new = SrtpUnprotector(k)
    new.restore([(SSRC, old.roc(SSRC) or 0, 65539 & 0xFFFF)])
    with pytest.raises(SrtpReplayError):
        new.unprotect(packets[65530])  # accepted before the checkpoint: a replay
    forged = bytearray(packets[65560])
    forged[-1] ^= 1
    with pytest.raises(SrtpAuthError):
        new.unprotect(bytes(forged))  # a forged first packet does not fix the ROC
    assert new.restoring
    for seq in range(65560, 65600):  # past the wrap: ROC 1
        assert new.unprotect(packets[seq]) == rtp(seq)
    assert new.roc(SSRC) == 1


class _Stream:
    def __init__(self, relay: RelayStream) -> None:
        self.relay = relay
        self.updates = 0

    def sync(self) -> None:
        pass


class _Call:
    def __init__(self, streams: dict[int, Any]) -> None:
        self.streams = streams


def test_checkpoints_report_changes_only_and_restore_latches_and_ssrcs() -> None:
    spec = StreamSpec(
        lan_port=10000,
        wan_port=20000,
        phone_addr=("192.0.2.10", 4000),
        provider_addr=PROVIDER,
        wan_tx=keying(),
        wan_rx=keying(),
    )
    relay = RelayStream(spec)
    for seq in (1, 2, 3):  # latched from another port than signalled (NAT on the LAN)
        assert relay.from_lan_rtp(rtp(seq), ("192.0.2.10", 4002), 1.0) is not None or seq == 1
    calls = {"c": _Call({0: _Stream(relay)})}
    cps = checkpoint.Checkpointer(0.0, interval=0.5)
    assert cps.step(0.1, calls) == []  # not due yet
    (first,) = cps.step(0.5, calls)
    assert first.phone_rtp == ("192.0.2.10", 4002) and first.provider_rtp is None
    assert [(i.ssrc, i.roc, i.seq) for i in first.tx] == [(SSRC, 0, 3)]
    assert first.rx == ()
    assert cps.step(1.0, calls) == []  # nothing changed
    relay.from_lan_rtp(rtp(4), ("192.0.2.10", 4002), 1.1)
    (second,) = cps.step(1.5, calls)
    assert second.tx[0].seq == 4

    again = RelayStream(spec)
    checkpoint.restore(again, second, 2.0)
    assert again.latches()[0] == ("192.0.2.10", 4002)
    assert again.lan_ssrcs.ssrcs == [SSRC]  # no probation drop after the restart
    assert checkpoint.restoring(again)
    assert again.fast_lan() is not None and again.contexts()[0] is not None
    forward = again.from_lan_rtp(rtp(30), ("192.0.2.10", 4002), 2.1)
    assert forward is not None and forward[1] == PROVIDER
    assert not checkpoint.restoring(again)
