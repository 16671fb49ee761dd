"""The fuzzing engine every target shares: targets, crashes, mutations and the built-in loop.

A target is a module ``tests.fuzz.target_<name>`` with:

- ``seeds() -> list[bytes]``: valid (and a few known-bad) inputs to start from;
- ``check(data: bytes) -> None``: runs one input; returns when the code under test behaved
  (parsed, or raised one of its declared errors), raises anything else: an unexpected
  exception escaping the code, or :class:`Violation` when an invariant is broken;
- ``FRAMED``: True when an input is a sequence of operations (:func:`frame_ops`), so the
  mutator may also drop, repeat, swap and splice whole operations;
- ``TOKENS``: words worth inserting (SIP methods, header names, SDP attributes ...).

Two engines run targets. ``atheris`` (libFuzzer with coverage of the gateway's Python bytecode,
tests/fuzz/_atheris_child.py) when the package is installed; and the built-in engine here: a
mutation fuzzer that keeps an input in its corpus when it reaches a line of gateway/ never
reached before (line coverage from ``sys.settrace``, only for frames of gateway/ code), with a
fixed seed so a run can be repeated. CI's short slices use the built-in engine.

A crashing input is saved as ``crashes/<target>/crash-<sha256 prefix>`` with the traceback
beside it (``.txt``); the same failure (exception type and the innermost gateway/ line) is saved
three times at most, and counted every time.
"""

from __future__ import annotations

import hashlib
import importlib
import random
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType, ModuleType
from typing import Any

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent.parent
GATEWAY_DIR = str(ROOT / "gateway")
CRASH_DIR = FUZZ_DIR / "crashes"
#: The targets, in the order the slices and docs/robustness.md list them.
TARGETS = ("sip", "sdp", "b2bua", "relay", "lanes")
#: The same failure saved at most this many times per campaign.
KEEP_PER_SIGNATURE = 3


class Violation(AssertionError):
    """An invariant of the code under test does not hold for this input."""


class Hang(Exception):
    """One input ran longer than the campaign's per-input timeout."""


def load_target(name: str) -> ModuleType:
    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}: one of {', '.join(TARGETS)}")
    return importlib.import_module(f"tests.fuzz.target_{name}")


# -- operation framing ----------------------------------------------------------------------


def frame_ops(ops: list[tuple[int, bytes]]) -> bytes:
    """A sequence of (kind, payload) operations as one input: kind byte, 2-byte length, data."""
    out = bytearray()
    for kind, payload in ops:
        payload = payload[:0xFFFF]
        out += struct.pack("!BH", kind & 0xFF, len(payload)) + payload
    return bytes(out)


def parse_ops(data: bytes) -> list[tuple[int, bytes]]:
    """The inverse of :func:`frame_ops`; never fails: a cut length takes what is left."""
    ops: list[tuple[int, bytes]] = []
    offset = 0
    while offset + 3 <= len(data):
        kind, length = struct.unpack_from("!BH", data, offset)
        offset += 3
        ops.append((kind, data[offset : offset + length]))
        offset += length
    return ops


# -- mutations ------------------------------------------------------------------------------

_INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b"=",
    b"%",
    b"0",
    b"-1",
    b"4294967296",
    b"99999999999999999999",
    b"\r\n\r\n",
    b"\r\n ",
]


