"""Flood generators for ``bench/flood.py``, one kind per child process.

Usage (the bench starts these itself)::

    python -m bench.flood_senders sip --source 127.0.22.50 --target 127.0.22.120:5060 \\
        --rate 10000 --seconds 6

Each child prints ``ready`` once its sockets are set up, floods for ``--seconds`` and prints one
JSON line with what it sent and what came back. Kinds:

- ``sip``: a scanner's mix from one LAN source over UDP: OPTIONS probes, INVITEs and
  REGISTERs to a sweep of extensions (a fresh Call-ID, branch and CSeq each). Counts the
  answers and when the last one came: after that the gateway's flood defence (RFC 3261 §26.3.2.4
  leaves the policy to the implementation) has banned the source and answers nothing.
- ``tls``: TCP connect, a TLS ClientHello, wait for the server's first flight (so it has done
  its key exchange and signature), then abandon with a reset.
- ``slowloris``: ``--connections`` TCP connections from ten addresses (``--source`` and the
  nine after it) that each send a ClientHello one byte every ``--interval`` seconds; a
  connection the server closes is opened again ``--interval`` later.
- ``rtp``: RTP (RFC 3550 §5.1) from ``--source`` with a random SSRC and sequence number in
  every packet. With ``--spoof-port`` the packets are built on a raw socket with that source
  port (root only): the phone's own address and port, or the provider's.
- ``srtp``: as ``rtp`` but with the call's SSRC (``--ssrc``) and a 10-byte tag of random bytes
  (RFC 3711 §3.1): every packet is a full authentication check that fails.

Python keeps up with a few tens of thousands of packets a second here; the JSON says what rate
was reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import selectors
import socket
import ssl
import struct
import sys
import time
from typing import Any

#: Packets sent per pacing step at most (a late step catches up in bursts this size).
MAX_BURST = 256


def _pace(rate: float, seconds: float, send_one: Any, idle: Any = None) -> tuple[int, float]:
    """Call ``send_one()`` ``rate`` times a second for ``seconds``; returns (sent, elapsed)."""
    start = time.monotonic()
    sent = 0
    while True:
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= seconds:
            break
        due = min(int(elapsed * rate) - sent, MAX_BURST)
        for _ in range(due):
            send_one()
        sent += max(due, 0)
        if idle is not None:
            idle()
        if due < MAX_BURST:
            time.sleep(0.0005)
    return sent, time.monotonic() - start


# ----------------------------------------------------------------------------- SIP scanner


def _sip_messages(source: tuple[str, int], target: tuple[str, int]) -> list[bytes]:
    """Templates with ``%d`` slots (branch, Call-ID, tag, extension, CSeq)."""
    host, port = target
    via = f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bK-flood-%d;rport\r\n"
    sender = source[0]
    out = []
    for method in ("OPTIONS", "INVITE", "REGISTER"):
        uri = f"sip:{host}:{port}" if method == "REGISTER" else f"sip:%d@{host}:{port}"
        text = (
            f"{method} {uri} SIP/2.0\r\n{via}"
            f"To: <sip:%d@{host}>\r\n"
            f"From: <sip:scan@{sender}>;tag=f%d\r\n"
            f"Call-ID: flood-%d@{sender}\r\n"
            f"CSeq: %d {method}\r\n"
            "Max-Forwards: 70\r\n"
            "User-Agent: bench-flood/1\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        out.append(text.encode())
    return out


def flood_sip(args: argparse.Namespace) -> dict[str, Any]:
    target = _address(args.target)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((args.source, 0))
    sock.setblocking(False)
    templates = _sip_messages(sock.getsockname(), target)
    counter = 0
    replies = 0
    statuses: dict[str, int] = {}
    last_reply = -1.0
    start = time.monotonic()

    def send_one() -> None:
        nonlocal counter
        counter += 1
        template = templates[counter % len(templates)]
        # Four-digit extensions: none is an emergency number, which even a banned source may
        # call (the core lets those INVITEs through to the provider whatever else applies).
        ext = 6000 + counter % 900
        if template.startswith(b"REGISTER"):
            data = template % (counter, ext, counter, counter, counter)
        else:
            data = template % (ext, counter, ext, counter, counter, counter)
        with contextlib.suppress(BlockingIOError):
            sock.sendto(data, target)

    def drain() -> None:
        nonlocal replies, last_reply
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            replies += 1
            last_reply = time.monotonic() - start
            code = data[8:11].decode(errors="replace")
            statuses[code] = statuses.get(code, 0) + 1

    _ready(args.delay)
    start = time.monotonic()
    sent, elapsed = _pace(args.rate, args.seconds, send_one, drain)
    time.sleep(0.2)  # answers still in flight
    drain()
    return {
        "kind": "sip",
        "sent": sent,
        "seconds": round(elapsed, 3),
        "rate": round(sent / elapsed, 1),
        "answered": replies,
        "answers_by_status": statuses,
        "last_answer_after_s": round(last_reply, 4) if replies else None,
        "answered_before_ban_rate_s": round(replies / args.rate, 4),
    }


# ----------------------------------------------------------------------------- TLS floods


def _client_hellos(count: int) -> list[bytes]:
    """Real ClientHellos (TLS 1.2/1.3, fresh key shares) produced by ssl over memory BIOs."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    out = []
    for _ in range(count):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="gateway.lab")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        out.append(outgoing.read())
    return out


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0: close sends a reset and leaves no TIME_WAIT behind on either side.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def flood_tls(args: argparse.Namespace) -> dict[str, Any]:
    target = _address(args.target)
    hellos = _client_hellos(16)
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, tuple[str, float]] = {}
    counts = {"connects": 0, "server_answered": 0, "refused": 0, "timed_out": 0}
    sources = [
        f"{args.source.rsplit('.', 1)[0]}.{int(args.source.rsplit('.', 1)[1]) + i}"
        for i in range(4)
    ]

    def send_one() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((sources[counts["connects"] % len(sources)], 0))
        counts["connects"] += 1
        try:
            sock.connect(target)
        except BlockingIOError:
            pass
        except OSError:
            counts["refused"] += 1
            sock.close()
            return
        pending[sock] = ("connect", time.monotonic())
        selector.register(sock, selectors.EVENT_WRITE)

    def idle() -> None:
        for key, _ in selector.select(0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            state, _since = pending[sock]
            if state == "connect":
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    counts["refused"] += 1
                    _drop(sock)
                    continue
                try:
                    sock.send(hellos[counts["connects"] % len(hellos)])
                except OSError:
                    counts["refused"] += 1
                    _drop(sock)
                    continue
                pending[sock] = ("hello", time.monotonic())
                selector.modify(sock, selectors.EVENT_READ)
            else:
                try:
                    data = sock.recv(65535)
                except OSError:
                    data = b""
                if data:
                    counts["server_answered"] += 1
                _drop(sock)
        limit = time.monotonic() - 2.0
        for sock, (_state, since) in list(pending.items()):
            if since < limit:
                counts["timed_out"] += 1
                _drop(sock)

    def _drop(sock: socket.socket) -> None:
        selector.unregister(sock)
        del pending[sock]
        _reset(sock)

    _ready(args.delay)
    sent, elapsed = _pace(args.rate, args.seconds, send_one, idle)
    for sock in list(pending):
        _drop(sock)
    return {
        "kind": "tls",
        "sent": sent,
        "seconds": round(elapsed, 3),
        "rate": round(sent / elapsed, 1),
        **counts,
    }


async def _slowloris(args: argparse.Namespace) -> dict[str, Any]:
    target = _address(args.target)
    hello = _client_hellos(1)[0]
    counts = {"opened": 0, "closed_by_server": 0, "bytes_sent": 0, "held_max": 0}
    held = 0
    lifetimes: list[float] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.seconds
    # Ten hosts (``--source`` and the nine next addresses), each holding its share.
    base, _, last = args.source.rpartition(".")
    sources = [f"{base}.{int(last) + i}" for i in range(10)]

    async def one(index: int) -> None:
        nonlocal held
        # Spread the byte times so the connections do not all write in the same instant.
        await asyncio.sleep(args.interval * index / args.connections)
        while loop.time() < deadline:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.bind((sources[index % len(sources)], 0))
            try:
                await loop.sock_connect(sock, target)
            except OSError:
                sock.close()
                await asyncio.sleep(args.interval)
                continue
            counts["opened"] += 1
            held += 1
            counts["held_max"] = max(counts["held_max"], held)
            opened = loop.time()
            closed = False
            for byte in hello:
                if loop.time() >= deadline:
                    break
                try:
                    await loop.sock_sendall(sock, bytes([byte]))
                    counts["bytes_sent"] += 1
                except OSError:
                    closed = True
                    break
                # The server closes a connection it gave up on: a read sees the end at once.
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), args.interval)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    closed = True
                    break
            held -= 1
            _reset(sock)
            if closed:
                counts["closed_by_server"] += 1
                lifetimes.append(loop.time() - opened)
                # A patient attacker: it comes back at its own pace, not in a tight loop.
                await asyncio.sleep(args.interval)

    _ready(args.delay)
    await asyncio.gather(*(one(i) for i in range(args.connections)))
    lifetimes.sort()
    return {
        "kind": "slowloris",
        "connections": args.connections,
        "interval_s": args.interval,
        "seconds": args.seconds,
        **counts,
        "rate": round(counts["bytes_sent"] / args.seconds, 1),
        "held_until_closed_s_p50": round(lifetimes[len(lifetimes) // 2], 2) if lifetimes else None,
    }


def flood_slowloris(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_slowloris(args))


# ----------------------------------------------------------------------------- RTP / SRTP


def _udp_ip(source: tuple[str, int], target: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 + UDP datagram for a raw socket; the kernel fills the IP checksum and length,
    and a zero UDP checksum means none (RFC 768)."""
    udp = struct.pack("!HHHH", source[1], target[1], 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(source[0]),
        socket.inet_aton(target[0]),
    )
    return ip + udp


def flood_rtp(args: argparse.Namespace, *, srtp: bool = False) -> dict[str, Any]:
    target = _address(args.target)
    rand = random.Random(os.getpid())
    if args.spoof_port:
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        source = (args.source, args.spoof_port)

        def emit(payload: bytes) -> None:
            raw.sendto(_udp_ip(source, target, payload), (target[0], 0))

    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((args.source, 0))

        def emit(payload: bytes) -> None:
            sock.sendto(payload, target)

    body = b"\xff" * 160
    errors = 0

    def send_one() -> None:
        nonlocal errors
        ssrc = args.ssrc if srtp else rand.getrandbits(32)
        header = struct.pack("!BBHII", 0x80, 0, rand.getrandbits(16), rand.getrandbits(32), ssrc)
        tag = rand.randbytes(10) if srtp else b""
        try:
            emit(header + body + tag)
        except OSError:
            errors += 1

    _ready(args.delay)
    sent, elapsed = _pace(args.rate, args.seconds, send_one)
    return {
        "kind": "srtp" if srtp else "rtp",
        "sent": sent,
        "send_errors": errors,
        "seconds": round(elapsed, 3),
        "rate": round(sent / elapsed, 1),
        "source": f"{args.source}:{args.spoof_port or 'any'}",
    }


def _ready(delay: float) -> None:
    """Tell the bench the sockets are set up, then wait ``delay`` (the calls' media starts)."""
    print("ready", flush=True)
    if delay > 0:
        time.sleep(delay)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood_senders")
    parser.add_argument("kind", choices=("sip", "tls", "slowloris", "rtp", "srtp"))
    parser.add_argument("--source", required=True, help="local address to send from")
    parser.add_argument("--target", required=True, help="address:port to flood")
    parser.add_argument("--rate", type=float, default=1000.0, help="packets (connections)/s")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--spoof-port", type=int, default=0, help="raw socket, this source port")
    parser.add_argument("--ssrc", type=lambda s: int(s, 0), default=0)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--cpu", type=int, help="pin to this CPU")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds between ready and the first packet"
    )
    args = parser.parse_args(argv)
    if args.cpu is not None and args.cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {args.cpu})
    if args.kind == "sip":
        result = flood_sip(args)
    elif args.kind == "tls":
        result = flood_tls(args)
    elif args.kind == "slowloris":
        result = flood_slowloris(args)
    else:
        result = flood_rtp(args, srtp=args.kind == "srtp")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
