"""Build and drive the compiled RTP/SRTP load generator (``gateway/bench/loadgen.c``).

Python is too slow to pace ~100k packets/s each way with µs accuracy, so the generator is a
small C program compiled on first use with the machine's gcc. Its source ships inside the
package, so an installed gateway can build it; the executable is cached by source hash in a
folder only this user can write (:mod:`gateway.bench.build`), never at a fixed /tmp path. It is
linked against pylibsrtp's own extension module, whose libsrtp (over OpenSSL) is the gateway's:
no -dev package is needed and the crypto cost is the same as in the gateway.

:func:`run_load` writes the generator's config, runs it pinned to the load core, samples the
CPU time and resident memory of the processes under test over exactly the measured window (the
generator prints ``measure start`` / ``measure stop``), and returns the parsed result.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bench.build import build_dir, is_private_executable, private_dir

__all__ = [
    "CORE_KEEPER_LABEL",
    "CORE_KEEPER_THREAD",
    "MEDIA_PORTS",
    "PHONE_MEDIA_PORT",
    "PROVIDER_MEDIA_PORT",
    "CallLeg",
    "LoadResult",
    "ProcSample",
    "build_loadgen",
    "find_source",
    "proc_sample",
    "run_load",
]

PHONE_ADDRESS = "127.0.0.110"
PROVIDER_ADDRESS = "127.0.0.130"
#: The generator's two media ports. Below Linux's ephemeral range (32768-60999): the bench
#: phones' SIP sockets and the provider's TLS connections share these addresses with
#: OS-picked ports, and one of those landing on the generator's port failed a run now and then.
PHONE_MEDIA_PORT = 31000
PROVIDER_MEDIA_PORT = 31002
MEDIA_PORTS = (PHONE_MEDIA_PORT, PROVIDER_MEDIA_PORT)
#: Nice value of the generator and of the media path under test. Not SCHED_FIFO: a real-time
#: task starves ksoftirqd on its core, and loopback delivery then stalls for tens of ms.
HIGH_PRIORITY_NICE = -20
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class CallLeg:
    """What the generator needs for one call: where each end sends, and the SRTP keys.

    The phone sends plain RTP to ``lan``; the provider sends SRTP (``provider_tx`` key) to
    ``wan`` and authenticates what reaches it with ``provider_rx``.
    """

    lan: tuple[str, int]
    wan: tuple[str, int]
    provider_tx: bytes
    provider_rx: bytes


#: Thread name of the media worker's core keeper (``keeper_main`` in ``_fastpath.c``).
CORE_KEEPER_THREAD = "core-keeper"
#: Suffix of the ``cpu_pct`` label under which a process's core keeper is reported.
CORE_KEEPER_LABEL = " (core keeper)"


@dataclass
class ProcSample:
    """CPU seconds (user+system) and resident memory of one process.

    ``cpu`` leaves out the core-keeper thread, which runs at SCHED_IDLE and only takes time
    the core would otherwise idle: counted as work, it would show a full core at any load.
    Its time is ``keeper_cpu``.
    """

    cpu: float
    rss: int
    keeper_cpu: float = 0.0


@dataclass
class LoadResult:
    """The generator's JSON plus the processes' CPU share and memory over the window."""

    raw: dict[str, Any]
    cpu_pct: dict[str, float] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)


def proc_sample(pid: int) -> ProcSample | None:
    """CPU time and RSS of ``pid`` from /proc (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    keeper = 0.0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == CORE_KEEPER_THREAD:
                    keeper += _cpu_seconds(Path(f"/proc/{pid}/task/{tid}/stat").read_text())
    return ProcSample(_cpu_seconds(stat) - keeper, int(statm[1]) * _PAGE, keeper)


def _cpu_seconds(stat: str) -> float:
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    rest = stat.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def raise_autogroup(pid: int) -> None:
    """Give ``pid``'s scheduler autogroup (its session) nice -20, where autogroups are on.

    With autogroups, nice only ranks tasks within a session; between sessions the CPU is
    split evenly, so on a shared host a busy neighbour session would halve the media path's
    core whatever its own nice value.
    """
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(HIGH_PRIORITY_NICE))


