"""Memory hunt for the soak (``python -m bench.soak --tracemalloc DIR``): traces the gateway's
allocations and dumps a tracemalloc snapshot of each of its processes every few seconds.

Loaded by Python at start-up (``site``) from ``PYTHONPATH`` in the gateway's processes only
(the signalling process and its media workers; not the soak's driver). The variables start
with ``PYTHON`` so that the media worker's environment allowlist passes them. Never part of a
deployed gateway: tracing slows every allocation, and a snapshot pauses the process for a
moment (long enough, at 12 frames, for the kernel to drop datagrams), so the figures of a
traced run are not the soak's figures. Compare two snapshots with ``python -m
bench.tracemalloc_diff A B``.
"""

import os
import sys
import threading
import time

_DIR = os.environ.get("PYTHON_SOAK_TRACEMALLOC_DIR")
_ARGV = " ".join(getattr(sys, "orig_argv", []))


def _dump_every(seconds: float, folder: str) -> None:
    import tracemalloc

    n = 0
    while True:
        time.sleep(seconds)
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        snapshot.dump(os.path.join(folder, f"{os.getpid()}-{n:03d}.snap"))
        n += 1


if _DIR and " -m gateway" in _ARGV:
    import tracemalloc

    tracemalloc.start(int(os.environ.get("PYTHON_SOAK_TRACEMALLOC_FRAMES", "1")))
    every = float(os.environ.get("PYTHON_SOAK_TRACEMALLOC_EVERY", "150"))
    threading.Thread(target=_dump_every, args=(every, _DIR), daemon=True).start()
