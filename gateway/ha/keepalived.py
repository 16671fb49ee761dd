"""keepalived's notify FIFO, read by the gateway itself (``[ha] keepalived_fifo``).

keepalived (``vrrp_notify_fifo`` in ``global_defs``) writes one line per VRRP state change,
in the order the changes happen::

    INSTANCE "VI_LAN" MASTER 100
    GROUP "GATEWAY" MASTER 0

The gateway acts on the sync group's lines (RFC 5798 keeps each instance's state; the sync
group moves the site's addresses together) and on nothing else: instance lines are counted,
anything else is counted as unknown and ignored. Reading the FIFO in the gateway's own loop
keeps the words in keepalived's order (separate ``notify_master``/``notify_backup`` scripts run
side by side, and a slow ``backup`` could overtake the ``master`` after it) and puts no process
start on the failover path.

:class:`NotifyLines` is the sans-IO part (bytes in, words out, counters). :class:`FifoReader`
is the glue: it creates the FIFO when missing (mode 0600, a FIFO and nothing else), opens it
read-write (so it never sees end-of-file while keepalived restarts, and keepalived's lines
wait in the pipe while the gateway restarts), and opens it again when the path names another
FIFO (keepalived removed and recreated it).

On opening, the lines already waiting are keepalived's word since the last reader: only the
last group word counts (keepalived's current state: a gateway restarted on a box keepalived
made master is told ``master`` again; one restarted after a FAULT stays standby).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FifoReader", "NotifyLine", "NotifyLines", "follow_fifo", "parse_line"]

log = logging.getLogger("gateway.ha")

#: keepalived's states, as the role machine's words.
_WORDS = {"MASTER": "master", "BACKUP": "backup", "FAULT": "fault", "STOP": "stop"}
#: A longer line is not keepalived's (its names are at most a few dozen bytes).
MAX_LINE = 512
#: Seconds between checks that the path still names the FIFO this reader holds.
WATCH_EVERY = 1.0


@dataclass(frozen=True)
class NotifyLine:
    """One line of the FIFO: ``kind`` INSTANCE or GROUP, the name, the state word."""

    kind: str
    name: str
    state: str


def parse_line(text: str) -> NotifyLine | None:
    """``GROUP "GATEWAY" MASTER 0`` -> NotifyLine; None for anything else."""
    parts = text.split()
    if len(parts) < 3 or parts[0] not in ("INSTANCE", "GROUP"):
        return None
    name = parts[1]
    if len(name) < 3 or not (name.startswith('"') and name.endswith('"')):
        return None
    return NotifyLine(parts[0], name[1:-1], parts[2])


class NotifyLines:
    """Bytes from the FIFO in, the group's words out, in order (sans-IO)."""

    def __init__(self, group: str = "") -> None:
        #: The sync group acted on; "" = any group's lines.
        self.group = group
        self._partial = b""
        self._overlong = False
        self.lines = 0
        self.acted = 0
        self.instances = 0
        self.unknown = 0
        #: The last group word seen, for status.
        self.last: str | None = None

    def feed(self, data: bytes) -> list[str]:
        """The words to act on, in the order keepalived wrote them."""
        words: list[str] = []
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        for chunk in chunks:
            if self._overlong:  # the tail of a line already counted
                self._overlong = False
                continue
            word = self._line(chunk)
            if word is not None:
                words.append(word)
        if len(self._partial) > MAX_LINE:
            self._partial = b""
            self._overlong = True
            self.lines += 1
            self.unknown += 1
        return words

    def settle(self, data: bytes) -> list[str]:
        """Lines that waited in the pipe: only the last word is keepalived's state now."""
        return self.feed(data)[-1:]

    def _line(self, chunk: bytes) -> str | None:
        if not chunk.strip():
            return None
        self.lines += 1
        line = parse_line(chunk.decode("utf-8", "replace")) if len(chunk) <= MAX_LINE else None
        if line is None:
            self.unknown += 1
            return None
        if line.kind == "INSTANCE":
            self.instances += 1
            return None
        word = _WORDS.get(line.state)
        if word is None or (self.group and line.name != self.group):
            self.unknown += 1
            return None
        self.acted += 1
        self.last = word
        return word

    def facts(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "acted": self.acted,
            "instances": self.instances,
            "unknown": self.unknown,
            "last": self.last,
        }


