"""The benchmark's CPU accounting: the media worker's core keeper (a SCHED_IDLE thread that
only takes time the core would idle) is reported apart from the worker's own work."""

from __future__ import annotations

import ctypes
import os
import threading
import time

from gateway.bench.loadgen import CORE_KEEPER_THREAD, proc_sample

PR_SET_NAME = 15  # prctl(2)


def test_proc_sample_counts_a_core_keeper_thread_apart() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    burnt = threading.Event()
    release = threading.Event()

    def keeper() -> None:
        libc.prctl(PR_SET_NAME, CORE_KEEPER_THREAD.encode(), 0, 0, 0)
        start = time.thread_time()
        while time.thread_time() - start < 0.3:  # CPU time of this thread, not wall time
            pass
        burnt.set()
        release.wait()  # a thread's /proc entry (and its CPU time) goes when it ends

    before = proc_sample(os.getpid())
    assert before is not None and before.keeper_cpu == 0.0
    thread = threading.Thread(target=keeper)
    thread.start()
    try:
        assert burnt.wait(30)
        after = proc_sample(os.getpid())
    finally:
        release.set()
        thread.join()
    assert after is not None
    assert after.keeper_cpu >= 0.25
    # The process's own figure leaves the keeper's time out.
    assert after.cpu - before.cpu < after.keeper_cpu