class Mutator:
    """Byte-level mutations, and operation-level ones for framed targets."""

    def __init__(self, rng: random.Random, tokens: list[bytes], framed: bool) -> None:
        self.rng = rng
        self.tokens = tokens + _INTERESTING
        self.framed = framed

    def mutate(self, data: bytes, other: bytes) -> bytes:
        rng = self.rng
        if self.framed and rng.random() < 0.5:
            return self._mutate_ops(data, other)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            data = self._mutate_bytes(data, other)
        return data

    def _mutate_ops(self, data: bytes, other: bytes) -> bytes:
        rng = self.rng
        ops = parse_ops(data)
        others = parse_ops(other) or [(0, b"")]
        choice = rng.randrange(6)
        if not ops or choice == 0:
            ops.insert(rng.randint(0, len(ops)), rng.choice(others))
        elif choice == 1 and len(ops) > 1:
            del ops[rng.randrange(len(ops))]
        elif choice == 2:
            index = rng.randrange(len(ops))
            ops.insert(index, ops[index])
        elif choice == 3 and len(ops) > 1:
            i, j = rng.randrange(len(ops)), rng.randrange(len(ops))
            ops[i], ops[j] = ops[j], ops[i]
        elif choice == 4:
            index = rng.randrange(len(ops))
            kind, payload = ops[index]
            ops[index] = (kind, self._mutate_bytes(payload, rng.choice(others)[1]))
        else:
            index = rng.randrange(len(ops))
            kind, payload = ops[index]
            ops[index] = (rng.randrange(256) if rng.random() < 0.1 else kind, payload)
        return frame_ops(ops)

    def _mutate_bytes(self, data: bytes, other: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        n = len(buf)
        choice = rng.randrange(10)
        if n == 0 or choice == 0:  # insert a token or interesting bytes
            at = rng.randint(0, n)
            buf[at:at] = rng.choice(self.tokens)
        elif choice == 1:  # flip a bit
            at = rng.randrange(n)
            buf[at] ^= 1 << rng.randrange(8)
        elif choice == 2:  # set a byte
            buf[rng.randrange(n)] = rng.randrange(256)
        elif choice == 3:  # delete a range
            at = rng.randrange(n)
            del buf[at : at + rng.choice((1, 1, 2, 4, 16, 64))]
        elif choice == 4:  # duplicate a range
            at = rng.randrange(n)
            size = rng.choice((1, 4, 16, 64, 256))
            buf[at:at] = buf[at : at + size]
        elif choice == 5:  # truncate
            del buf[rng.randrange(n) :]
        elif choice == 6 and other:  # splice from another input
            at = rng.randrange(len(other))
            piece = other[at : at + rng.choice((4, 16, 64, 256))]
            pos = rng.randint(0, n)
            buf[pos : pos + (len(piece) if rng.random() < 0.5 else 0)] = piece
        elif choice == 7:  # replace with a token
            at = rng.randrange(n)
            token = rng.choice(self.tokens)
            buf[at : at + len(token)] = token
        elif choice == 8:  # arithmetic on a byte (lengths, counters, sequence numbers)
            at = rng.randrange(n)
            buf[at] = (buf[at] + rng.choice((-2, -1, 1, 2, 16, 128))) & 0xFF
        else:  # random bytes
            at = rng.randint(0, n)
            buf[at:at] = rng.randbytes(rng.choice((1, 2, 4, 8)))
        return bytes(buf[:65535])


# -- coverage -------------------------------------------------------------------------------


class LineCoverage:
    """Lines of gateway/ reached, through ``sys.settrace`` (other frames are not traced)."""

    def __init__(self) -> None:
        self.lines: set[tuple[CodeType, int]] = set()
        self._wanted: dict[CodeType, bool] = {}
        self._new = 0

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        wanted = self._wanted.get(code)
        if wanted is None:
            wanted = self._wanted[code] = code.co_filename.startswith(GATEWAY_DIR)
        return self._local if wanted else None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            key = (frame.f_code, frame.f_lineno)
            if key not in self.lines:
                self.lines.add(key)
                self._new += 1
        return self._local

    def run(self, function: Callable[[bytes], None], data: bytes) -> int:
        """Run ``function(data)`` traced; the number of lines never reached before."""
        self._new = 0
        sys.settrace(self._global)
        try:
            function(data)
        finally:
            sys.settrace(None)
        return self._new


# -- crashes --------------------------------------------------------------------------------


def signature(exc: BaseException) -> str:
    """Exception type and the innermost line of the code under test (or the target) it
    passed: the same bug found twice has the same signature."""
    where = "?"
    for frame, line in traceback.walk_tb(exc.__traceback__):
        name = frame.f_code.co_filename
        if name.startswith(GATEWAY_DIR) or name.startswith(str(FUZZ_DIR)):
            where = f"{Path(name).name}:{line}"
    what = type(exc).__name__
    if isinstance(exc, Violation):
        # One Violation line raises several kinds: the words before the first colon tell.
        what += f" ({str(exc).split(':')[0][:60]})"
    return f"{what} at {where}"


@dataclass
class CrashLog:
    """Saves crashing inputs under crashes/<target>/ and counts them by signature."""

    target: str
    directory: Path
    found: int = 0
    by_signature: dict[str, int] = field(default_factory=dict)
    saved: list[Path] = field(default_factory=list)

    def record(self, data: bytes, exc: BaseException) -> None:
        self.found += 1
        sig = signature(exc)
        seen = self.by_signature.get(sig, 0)
        self.by_signature[sig] = seen + 1
        if seen >= KEEP_PER_SIGNATURE:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"crash-{hashlib.sha256(data).hexdigest()[:16]}"
        path.write_bytes(data)
        text = "".join(traceback.format_exception(exc))
        path.with_suffix(".txt").write_text(f"{sig}\n\n{text}")
        self.saved.append(path)


# -- the built-in loop ----------------------------------------------------------------------


@dataclass
class Result:
    target: str
    engine: str
    inputs: int
    seconds: float
    crashes: int
    signatures: dict[str, int]
    saved: list[str]
    corpus: int
    coverage: int | None = None
    hangs: int = 0
    #: Stopped by SIGINT or SIGUSR1 before ``inputs`` ran: the figures are those of the inputs that did.
    interrupted: bool = False

    @property
    def per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "engine": self.engine,
            "inputs": self.inputs,
            "seconds": round(self.seconds, 1),
            "inputs_per_second": round(self.per_second),
            "crashes": self.crashes,
            "signatures": self.signatures,
            "saved": self.saved,
            "corpus": self.corpus,
            "coverage_lines": self.coverage,
            "hangs": self.hangs,
            **({"interrupted": True} if self.interrupted else {}),
        }


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang("input ran past the per-input timeout")


