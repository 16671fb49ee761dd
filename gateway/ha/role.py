"""The role of one gateway of an active/standby pair, as a sans-IO machine.

keepalived (VRRP, RFC 5798) decides which box holds the site's addresses; its notify script
tells the gateway (``gateway ha notify master|backup|fault|stop``). This machine turns those
words into what the glue must do, and keeps the facts ``gateway ha status`` and the metrics
show. It reads no clock and touches no socket: each input carries ``now`` (Unix time).

    STARTING --started--> STANDBY --master--> PROMOTING --promoted--> ACTIVE
                                                  |                      |
                       backup / fault / stop,     +--------+-------------+
                       or a promotion that failed          v
                                                         FENCED (the process ends)

A standby told "backup", "fault" or "stop" stays standby: it holds nothing. An active (or
promoting) box told anything but "master" has lost, or is about to lose, the addresses: it is
FENCED, and the glue must stop touching the network at once (no BYE, no REGISTER, no media:
the new active carries the calls now). Leaving FENCED is a new process, started as standby.

``epoch`` orders the actives of one site: a promotion takes one more than the highest epoch
seen in ``smg:<site>:ha:active``, so a reader can tell the newer writer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["NOTIFY_STATES", "Fence", "Promote", "Role", "RoleMachine"]

#: The words keepalived's notify scripts pass (its states, lower case).
NOTIFY_STATES = ("master", "backup", "fault", "stop")


class Role(enum.Enum):
    STARTING = "starting"
    STANDBY = "standby"
    PROMOTING = "promoting"
    ACTIVE = "active"
    FENCED = "fenced"


@dataclass(frozen=True)
class Promote:
    """Take over: restore the replica, bind the addresses, connect the provider."""

    epoch: int


@dataclass(frozen=True)
class Fence:
    """Stop touching the network now; ``demoted`` when this box was active (or promoting)."""

    reason: str
    demoted: bool


Action = Promote | Fence


class RoleMachine:
    """The role and its history for one node."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.role = Role.STARTING
        #: Unix time the current role began.
        self.since: float | None = None
        self.epoch = 0
        #: Role changes since the process started (STARTING -> STANDBY not counted).
        self.changes = 0
        #: The last notify word and when it came.
        self.last_notify: tuple[str, float] | None = None
        self.fence_reason = ""

    def started(self, now: float) -> None:
        """Workers up, the replica being read: a standby."""
        if self.role is Role.STARTING:
            self.role = Role.STANDBY
            self.since = now

    def notify(self, state: str, now: float, seen_epoch: int = 0) -> Action | None:
        """keepalived's word; the action the glue must take, if any.

        ``seen_epoch``: the highest epoch in the shared store (0 when none or unreadable)."""
        state = state.lower()
        if state not in NOTIFY_STATES:
            raise ValueError(f"expected one of {', '.join(NOTIFY_STATES)}, got {state!r}")
        self.last_notify = (state, now)
        if state == "master":
            if self.role is Role.STANDBY:
                self._enter(Role.PROMOTING, now)
                self.epoch = max(self.epoch, seen_epoch) + 1
                return Promote(self.epoch)
            return None  # already active or promoting (keepalived repeats itself); fenced: ends
        if self.role in (Role.ACTIVE, Role.PROMOTING):
            return self.fence(f"keepalived says {state}", now)
        return None

    def promoted(self, now: float) -> None:
        """The takeover finished: listeners open, provider link started."""
        if self.role is Role.PROMOTING:
            self._enter(Role.ACTIVE, now)

    def fence(self, reason: str, now: float) -> Fence | None:
        """Fenced for ``reason`` (a notify, a promotion that failed, a newer active seen)."""
        if self.role is Role.FENCED:
            return None
        demoted = self.role in (Role.ACTIVE, Role.PROMOTING)
        self._enter(Role.FENCED, now)
        self.fence_reason = reason
        return Fence(reason, demoted)

    def newer_active(self, node: str, epoch: int, now: float) -> Fence | None:
        """Another node wrote the active marker with a higher epoch: two actives must not be."""
        if self.role is Role.ACTIVE and node != self.node and epoch > self.epoch:
            return self.fence(f"node {node} is active with epoch {epoch}", now)
        return None

    def _enter(self, role: Role, now: float) -> None:
        if role is not self.role:
            self.role = role
            self.since = now
            self.changes += 1
