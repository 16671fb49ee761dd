"""Flood and scan detection per source: token buckets, authentication failures, enumeration.

A token bucket allows ``burst`` requests at once and ``rate`` per second sustained: phones that
re-register or retransmit fit comfortably, a flood does not. Brute force shows as authentication
failures (a 401/407 answering a request that carried credentials, or a 403) piling up without a
success between them. Enumeration shows as one source addressing many distinct users the
gateway does not know (the first step of a SIPVicious ``svwar`` run).

This module only measures; the engine decides on bans and refusals. State is per source and
bounded: idle sources are forgotten first, so spoofed sources cannot exhaust memory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from gateway.policy.settings import RateLimit


class TokenBucket:
    """A token bucket; ``rate`` 0 means unlimited."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.rate = limit.rate
        self.burst = limit.burst
        self._tokens = limit.burst
        self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; False means over the limit."""
        if self.rate <= 0:
            return True
        # A clock that steps back must not mint tokens or go negative.
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._stamp = max(self._stamp, now)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def full_at(self) -> float:
        """When the bucket will be full again (state can be dropped then)."""
        if self.rate <= 0:
            return self._stamp
        return self._stamp + (self.burst - self._tokens) / self.rate


@dataclass(slots=True)
class SourceState:
    """What is remembered about one source."""

    all_requests: TokenBucket
    register: TokenBucket
    invite: TokenBucket
    last_seen: float
    auth_failures: deque[float] = field(default_factory=deque)
    #: Unknown user -> last time it was addressed.
    unknown_users: dict[str, float] = field(default_factory=dict)

    def idle_since(self) -> float:
        return max(
            self.last_seen,
            self.all_requests.full_at(),
            self.register.full_at(),
            self.invite.full_at(),
        )


class SourceTable:
    """Per-source state with a size bound."""

    def __init__(
        self,
        *,
        per_source: RateLimit,
        register: RateLimit,
        invite: RateLimit,
        max_sources: int,
    ) -> None:
        self._limits = (per_source, register, invite)
        self._max = max_sources
        self._sources: dict[str, SourceState] = {}

    def __len__(self) -> int:
        return len(self._sources)

    def get(self, address: str, now: float) -> SourceState:
        state = self._sources.get(address)
        if state is None:
            if len(self._sources) >= self._max:
                self._evict(now)
            per_source, register, invite = self._limits
            state = SourceState(
                TokenBucket(per_source, now),
                TokenBucket(register, now),
                TokenBucket(invite, now),
                now,
            )
            self._sources[address] = state
        state.last_seen = max(state.last_seen, now)
        return state

    def peek(self, address: str) -> SourceState | None:
        return self._sources.get(address)

    def forget(self, address: str) -> None:
        self._sources.pop(address, None)

    def prune(self, now: float, keep_seconds: float) -> None:
        """Forget sources idle (buckets full, nothing recent) for ``keep_seconds``."""
        stale = [a for a, s in self._sources.items() if now - s.idle_since() > keep_seconds]
        for address in stale:
            del self._sources[address]

    def _evict(self, now: float) -> None:
        # Drop the longest-idle tenth at once so eviction is not paid on every new source.
        ordered = sorted(self._sources, key=lambda a: self._sources[a].idle_since())
        for address in ordered[: max(1, len(ordered) // 10)]:
            del self._sources[address]


def count_in_window(times: deque[float], now: float, window: float) -> int:
    """Drop entries older than ``window`` from the left and count the rest."""
    while times and now - times[0] > window:
        times.popleft()
    return len(times)


def distinct_unknown_users(users: dict[str, float], now: float, window: float) -> int:
    for user in [u for u, t in users.items() if now - t > window]:
        del users[user]
    return len(users)
