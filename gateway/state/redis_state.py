"""The Redis side of one gateway, as the composition root wires it: the link, the state store
and the shared ban list, and the view ``gateway state status`` prints.

Without ``[state] redis_url`` none of this exists and the gateway keeps its state in the local
folder only, as a single box always did.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

from gateway.config import StateSettings
from gateway.policy import PolicyEngine
from gateway.state.local import LocalStateStore
from gateway.state.model import CAPS, REGISTRATIONS
from gateway.state.redis_store import RedisLink, RedisStateStore, state_key
from gateway.state.shared_bans import SharedBans

__all__ = ["RedisState", "local_state_status"]


class RedisState:
    """Link, store and shared bans for one running gateway."""

    def __init__(self, settings: StateSettings) -> None:
        self.settings = settings
        self.link = RedisLink(settings)
        self.store = RedisStateStore(self.link, LocalStateStore(Path(settings.directory)))
        self.bans: SharedBans | None = None

    async def start(self, policy: PolicyEngine, now: Any, changed: Any) -> None:
        """Read this site's state (before the keeper restores it) and start the writers.

        ``now`` is the engine's clock (a callable), ``changed`` the glue's flush.
        """
        await self.store.fetch((REGISTRATIONS, CAPS))

        def wall() -> float:
            return time.time()

        self.bans = SharedBans(
            self.link,
            export=lambda: policy.export_bans(now(), wall()),
            apply=lambda ban: policy.remote_ban(ban, now(), wall()),
            lift=lambda address, site: policy.remote_lift(address, site, now()),
            changed=changed,
            wall=wall,
        )
        self.store.start()
        self.bans.start()

    def bans_changed(self) -> None:
        if self.bans is not None:
            self.bans.poke()

    async def stop(self) -> None:
        if self.bans is not None:
            await self.bans.stop()
        await self.store.stop()
        await self.link.close()

    def status(self) -> dict[str, Any]:
        """What ``gateway state status`` shows (never a credential, never the URL's password)."""
        bans = self.bans
        last_sync = bans.last_sync if bans is not None else None
        return {
            "backend": "redis",
            "redis": _safe_url(self.link.url),
            "reachable": self.link.up,
            "error": self.link.last_error,
            "site": self.link.site,
            "last_write": self.store.last_write,
            "last_sync": last_sync,
            "kinds": {
                kind: {"key": state_key(self.link.site, kind), "seq": seq}
                for kind, seq in sorted(self.store.stored.items())
            },
            "shared_bans": bans.count if bans is not None else 0,
            #: Each shared ban in force, with the site that made it (``gateway bans list``).
            "shared_ban_list": [msgspec.to_builtins(b) for b in bans.in_force()]
            if bans is not None
            else [],
        }


def local_state_status(settings: StateSettings) -> dict[str, Any]:
    """The status without Redis: the local folder only."""
    return {
        "backend": "local",
        "redis": None,
        "reachable": None,
        "error": "",
        "site": settings.site,
        "directory": settings.directory,
        "last_write": None,
        "last_sync": None,
        "kinds": {},
        "shared_bans": 0,
        "shared_ban_list": [],
    }


def _safe_url(url: str) -> str:
    """The URL without any password written into it."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def format_state_status(data: dict[str, Any]) -> str:
    """The table ``gateway state status`` prints."""

    def when(value: Any) -> str:
        if not isinstance(value, (int, float)):
            return "never"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))
        return f"{stamp} UTC ({max(0, int(time.time() - value))}s ago)"

    if data.get("backend") != "redis":
        return (
            f"site:         {data.get('site')}\n"
            f"store:        local folder {data.get('directory')} (no [state] redis_url)"
        )
    reachable = "yes" if data.get("reachable") else f"NO ({data.get('error')})"
    lines = [
        f"site:         {data.get('site')}",
        f"redis:        {data.get('redis')}",
        f"reachable:    {reachable}",
        f"last write:   {when(data.get('last_write'))}",
        f"last sync:    {when(data.get('last_sync'))}",
        f"shared bans:  {data.get('shared_bans', 0)}",
    ]
    kinds = data.get("kinds") or {}
    for kind, entry in kinds.items():
        lines.append(f"stored:       {kind} at {entry['key']} (seq {entry['seq']})")
    if not kinds:
        lines.append("stored:       nothing yet")
    return "\n".join(lines)