def read_corpus(directory: Path | None) -> list[bytes]:
    if directory is None or not directory.is_dir():
        return []
    return [p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()]


def run_builtin(
    name: str,
    inputs: int,
    *,
    seed: int = 1,
    corpus_dir: Path | None = None,
    crash_dir: Path | None = None,
    coverage: bool = True,
    timeout: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Run ``inputs`` inputs of target ``name``: its seeds (and ``corpus_dir``) first, then
    mutations; inputs that reach new lines join the corpus (and ``corpus_dir``)."""
    target = load_target(name)
    if hasattr(target, "setup"):
        target.setup()
    rng = random.Random(seed)
    mutator = Mutator(rng, list(getattr(target, "TOKENS", [])), getattr(target, "FRAMED", False))
    crashes = CrashLog(name, crash_dir or CRASH_DIR / name)
    cover = LineCoverage() if coverage else None
    seeds = [*target.seeds(), *read_corpus(corpus_dir)]
    corpus: list[bytes] = []
    hangs = 0
    check = target.check
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    started = time.perf_counter()
    last_report = started
    done = 0
    interrupted = False
    # SIGUSR1 ends a campaign early with its figures (SIGINT may be ignored: the lanes target
    # runs a media worker, which ignores it as a worker must).
    stop_asked: list[int] = []
    old_usr1 = signal.signal(signal.SIGUSR1, lambda signum, frame: stop_asked.append(signum))
    try:
        while done < inputs:
            if stop_asked:
                interrupted = True
                break
            if done < len(seeds):
                data = seeds[done]
            else:
                pool = corpus or seeds
                data = mutator.mutate(rng.choice(pool), rng.choice(pool))
            done += 1
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                if cover is not None:
                    new = cover.run(check, data)
                else:
                    check(data)
                    new = 0
            except Hang as exc:
                hangs += 1
                crashes.record(data, exc)
                continue
            except Exception as exc:
                crashes.record(data, exc)
                continue
            except KeyboardInterrupt:
                # A campaign cut short (to end in time) still reports what it ran; the
                # input it was in is not counted.
                done -= 1
                interrupted = True
                break
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if new or done <= len(seeds):
                corpus.append(data)
                if new and corpus_dir is not None:
                    corpus_dir.mkdir(parents=True, exist_ok=True)
                    digest = hashlib.sha256(data).hexdigest()[:16]
                    (corpus_dir / digest).write_bytes(data)
            now = time.perf_counter()
            if progress is not None and now - last_report >= 10:
                last_report = now
                lines = len(cover.lines) if cover is not None else 0
                progress(
                    f"#{done} {done / (now - started):.0f}/s corpus {len(corpus)}"
                    f" lines {lines} crashes {crashes.found}"
                )
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        signal.signal(signal.SIGUSR1, old_usr1)
        if hasattr(target, "teardown"):
            target.teardown()
    return Result(
        target=name,
        engine="builtin-coverage" if cover is not None else "builtin",
        inputs=done,
        seconds=time.perf_counter() - started,
        crashes=crashes.found,
        signatures=crashes.by_signature,
        saved=[
            str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in crashes.saved
        ],
        corpus=len(corpus),
        coverage=len(cover.lines) if cover is not None else None,
        hangs=hangs,
        interrupted=interrupted,
    )
