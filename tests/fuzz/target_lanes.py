"""Fuzz target 5: the C lanes of the media worker (gateway/media/_fastpath.c) under
AddressSanitizer and UBSan (RFC 3550, RFC 3711 packet paths in C).

The extension is built with ``-fsanitize=address,undefined`` by tests/fuzz/build_asan.sh into
build/fuzz-asan/ and loaded in place of the normal build; ``python -m tests.fuzz lanes``
starts itself again with GCC's libasan preloaded (the Python here is not ASan-built). A
memory error or undefined behaviour in C aborts the process with the sanitizer's report: the
run fails. One real worker (``_Worker`` with the C engine) runs in this process with one
stream on 127.0.7.20/21 and peer sockets on 127.0.7.10 (phone), .30 (provider), .66 (an
intruder), as tests/integration/test_media_rules_agree.py drives it: each datagram is sent
over loopback and the worker runs one round of its C loop. An input picks the suite, RTCP mux
and the mode, then datagrams (mutated, or protected with the provider's key so the lanes
latch and take over) to the four ports. Python-side invariants: no exception, and nothing the
phone sent arrives at the provider unprotected while the stream has keys.
"""

from __future__ import annotations

import importlib.util
import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import pylibsrtp

from gateway.media.control import StreamSpec
from gateway.media.relay import LAN_RTCP, LAN_RTP, WAN_RTCP, WAN_RTP
from tests.fuzz.engine import ROOT, Violation, parse_ops
from tests.fuzz.target_relay import SUITES, _keying, _session
from tests.fuzz.target_relay import seeds as relay_seeds

FRAMED = True
ENGINE = "builtin"  # atheris' own ASan runtime is clang's; this build uses GCC's
TOKENS = [b"\x80\x00", b"\x80\xc8", b"\x80\xc9", b"\x90", b"\xa0", b"\xbe\xde"]
ASAN_DIR = ROOT / "build" / "fuzz-asan"
LAN_IP, WAN_IP = "127.0.7.20", "127.0.7.21"
PEERS = {"phone": "127.0.7.10", "provider": "127.0.7.30", "intruder": "127.0.7.66"}
SETUP, LAN_RAW, WAN_RAW, WAN_SRTP, WAN_SRTCP, TICK, UPDATE = range(7)

_worker = None
_peers: dict[str, socket.socket] = {}


def _asan_module() -> Path | None:
    found = sorted(ASAN_DIR.glob("_fastpath*.so"))
    return found[0] if found else None


def reexec_environment() -> dict[str, str] | None:
    """The environment to start again with (libasan preloaded), or None when already so."""
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        return None
    if _asan_module() is None:
        subprocess.run(["bash", str(ROOT / "tests/fuzz/build_asan.sh")], check=True)
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = dict(os.environ)
    env["LD_PRELOAD"] = libasan
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    return env


def setup() -> None:
    """Load the sanitizer build (when preloaded) and start the worker and peer sockets."""
    global _worker
    path = _asan_module()
    if path is not None and "libasan" in os.environ.get("LD_PRELOAD", ""):
        spec = importlib.util.spec_from_file_location("gateway.media._fastpath", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["gateway.media._fastpath"] = module
        import gateway.media as media_package

        media_package._fastpath = module  # type: ignore[attr-defined]
    from gateway.media import worker as worker_module

    if path is not None and "gateway.media._fastpath" in sys.modules:
        worker_module._fastpath = sys.modules["gateway.media._fastpath"]
    if worker_module._fastpath is None:
        raise RuntimeError("the C fast path is not built: bash tests/fuzz/build_asan.sh")
    control, _other = socket.socketpair()
    _worker = worker_module._Worker(
        control,
        lan_address=LAN_IP,
        wan_address=WAN_IP,
        inactivity_timeout=60.0,
        dscp=0,
        fast_path=True,
        clock=lambda: 0.0,
        ssrc_idle=0.5,
    )
    _worker._fuzz_keep = _other  # type: ignore[attr-defined]
    for name, ip in PEERS.items():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((ip, 0))
        sock.setblocking(False)
        _peers[name] = sock


def teardown() -> None:
    for sock in _peers.values():
        sock.close()
    _peers.clear()


def seeds() -> list[bytes]:
    return relay_seeds()


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def check(data: bytes) -> None:
    if _worker is None:
        setup()
    worker = _worker
    assert worker is not None
    ops = parse_ops(data)
    setup_bytes = (ops[0][1] if ops and ops[0][0] == SETUP else b"") + b"\x00\x00\x00"
    suite = SUITES[setup_bytes[0] % len(SUITES)]
    mode = setup_bytes[2] % 3
    tx = _keying(suite, 1) if mode == 0 else None
    rx = _keying(suite, 0xD2) if mode == 0 else None
    phone, provider = _peers["phone"].getsockname(), _peers["provider"].getsockname()
    error: str | None = "no port pair tried"
    # Ports from the process id, the next pairs when taken: campaigns and a CI slice may run
    # side by side on 127.0.7.20/21.
    base = 46000 + (os.getpid() % 200) * 8
    for attempt in range(64):
        lan_port = 46000 + (base - 46000 + 4 * attempt) % 3200
        spec = StreamSpec(
            lan_port=lan_port,
            wan_port=lan_port + 2,
            phone_addr=phone,
            provider_addr=provider,
            wan_rtcp_mux=bool(setup_bytes[1] & 1),
            wan_tx=tx,
            wan_rx=rx,
            wan_plaintext=mode == 1,
        )
        error = worker._open("fuzz", 0, spec, 0.0)
        if error is None or "cannot bind" not in error:
            break
    if error is not None:
        raise RuntimeError(error)
    stream = worker._calls["fuzz"].streams[0]
    sender = _session(rx, False) if rx else None
    sent_plain: set[bytes] = set()
    try:
        for kind, payload in ops[:64]:
            if kind in (SETUP, TICK, UPDATE) or not payload:
                continue
            who = ("phone", "provider", "intruder")[payload[0] % 3]
            body = payload[1:]
            if kind == LAN_RAW:
                port, who = (LAN_RTCP if payload[0] & 16 else LAN_RTP), who
                sent_plain.add(body)
            elif kind == WAN_RAW:
                port = WAN_RTCP if payload[0] & 16 else WAN_RTP
            else:
                port = WAN_RTP
                if sender is not None and 12 <= len(body) <= 1400:
                    body = bytes([0x80 | body[0] & 0x3F]) + body[1:]
                    try:
                        body = (
                            sender.protect_rtcp(body) if kind == WAN_SRTCP else sender.protect(body)
                        )
                    except (pylibsrtp.Error, ValueError):
                        continue
            target = stream.sockets[port].getsockname()
            if len(body) > 65000:
                continue
            _peers[who].sendto(body, target)
            if not select.select([stream.sockets[port]], [], [], 2.0)[0]:
                raise Violation("a datagram sent over loopback did not arrive")
            worker._fast_round(0, -1)
            if tx is not None:
                for out in _drain(_peers["provider"]):
                    if out in sent_plain:
                        raise Violation("plaintext from the phone reached the provider")
            else:
                _drain(_peers["provider"])
            _drain(_peers["phone"])
            _drain(_peers["intruder"])
    finally:
        worker._close_call("fuzz")
