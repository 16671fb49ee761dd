"""Which SSRCs one direction of a relayed stream accepts (RFC 3550 §6.2.1, §8.2, A.1; RFC 3711
§3.2.3, §9.1).

libsrtp keeps a stream (ROC, replay window) per SSRC and looks streams up linearly, so the
relay (:mod:`gateway.media.relay`) lets at most :data:`SSRC_SLOTS` SSRCs per direction through
at a time, retires one only after it has been silent for :data:`SSRC_IDLE_S` (never to be
accepted again under the same keys), and, where nothing authenticates a packet, admits a new
SSRC only after RFC 3550's source validation ("probation", MIN_SEQUENTIAL = 2): a flood of
random SSRCs from a phone's own address then never takes a slot, even when it starts before
the call's first packet. Pure state, no I/O: the relay calls it per packet, the worker's C fast
path mirrors the kept SSRCs (never the candidates) through :meth:`SsrcGate.state`.
"""

from __future__ import annotations

__all__ = [
    "NO_SEQ",
    "SSRC_CANDIDATES",
    "SSRC_IDLE_S",
    "SSRC_RETIRED_MAX",
    "SSRC_SLOTS",
    "SsrcGate",
]

#: SSRCs one direction of a stream accepts at a time: the current and the previous.
SSRC_SLOTS = 2
#: A kept SSRC silent for this long may give its slot to a new SSRC. Longer than any packet
#: interval (ptime) and short against the time between two SSRC changes of a real peer.
SSRC_IDLE_S = 1.0
#: SSRCs given up are remembered, under one key, up to this many (a few KiB); after that no
#: slot is given up any more until the keys change: the kept SSRCs go on, new ones are dropped.
SSRC_RETIRED_MAX = 256
#: New SSRCs on probation (heard once, RFC 3550 A.1) are remembered in two generations of up
#: to this many: when the newer is full it becomes the older and the older is forgotten, so a
#: candidate is remembered while fewer than this many newer ones came after it (and at most
#: twice this many are held). A flood of random SSRCs at 20,000 packets/s puts 400 new ones
#: between two packets of a real stream 20 ms apart (600 at 30 ms): 1,024 keeps the real one
#: through floods up to about 50,000/s at 20 ms. At most about 140 KiB per direction, only
#: under such a flood (a call's own SSRCs make one or two entries); two generations rather than
#: one table evicting its oldest entry per new one, which cost a CPython dict a scan over its
#: deleted entries each time (3 µs a packet against 0.9).
SSRC_CANDIDATES = 1024
#: What :meth:`SsrcGate.probe` is given for an RTCP packet, which has no sequence number.
NO_SEQ = -1


class SsrcGate:
    """Which RTP SSRCs one direction of a stream accepts (RFC 3550 §8.2, RFC 3711 §3.2.3).

    At most :data:`SSRC_SLOTS` SSRCs are kept, each with the time it was last heard. A packet
    of a kept SSRC passes (:meth:`slot`, then :meth:`heard`). A new SSRC may take a free slot,
    or the slot of the kept SSRC silent longest once it has been silent for ``idle`` seconds
    (:meth:`admissible`, :meth:`admit`); the SSRC it replaces is retired for good (the caller
    removes its libsrtp stream). The C fast path applies the same rule to the state it gets
    from :meth:`state` and hands back through :meth:`set_state`.

    Where there is no authentication (RTP from the phone, plaintext from the WAN), a new SSRC
    that may be admitted is first a candidate (:meth:`probe`, RFC 3550 A.1 probation with
    MIN_SEQUENTIAL = 2): it is admitted with its second packet if that one's sequence number
    follows the first's (RTCP, which has none: its second packet of either kind), so a
    legitimate new stream loses its first packet. Candidates are remembered while fewer than
    :data:`SSRC_CANDIDATES` newer ones were heard after them. Candidates live only here: the C
    fast path hands every new SSRC that may be admitted back to Python, and drops, counted,
    the ones that may not (those never become candidates, in either loop).
    """

    __slots__ = ("_candidates", "_heard", "_older", "_retired", "idle", "ssrcs")

    def __init__(self, idle: float = SSRC_IDLE_S) -> None:
        self.idle = idle
        #: The kept SSRCs and when each was last heard (``now`` values), index for index.
        self.ssrcs: list[int] = []
        self._heard: list[float] = []
        self._retired: set[int] = set()
        #: Candidate SSRC -> the sequence number its next packet must carry (or NO_SEQ after
        #: RTCP): the newer generation, then the older.
        self._candidates: dict[int, int] = {}
        self._older: dict[int, int] = {}

    def slot(self, ssrc: int) -> int:
        """The kept SSRC's index, or -1."""
        ssrcs = self.ssrcs
        return ssrcs.index(ssrc) if ssrc in ssrcs else -1

    def heard(self, index: int, now: float) -> None:
        self._heard[index] = now

    @property
    def can_retire(self) -> bool:
        """False once :data:`SSRC_RETIRED_MAX` SSRCs were given up: slots stay as they are."""
        return len(self._retired) < SSRC_RETIRED_MAX

    def admissible(self, ssrc: int, now: float) -> bool:
        """True when a new (not kept) ``ssrc`` may be admitted at ``now``."""
        if ssrc in self._retired:
            return False
        if len(self.ssrcs) < SSRC_SLOTS:
            return True
        return self.can_retire and now - min(self._heard) >= self.idle

    def probe(self, ssrc: int, seq: int) -> bool:
        """A packet of a new ``ssrc`` that is :meth:`admissible`, with its RTP sequence number
        (:data:`NO_SEQ` for RTCP): True when this validates it (then :meth:`admit` it; until
        then nothing changed), False when it stays a candidate (drop the packet)."""
        candidates = self._candidates
        expected = candidates.get(ssrc)
        if expected is None:
            expected = self._older.get(ssrc)
        if expected is not None and (expected in (seq, NO_SEQ) or seq == NO_SEQ):
            return True
        if expected is not None:
            candidates.pop(ssrc, None)  # heard again, out of sequence: now the newest
            self._older.pop(ssrc, None)
        if len(candidates) >= SSRC_CANDIDATES:
            self._older = candidates
            candidates = self._candidates = {}
        candidates[ssrc] = NO_SEQ if seq == NO_SEQ else (seq + 1) & 0xFFFF
        return False

    @property
    def candidates(self) -> int:
        """How many new SSRCs are on probation (remembered)."""
        return len(self._candidates) + len(self._older)

    def admit(self, ssrc: int, now: float) -> int | None:
        """Keep ``ssrc`` (after :meth:`admissible`); returns the SSRC it retired, if any."""
        self._candidates.pop(ssrc, None)
        self._older.pop(ssrc, None)
        retired = None
        if len(self.ssrcs) >= SSRC_SLOTS:
            oldest = self._heard.index(min(self._heard))
            retired = self.ssrcs.pop(oldest)
            del self._heard[oldest]
            self._retired.add(retired)
        self.ssrcs.append(ssrc)
        self._heard.append(now)
        return retired

    def state(self) -> tuple[tuple[tuple[int, float], ...], bool]:
        """((ssrc, last heard) per kept SSRC, whether a slot may still be given up)."""
        return tuple(zip(self.ssrcs, self._heard, strict=True)), self.can_retire

    def set_state(self, kept: tuple[tuple[int, float], ...]) -> None:
        """Take back the last-heard times the fast path kept (it never changes which SSRCs
        are kept: a new one always comes back to Python)."""
        for ssrc, heard in kept:
            if ssrc in self.ssrcs:
                self._heard[self.ssrcs.index(ssrc)] = heard