def _isolate(cpu: int | None, realtime: bool) -> None:
    """In the child before exec: pin to ``cpu`` and, when allowed, take a real-time priority."""
    if cpu is not None and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})
    if realtime:
        # Not root: normal priority, and the slip figures will show what that costs.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, HIGH_PRIORITY_NICE)
        raise_autogroup(os.getpid())


def find_source() -> Path:
    """The generator's C source, shipped next to this module as package data."""
    path = Path(__file__).with_name("loadgen.c")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the gateway package is installed incomplete")
    return path


def build_loadgen(cache: Path | None = None) -> Path:
    """Compile the generator (once per source version); returns the executable's path.

    ``cache`` is a folder to build in instead of the per-user cache; it gets the same checks
    (created 0700, must belong to this user). Raises RuntimeError with gcc's message when the
    generator cannot be built.
    """
    source = find_source()
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("no C compiler (gcc) on this host: install gcc to run the benchmark")
    spec = importlib.util.find_spec("pylibsrtp._binding")
    if spec is None or spec.origin is None:
        raise RuntimeError("pylibsrtp is not installed")
    binding = Path(spec.origin)
    text = source.read_bytes()
    # The binding's path is part of the key: the executable links to that very file.
    digest = hashlib.sha256(text + str(binding).encode()).hexdigest()
    folder = build_dir() if cache is None else cache
    if cache is not None and not private_dir(cache):
        raise RuntimeError(f"{cache}: not a private folder of this user (mode 0700) to build in")
    exe = folder / f"loadgen-{digest}"
    if is_private_executable(exe):
        return exe
    include = _srtp_headers(folder)
    partial = folder / f".{exe.name}.{os.getpid()}.tmp"
    command = [
        gcc,
        "-O2",
        "-DPYLIBSRTP_STUBS",
        "-rdynamic",
        *(["-I", str(include)] if include else []),
        "-o",
        str(partial),
        str(source),
        str(binding),
        f"-Wl,-rpath,{binding.parent}",
        "-lm",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"building the load generator failed:\n{done.stderr.strip()}")
    # Replaces whatever unusable file had the name (another owner's, or writable by others).
    os.replace(partial, exe)
    return exe


def _srtp_headers(folder: Path) -> Path | None:
    """None when libsrtp2's headers are installed (libsrtp2-dev); otherwise a stand-in.

    The generator needs only a handful of declarations, all stable across libsrtp 2.x.
    """
    if Path("/usr/include/srtp2/srtp.h").exists():
        return None
    include = folder / "include"
    (include / "srtp2").mkdir(parents=True, exist_ok=True)
    (include / "srtp2" / "srtp.h").write_text(_MINIMAL_SRTP_H)
    return include


_MINIMAL_SRTP_H = """\
/* Minimal libsrtp 2.x declarations for loadgen.c (layout as in srtp2/srtp.h). */
#include <stdint.h>
typedef enum { srtp_err_status_ok = 0 } srtp_err_status_t;
typedef enum { ssrc_undefined = 0, ssrc_specific = 1, ssrc_any_inbound = 2,
               ssrc_any_outbound = 3 } srtp_ssrc_type_t;
typedef struct { srtp_ssrc_type_t type; unsigned int value; } srtp_ssrc_t;
typedef struct { uint32_t cipher_type; int cipher_key_len; uint32_t auth_type; int auth_key_len;
                 int auth_tag_len; int sec_serv; } srtp_crypto_policy_t;
typedef struct srtp_policy_t {
  srtp_ssrc_t ssrc; srtp_crypto_policy_t rtp; srtp_crypto_policy_t rtcp; unsigned char *key;
  void **keys; unsigned long num_master_keys; void *deprecated_ekt; unsigned long window_size;
  int allow_repeat_tx; int *enc_xtn_hdr; int enc_xtn_hdr_count; struct srtp_policy_t *next;
} srtp_policy_t;
typedef struct srtp_ctx_t_ *srtp_t;
typedef int srtp_profile_t;
srtp_err_status_t srtp_init(void);
srtp_err_status_t srtp_create(srtp_t *session, const srtp_policy_t *policy);
srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr);
srtp_err_status_t srtp_unprotect(srtp_t ctx, void *srtp_hdr, int *len_ptr);
srtp_err_status_t srtp_crypto_policy_set_from_profile_for_rtp(srtp_crypto_policy_t *p,
                                                              srtp_profile_t profile);
srtp_err_status_t srtp_crypto_policy_set_from_profile_for_rtcp(srtp_crypto_policy_t *p,
                                                               srtp_profile_t profile);
"""


