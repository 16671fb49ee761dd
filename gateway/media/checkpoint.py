"""Stream checkpoints: what a media worker alone knows of a stream, taken and given back
(RFC 3711 §3.3.1 rollover counters, RFC 3550 §8.2 SSRCs, symmetric-RTP latches).

A media worker that dies takes its sockets and libsrtp contexts with it. The signalling
process keeps every stream's :class:`~gateway.media.control.StreamSpec` (addresses and keys);
what it cannot know is what the packet path learnt since: the latched source ports, the SSRCs
kept per direction, and per SSRC the SRTP index (ROC and highest sequence number). A worker
reports that as a :class:`~gateway.media.control.StreamCheckpoint` every
:data:`CHECKPOINT_INTERVAL` for the streams whose checkpoint changed, a batch of streams per
loop round (a pass over a thousand streams must not pause the packet path), never per packet;
the controller keeps the latest, and hands it to the new worker in ``OpenStream.restore``.

Why a checkpoint up to an interval old is enough (docs/high-availability.md):

* Outbound (protect), the gateway sends the phone's own sequence numbers. Packets the new
  worker protects were sent by the phone after the old worker's sockets closed (the kernel
  drops what was queued on them), so their sequence numbers are past every one the old worker
  protected; their ROC is estimated from the checkpoint as RFC 3711 §3.3.1 does, which is right
  while fewer than 2^15 packets went by since it (more than ten minutes of audio). An index at
  or before the checkpoint is refused: never the same key and index twice.
* Outbound SRTCP (RFC 3711 §3.4) has no such help: its index is the gateway's own counter per
  SSRC, which a new context would start at 1 again under the same key. The checkpoint names per
  kept SSRC the highest SRTCP index used; the new context moves libsrtp's counter past it plus
  :data:`~gateway.media.srtp.SRTCP_MARGIN` (more than RTCP sends in a checkpoint's age) before
  that SSRC's first SRTCP packet, and sends none for an SSRC the checkpoint does not name.
* Inbound (unprotect), the provider's index carries on; the first packet of each SSRC sets the
  ROC from the same estimate, and an index at or before the checkpoint is refused as a replay.
  What the old worker accepted after its last checkpoint is not known here: such a packet,
  replayed by an attacker before the provider's next one, would pass once (at most one
  interval of audio the phone already heard).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.media.control import SsrcIndex, StreamCheckpoint
from gateway.media.relay import RelayStream
from gateway.media.srtp import SrtpProtector, SrtpUnprotector
from gateway.media.ssrc_gate import SsrcGate

__all__ = ["CHECKPOINT_INTERVAL", "Checkpointer", "restore", "take"]

#: How often a worker reports changed checkpoints: the most a crash can lose.
CHECKPOINT_INTERVAL = 0.5
#: Streams checkpointed per loop round.
CHECKPOINT_BATCH = 64


def _indexes(
    gate: SsrcGate, context: SrtpProtector | SrtpUnprotector | None, highest: int
) -> tuple[SsrcIndex, ...]:
    """Each kept SSRC's index; the one heard last gets ``highest`` (the reception
    statistics' highest sequence number, which follow the current sender)."""
    if context is None:
        return ()
    kept, _ = gate.state()
    if not kept:
        return ()
    latest = max(kept, key=lambda pair: pair[1])[0]
    out = []
    for ssrc, _heard in kept:
        roc = context.roc(ssrc)
        if roc is None:
            continue  # no libsrtp stream for it (not yet protected / authenticated)
        seq = context.highest(ssrc)
        if ssrc == latest and seq < 0:
            seq = highest
        out.append(SsrcIndex(ssrc=ssrc, roc=roc, seq=seq))
    return tuple(out)


def _srtcp(gate: SsrcGate, context: SrtpProtector | None) -> tuple[tuple[int, int], ...]:
    """Each kept SSRC's highest SRTCP index used under ``context`` (0: none yet)."""
    if context is None:
        return ()
    kept, _ = gate.state()
    return tuple(sorted((ssrc, context.srtcp_index(ssrc)) for ssrc, _heard in kept))


