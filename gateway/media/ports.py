"""RTP/RTCP port pairs for relayed streams (RFC 3550 §11).

RFC 3550 §11: RTP on an even port, RTCP on the next odd one. Each allocation hands out the even
port and reserves port + 1 with it, even when a stream later muxes RTCP (RFC 5761): the answer
may refuse the mux, and then RTCP needs that port.

Released pairs go to the back of the queue: a pair comes back only after every other free one
was used, so late packets of an ended call do not land in a new call on the same port.
"""

from __future__ import annotations

from collections import OrderedDict


class PortsExhausted(RuntimeError):
    """No free RTP/RTCP pair: the call cannot be anchored (answer 503)."""

    status_hint = 503


class PortAllocator:
    """Hands out even RTP ports in ``first..last`` (inclusive), each with port + 1 for RTCP."""

    def __init__(self, first: int, last: int) -> None:
        start = first + (first % 2)
        if not 1 <= first <= last <= 65535 or start + 1 > last:
            raise ValueError(f"port range {first}-{last} holds no even/odd RTP/RTCP pair")
        self.first = first
        self.last = last
        # Ordered: allocate from the front, release to the back, claim from anywhere (a call
        # taken over from another gateway), each O(1).
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(start, last, 2))
        self._in_use: set[int] = set()

    @property
    def capacity(self) -> int:
        """Number of pairs in the range."""
        return len(self._free) + len(self._in_use)

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def allocate(self) -> int:
        """The even RTP port of a free pair (its RTCP port is the returned value + 1)."""
        if not self._free:
            raise PortsExhausted(
                f"no free RTP port pair in {self.first}-{self.last}"
                f" (all {len(self._in_use)} pairs in use)"
            )
        port, _ = self._free.popitem(last=False)
        self._in_use.add(port)
        return port

    def release(self, port: int) -> None:
        """Give a pair back; it is handed out again only after all other free pairs."""
        if port not in self._in_use:
            raise ValueError(f"port {port} was not allocated from {self.first}-{self.last}")
        self._in_use.remove(port)
        self._free[port] = None

    def claim(self, port: int) -> None:
        """Take one given pair: a call taken over from another gateway keeps its ports.
        ValueError when the pair is in use or not one of this range's."""
        if port in self._in_use:
            raise ValueError(f"port {port} is in use already")
        try:
            del self._free[port]
        except KeyError:
            raise ValueError(f"port {port} is no RTP port of {self.first}-{self.last}") from None
        self._in_use.add(port)