def ensure_fifo(path: Path) -> None:
    """Create the FIFO (mode 0600) when missing; refuse a path that is anything else."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        with contextlib.suppress(FileExistsError):  # keepalived made it meanwhile
            os.mkfifo(path, 0o600)
        info = path.lstat()
    if not stat.S_ISFIFO(info.st_mode):
        raise OSError(f"[ha] keepalived_fifo {path} exists and is not a FIFO")
    if info.st_mode & 0o002:
        # Anyone could write a word that promotes or fences this box: tighten it (ours) or
        # refuse it.
        if info.st_uid != os.geteuid():
            raise OSError(f"[ha] keepalived_fifo {path} is writable by anyone")
        os.chmod(path, 0o600)


class FifoReader:
    """Reads keepalived's FIFO in the running loop and hands each group word to ``act``."""

    def __init__(self, path: str | Path, act: Callable[[str], Any], group: str = "") -> None:
        self.path = Path(path)
        self.act = act
        self.lines = NotifyLines(group)
        self.reopened = 0
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task[None] | None = None
        self._inode: tuple[int, int] | None = None

    def start(self) -> None:
        """Open the FIFO, act on keepalived's current word (if any), then follow it."""
        self._loop = asyncio.get_running_loop()
        self._open(settle=True)
        self._watch = self._loop.create_task(self._watch_path())

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._close()

    def facts(self) -> dict[str, Any]:
        return {"path": str(self.path), "reopened": self.reopened, **self.lines.facts()}

    def _open(self, *, settle: bool) -> None:
        ensure_fifo(self.path)
        # Read-write: the pipe stays open while keepalived restarts (no end-of-file to spin
        # on), and what keepalived writes while the gateway is away waits for it. A FIFO
        # keepalived made itself (root's, 0644) only opens for reading: then an end-of-file
        # (keepalived gone) closes it and the watch opens it again.
        flags = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self.path, os.O_RDWR | flags)
        except PermissionError:
            fd = os.open(self.path, os.O_RDONLY | flags)
        self._fd = fd
        held = os.fstat(fd)
        inode = (held.st_dev, held.st_ino)
        if inode != self._inode:
            if self._inode is not None:
                self.reopened += 1  # another FIFO than before: keepalived made it again
            log.info("HA: reading keepalived's notify FIFO %s", self.path)
        self._inode = inode
        waiting, _ = self._read_all()
        words = self.lines.settle(waiting) if settle else self.lines.feed(waiting)
        assert self._loop is not None
        self._loop.add_reader(fd, self._readable)
        for word in words:
            self._tell(word)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(fd)
        os.close(fd)

    def _read_all(self) -> tuple[bytes, bool]:
        """What the pipe holds, and whether it reached end-of-file (no writer left)."""
        data = b""
        while self._fd is not None:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return data, False
            if not chunk:
                return data, True
            data += chunk
        return data, False

    def _readable(self) -> None:
        data, ended = self._read_all()
        for word in self.lines.feed(data):
            self._tell(word)
        if ended:  # opened read-only and keepalived went away: the watch opens it again
            self._close()

    def _tell(self, word: str) -> None:
        try:
            self.act(word)
        except Exception:  # one word that failed must not stop the next ones
            log.exception("HA: keepalived's %r from the FIFO failed", word)

    def _same_fifo(self) -> bool:
        if self._fd is None:
            return False
        try:
            held, named = os.fstat(self._fd), self.path.stat()
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)

    async def _watch_path(self) -> None:
        """keepalived removes a FIFO it made when it stops and makes a new one at start."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if self._same_fifo():
                continue
            # What the old pipe still holds came before the new one's lines: read it first.
            self._readable()
            self._close()
            try:
                self._open(settle=False)
            except OSError as exc:
                log.error("HA: keepalived's notify FIFO %s: %s", self.path, exc)


def follow_fifo(gateway: Any) -> FifoReader | None:
    """Start reading ``[ha] keepalived_fifo`` for an HA gateway (None when not configured).

    Each word goes to ``gateway.notify`` as ``gateway ha notify`` would send it, and is kept in
    the state folder's ``ha-vrrp-state`` for ``gateway ha check`` as that command does."""
    ha = gateway.config.ha
    if not ha.keepalived_fifo:
        return None
    record = Path(gateway.config.state.directory) / "ha-vrrp-state"

    def act(word: str) -> None:
        with contextlib.suppress(OSError):
            record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # a standby saved none
            temporary = record.with_suffix(".tmp")
            temporary.write_text(f"{word} {time.time():.3f}\n")
            os.replace(temporary, record)
        gateway.notify(word)

    reader = FifoReader(ha.keepalived_fifo, act, ha.keepalived_group)
    reader.start()
    return reader
