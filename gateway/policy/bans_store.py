"""Saving and loading the ban list, so bans survive a restart.

The file is JSON (``{"version": 1, "bans": [...]}``) written atomically: a temporary file in the
same directory, flushed and fsynced, then ``os.replace`` over the old one, so a crash mid-write
leaves either the old list or the new one, never half of each. This module is the only part of
the policy package that does I/O; the engine exports and imports records
(``PolicyEngine.export_bans`` / ``import_bans``) and the glue calls these functions.

``gateway bans list`` and ``gateway bans lift ADDRESS`` work on the file with ``list_bans`` and
``lift_ban``. A running gateway keeps its engine and the file in step with
``gateway.ban_file.BanFileSync``.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from gateway.policy.allowlist import normalise_address
from gateway.policy.bans import PersistedBan, SharedBan

_VERSION = 1


class BanFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int
    bans: list[PersistedBan]


class BanStoreError(Exception):
    """The ban file cannot be read or written; the message names the file."""


def load_bans(path: str | os.PathLike[str]) -> list[PersistedBan]:
    """The saved bans; an absent file is an empty list."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BanStoreError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        content = msgspec.json.decode(data, type=BanFile)
    except msgspec.DecodeError as exc:
        raise BanStoreError(f"{path}: not a valid ban file: {exc}") from exc
    if content.version != _VERSION:
        raise BanStoreError(f"{path}: unsupported ban file version {content.version}")
    return content.bans


def save_bans(path: str | os.PathLike[str], bans: list[PersistedBan]) -> None:
    """Write the ban list atomically."""
    path = Path(path)
    data = msgspec.json.format(msgspec.json.encode(BanFile(_VERSION, bans)), indent=1)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise BanStoreError(f"{path}: cannot write: {exc.strerror}") from exc


def list_bans(path: str | os.PathLike[str], wall: float) -> list[PersistedBan]:
    """Saved bans still in force at Unix time ``wall``, soonest to expire first."""
    return sorted((b for b in load_bans(path) if b.expires_at > wall), key=lambda b: b.expires_at)


def lift_ban(path: str | os.PathLike[str], address: str) -> bool:
    """Remove ``address``'s ban from the file; False if it was not banned."""
    key = normalise_address(address)
    if key is None:
        raise BanStoreError(f"{address!r} is not an IP address")
    bans = load_bans(path)
    kept = [b for b in bans if b.address != key]
    if len(kept) == len(bans):
        return False
    save_bans(path, kept)
    return True


def format_shared_bans(bans: list[SharedBan], wall: float, site: str | None) -> str:
    """The shared list's table for ``gateway bans list`` ([state] redis_url): every gateway
    on the Redis applies these; SITE says which one made each (``site`` is this one's)."""
    title = f"shared bans (Redis; this site: {site or '?'})"
    if not bans:
        return f"{title}: none"
    lines = [
        title + ":",
        f"{'ADDRESS':<40} {'SITE':<16} {'RULE':<20} {'OFFENCES':>8}  EXPIRES (UTC)",
    ]
    for ban in bans:
        expires = datetime.fromtimestamp(ban.expires_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        left = max(0, int(ban.expires_at - wall))
        lines.append(
            f"{ban.address:<40} {ban.site:<16} {ban.rule:<20} {ban.offences:>8}  "
            f"{expires} (in {left}s)"
        )
    return "\n".join(lines)


def format_bans(bans: list[PersistedBan], wall: float) -> str:
    """A table for ``gateway bans list``."""
    if not bans:
        return "no active bans"
    lines = [f"{'ADDRESS':<40} {'RULE':<20} {'OFFENCES':>8}  EXPIRES (UTC)"]
    for ban in bans:
        expires = datetime.fromtimestamp(ban.expires_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        left = max(0, int(ban.expires_at - wall))
        lines.append(f"{ban.address:<40} {ban.rule:<20} {ban.offences:>8}  {expires} (in {left}s)")
    return "\n".join(lines)
