"""The ban file beside a running gateway: bans survive a restart, and an operator's edit of the
file (``gateway bans lift``) reaches the running engine.

The policy engine decides and keeps bans in memory; ``gateway.policy.bans_store`` reads and
writes the file. This glue keeps the two in step: bans are read back at start-up, saved whenever
the engine's list changes (``PolicyEngine.bans_version``), and a ban an operator removed from
the file is lifted in the engine too. Problems with the file are logged once and never raised:
a ban file that cannot be read or written must not stop the gateway, and the bans in memory
stay in force.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gateway.policy.bans_store import BanStoreError, load_bans, save_bans
from gateway.policy.engine import PolicyEngine

__all__ = ["BanFileSync"]

log = logging.getLogger("gateway.bans")


class BanFileSync:
    """Keeps a running engine's bans and the ban file in step.

    Times: ``now`` is the engine's (monotonic) clock, ``wall`` Unix time at that moment; the
    file holds Unix times so that bans survive a restart with a new monotonic clock.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._version = -1
        self._mtime = 0
        #: Addresses in the file as we last wrote or read it: only those can be lifted by an
        #: edit (a ban made since is not in the file yet, and its absence means nothing).
        self._on_file: set[str] = set()

    def restore(self, engine: PolicyEngine, now: float, wall: float) -> int:
        """At start-up: the saved bans back into ``engine``; how many were restored."""
        try:
            bans = load_bans(self.path)
        except BanStoreError as exc:
            log.error("ignoring unreadable ban file: %s", exc)
            return 0
        self._on_file = {b.address for b in bans}
        loaded = engine.import_bans(bans, now, wall)
        if loaded:
            log.info("restored %d ban(s) from %s", loaded, self.path)
        self._version = engine.bans_version
        return loaded

    def save_if_changed(self, engine: PolicyEngine, now: float, wall: float) -> bool:
        """Write the engine's bans when its list moved since the last save; True if written."""
        if engine.bans_version == self._version:
            return False
        # An operator's lift written since our last save comes first: writing the list in
        # memory over it would bring the lifted ban back although the command said "lifted".
        self.follow(engine, now)
        self._version = engine.bans_version
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            bans = engine.export_bans(now, wall)
            save_bans(self.path, bans)
            self._on_file = {b.address for b in bans}
            # Our own write is not an operator's edit: remember its time.
            self._mtime = self.path.stat().st_mtime_ns
        except (OSError, BanStoreError) as exc:
            log.error("cannot save bans to %s: %s", self.path, exc)
            return False
        return True

    def follow(self, engine: PolicyEngine, now: float) -> list[str]:
        """``gateway bans lift`` edits the file: lift in ``engine`` every ban missing from it.

        Returns the lifted addresses (the engine has security events for them to drain).
        """
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return []
        if mtime == self._mtime:
            return []
        self._mtime = mtime
        try:
            on_file = {b.address for b in load_bans(self.path)}
        except BanStoreError as exc:
            log.error("ignoring unreadable ban file: %s", exc)
            return []
        removed, self._on_file = self._on_file - on_file, on_file
        lifted = []
        for ban in engine.bans(now):
            if ban.address in removed and engine.lift_ban(ban.address, now):
                log.warning("ban on %s lifted by the operator", ban.address)
                lifted.append(ban.address)
        return lifted