def run_load(
    exe: Path,
    legs: list[CallLeg],
    *,
    phone: tuple[str, int],
    provider: tuple[str, int],
    direct: bool = False,
    via_calls: bool = False,
    profile: int = 1,
    duration: float = 5.0,
    warmup: float = 1.0,
    drain: float = 0.3,
    ptime_ms: float = 20.0,
    load_cpu: int | None = None,
    watch: dict[str, int] | None = None,
    realtime: bool = True,
) -> LoadResult:
    """Run the generator over ``legs`` and return its figures.

    ``watch`` maps a label to a PID whose CPU share and RSS over the window are reported;
    ``load_cpu`` pins the generator to that core; ``realtime`` runs it at nice -20 (as root),
    so other programs on a shared host barely delay its schedule: its slip is reported anyway.
    """
    lines = [
        f"duration {duration}",
        f"warmup {warmup}",
        f"drain {drain}",
        f"ptime_us {round(ptime_ms * 1000)}",
        f"profile {profile}",
        f"direct {int(direct)}",
        f"via_calls {int(via_calls)}",
        f"phone {phone[0]} {phone[1]}",
        f"provider {provider[0]} {provider[1]}",
    ]
    for leg in legs:
        lines.append(
            f"call {leg.lan[0]} {leg.lan[1]} {leg.wan[0]} {leg.wan[1]}"
            f" {leg.provider_tx.hex()} {leg.provider_rx.hex()}"
        )
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as handle:
        handle.write("\n".join(lines) + "\n")
        config = handle.name
    watch = watch or {}
    try:
        process = subprocess.Popen(
            [str(exe), config],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: _isolate(load_cpu, realtime),
        )
        assert process.stdout is not None and process.stderr is not None
        before: dict[str, ProcSample] = {}
        after: dict[str, ProcSample] = {}
        started = stopped = 0.0
        result: dict[str, Any] | None = None
        for line in process.stdout:
            if line.startswith("measure start"):
                started = time.monotonic()
                before = {k: s for k, pid in watch.items() if (s := proc_sample(pid))}
            elif line.startswith("measure stop"):
                stopped = time.monotonic()
                after = {k: s for k, pid in watch.items() if (s := proc_sample(pid))}
            elif line.startswith("{"):
                result = json.loads(line)
        errors = process.stderr.read()
        code = process.wait()
        if code != 0 or result is None:
            raise RuntimeError(f"load generator failed (exit {code}): {errors.strip()}")
    finally:
        os.unlink(config)
    elapsed = max(stopped - started, 1e-6)
    out = LoadResult(result)
    for label, sample in after.items():
        first = before.get(label)
        if first is not None:
            out.cpu_pct[label] = 100.0 * (sample.cpu - first.cpu) / elapsed
            if sample.keeper_cpu:
                keeper = sample.keeper_cpu - first.keeper_cpu
                out.cpu_pct[label + CORE_KEEPER_LABEL] = 100.0 * keeper / elapsed
        out.rss_mib[label] = sample.rss / (1 << 20)
    return out
