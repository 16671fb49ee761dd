"""Where the benchmark's C programs are compiled and cached: a folder only this user can write.

The compiled load generator is executed, often as root (pinning and priorities need it), so it
must come from a path nobody else can write to. A fixed folder under /tmp is not such a path:
another local user can create it first and plant a binary under the expected name. The cache is
``$XDG_CACHE_HOME/sip-media-gateway/bench`` (``~/.cache/…`` without the variable, as the XDG
Base Directory specification says), created mode 0700 and used only when it is a real directory
owned by this user whose ancestors nobody else can rename it in. When that cannot be had, the
program is compiled into a fresh ``tempfile.mkdtemp`` folder (0700, random name) and not reused.

Executables are named by the SHA-256 of what they are built from, so a changed source is
rebuilt, and one found in the cache is run only if it is a regular file of this user that group
and others cannot write.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["build_dir", "cache_dir", "is_private_executable", "private_dir"]

CACHE_PARTS = ("sip-media-gateway", "bench")


def cache_dir() -> Path:
    """The per-user cache folder for compiled benchmark programs (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG specification: a relative value is invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root.joinpath(*CACHE_PARTS)


def _ancestors_safe(folder: Path) -> bool:
    """True when no other user can move or replace ``folder`` through one of its ancestors.

    An ancestor must belong to this user or root and be writable by nobody else, unless it
    has the sticky bit (as /tmp has), which keeps others from renaming what is ours inside it.
    """
    uid = os.geteuid()
    for parent in folder.parents:
        try:
            st = os.stat(parent)
        except OSError:
            return False
        if st.st_uid not in (uid, 0):
            return False
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return False
    return True


def private_dir(folder: Path) -> bool:
    """Make ``folder`` (0700) if needed; True when it is now a private directory of ours."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return False
    # lstat: a symlink planted in place of the folder is not followed, and not accepted.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return False
    if not _ancestors_safe(folder):
        return False
    if st.st_mode & 0o077:
        # Ours but opened up (by hand, or an old umask): close it before trusting it.
        try:
            os.chmod(folder, 0o700)
        except OSError:
            return False
    return True


def build_dir() -> Path:
    """The private cache folder, or a fresh private temporary folder when it cannot be had."""
    folder = cache_dir()
    if private_dir(folder):
        return folder
    return Path(tempfile.mkdtemp(prefix="gateway-bench-"))


def is_private_executable(path: Path) -> bool:
    """True when ``path`` is a regular file of this user that group and others cannot write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == os.geteuid()
        and not st.st_mode & 0o022
        and bool(st.st_mode & stat.S_IXUSR)
    )
