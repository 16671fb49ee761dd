"""Memory hunt for the soak, the allocator's side: where a gateway process's resident memory
is (glibc's heap in use against held, Python's obmalloc arenas, the call caps' hourly starts)
and whether ``malloc_trim`` gives it back.

Loaded by Python at start-up (``site``) from ``PYTHONPATH`` in the gateway's processes when
``PYTHON_SOAK_MALLOC_FILE`` names a file (``PYTHON`` so the media worker's environment
allowlist passes it): every ``PYTHON_SOAK_MALLOC_EVERY`` seconds (60) each process appends one
JSON line to that file with its resident size (``/proc/self/status``), ``mallinfo2()`` (summed
over glibc's arenas: ``uordblks`` allocated, ``arena`` + ``hblkhd`` obtained from the system),
``sys.getallocatedblocks()``, the summary of ``sys._debugmallocstats()`` (obmalloc arenas and
the bytes in their used and free blocks) and, in the signalling process, the number of start
times and finished-call records the call caps hold (``gateway.policy.caps.CallCaps``, found with
``gc``). Once, ``PYTHON_SOAK_MALLOC_TRIM_AT`` seconds after start, it reads everything, calls
``malloc_trim(0)`` and reads the resident size again.

A bench tool, never part of a deployed gateway: ``gc.get_objects()`` walks the heap with the
GIL held, a pause of a fraction of a second each minute. Not used by ``bench.soak`` directly:
put this folder on the soak's ``PYTHONPATH`` (the soak keeps it for the gateway it starts).
"""

import contextlib
import ctypes
import gc
import json
import os
import sys
import tempfile
import threading
import time

_FILE = os.environ.get("PYTHON_SOAK_MALLOC_FILE")
_ARGV = " ".join(getattr(sys, "orig_argv", []))
_FIELDS = (
    "arena", "ordblks", "smblks", "hblks", "hblkhd",
    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
)  # fmt: skip


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def _rss_kib() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "VmData"):
                out[name] = int(value.split()[0])
    return out


def _obmalloc() -> dict[str, int]:
    """The summary lines of ``sys._debugmallocstats()`` (it writes to C's stderr, fd 2; the
    GIL is held throughout, so no Python logging lands in the borrowed file meanwhile)."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    out = {}
    for line in text.splitlines():
        if line.startswith("#") and "=" in line:
            name, _, value = line.rpartition("=")
            with contextlib.suppress(ValueError):
                out[name.strip("# ").strip()] = int(value.strip().replace(",", ""))
    return out


def _caps() -> dict[str, int] | None:
    for obj in gc.get_objects():
        if type(obj).__name__ == "CallCaps" and type(obj).__module__ == "gateway.policy.caps":
            usages = [obj._site_usage, *obj._phones.values()]
            starts = sum(len(u.starts) for u in usages)
            finished = sum(len(u.finished) for u in usages)
            return {
                "phones": len(obj._phones),
                "starts": starts,
                "finished_records": finished,
                # a float (24 bytes) and its deque slot (8) per start or record's tuple
                "bytes_estimate": starts * 32 + finished * (64 + 3 * 24 + 8),
            }
    return None


def _reading(libc: ctypes.CDLL, started: float, event: str) -> dict[str, object]:
    info = libc.mallinfo2()
    return {
        "pid": os.getpid(),
        "process": "signalling" if " run " in _ARGV else "worker",
        "event": event,
        "t": round(time.monotonic() - started, 1),
        "wall": time.time(),
        "rss_kib": _rss_kib(),
        "mallinfo2": {name: getattr(info, name) for name in _FIELDS},
        "allocated_blocks": sys.getallocatedblocks(),
        "obmalloc": _obmalloc(),
        "caps": _caps() if " run " in _ARGV else None,
    }


def _write(record: dict[str, object]) -> None:
    assert _FILE is not None
    with open(_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def _watch(every: float, trim_at: float | None) -> None:
    libc = _libc()
    started = time.monotonic()
    while True:
        wait = every
        if trim_at is not None:
            wait = min(wait, max(0.0, started + trim_at - time.monotonic()))
        time.sleep(wait)
        if trim_at is not None and time.monotonic() >= started + trim_at:
            trim_at = None
            _write(_reading(libc, started, "before_trim"))
            released = libc.malloc_trim(0)
            record = _reading(libc, started, "after_trim")
            record["malloc_trim_returned"] = released
            _write(record)
        else:
            _write(_reading(libc, started, "sample"))


if _FILE and " -m gateway" in _ARGV:
    _trim = os.environ.get("PYTHON_SOAK_MALLOC_TRIM_AT")
    threading.Thread(
        target=_watch,
        args=(
            float(os.environ.get("PYTHON_SOAK_MALLOC_EVERY", "60")),
            float(_trim) if _trim else None,
        ),
        daemon=True,
    ).start()


def _keep_no_starts() -> None:
    """``PYTHON_SOAK_MALLOC_NO_STARTS=1``: the call caps keep no hourly start times, as a site
    without an hourly cap could (the soak's caps are all off, so no check reads them): the
    control run that takes that one structure out of the growth."""
    from gateway.policy import caps

    started = caps.CallCaps.started

    def started_without_starts(self, key, phone, *, international, emergency, now):  # type: ignore[no-untyped-def]
        started(self, key, phone, international=international, emergency=emergency, now=now)
        usage = self._phones.get(phone)
        if usage is not None:
            usage.starts.clear()
        self._site_usage.starts.clear()

    caps.CallCaps.started = started_without_starts  # type: ignore[method-assign]


if _FILE and " run " in _ARGV and os.environ.get("PYTHON_SOAK_MALLOC_NO_STARTS") == "1":
    _keep_no_starts()