def take(call_id: str, index: int, relay: RelayStream, updates: int) -> StreamCheckpoint:
    """The checkpoint of one stream (its relay's state must be current: the worker folds the
    C fast path's state back first)."""
    phone_rtp, phone_rtcp, provider_rtp, provider_rtcp = relay.latches()
    tx, rx, rtcp_tx = relay.contexts()
    lan = relay.lan_reception.state()
    wan = relay.wan_reception.state()
    # state() is (max_seq, base, cycles, received, ...): no packet yet, no sequence number.
    return StreamCheckpoint(
        call_id=call_id,
        stream=index,
        updates=updates,
        phone_rtp=phone_rtp,
        phone_rtcp=phone_rtcp,
        provider_rtp=provider_rtp,
        provider_rtcp=provider_rtcp,
        tx=_indexes(relay.lan_ssrcs, tx, lan[0] if lan[3] else -1),
        rx=_indexes(relay.wan_ssrcs, rx, wan[0] if wan[3] else -1),
        srtcp=_srtcp(relay.lan_ssrcs, tx),
        rtcp_srtcp=_srtcp(relay.lan_ssrcs, rtcp_tx),
    )


def restore(relay: RelayStream, checkpoint: StreamCheckpoint, now: float) -> None:
    """Give a new relay (built from the same spec) a dead worker's state."""
    tx, rx, rtcp_tx = relay.contexts()
    if tx is not None:
        tx.restore([(i.ssrc, i.roc, i.seq) for i in checkpoint.tx])
        tx.restore_srtcp(list(checkpoint.srtcp))
    if rtcp_tx is not None:
        rtcp_tx.restore_srtcp(list(checkpoint.rtcp_srtcp))
    if rx is not None:
        rx.restore([(i.ssrc, i.roc, i.seq) for i in checkpoint.rx])
    relay.restore(
        (
            checkpoint.phone_rtp,
            checkpoint.phone_rtcp,
            checkpoint.provider_rtp,
            checkpoint.provider_rtcp,
        ),
        now,
    )


def restoring(relay: RelayStream) -> bool:
    """True while a restored SSRC of the relay's contexts waits for its first packet."""
    return any(c is not None and c.restoring for c in relay.contexts())


class Checkpointer:
    """When to checkpoint, and which streams: a pass every :data:`CHECKPOINT_INTERVAL`,
    :data:`CHECKPOINT_BATCH` streams per step, reporting only what changed (sans-IO: the
    worker hands it its calls; it sends nothing itself)."""

    def __init__(self, now: float, interval: float = CHECKPOINT_INTERVAL) -> None:
        self.interval = interval
        self.next_due = now + interval
        self._pending: list[tuple[str, int]] = []
        self._sent: dict[tuple[str, int], StreamCheckpoint] = {}

    @property
    def busy(self) -> bool:
        """True while a pass is under way (the loop should come back soon)."""
        return bool(self._pending)

    def step(self, now: float, calls: Mapping[str, Any]) -> list[StreamCheckpoint]:
        """Start a pass when due, take the next batch; return the changed checkpoints.

        ``calls`` maps a Call-ID to the worker's call, whose ``streams`` map an index to a
        stream with ``sync()`` (fold the C fast path's state back), ``relay`` and ``updates``.
        """
        if now >= self.next_due:
            self.next_due = now + self.interval
            self._pending = [(c, i) for c, call in calls.items() for i in call.streams]
        changed = []
        pending = self._pending
        for _ in range(min(len(pending), CHECKPOINT_BATCH)):
            call_id, index = pending.pop()
            call = calls.get(call_id)
            stream = call.streams.get(index) if call is not None else None
            if stream is None:
                continue  # closed since the pass began
            stream.sync()
            taken = take(call_id, index, stream.relay, stream.updates)
            key = (call_id, index)
            if self._sent.get(key) != taken:
                self._sent[key] = taken
                changed.append(taken)
        return changed

    def forget(self, call_id: str, stream: int) -> None:
        """A stream closed: its next checkpoint (after a re-open) is news again."""
        self._sent.pop((call_id, stream), None)
