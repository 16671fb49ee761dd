"""SIP parser cost per message, beside a split-only reference in the same run.

Three messages as the gateway sees them on a busy site: an INVITE with an SDP offer from a
desk phone (plain RTP), the provider's 200 OK with an SDES answer (two Vias, Record-Route),
and a REGISTER with digest credentials. For each one, in µs per message:

- ``parse``: ``gateway.sip.message.parse_message`` (split, validate every header the gateway
  checks, build the message object);
- ``parse+read``: the same, then the fields every transaction and dialog reads (Call-ID,
  CSeq, the Vias and the top Via's branch, From and To tags, Contacts) twice, as the
  transaction layer and the B2BUA each do;
- ``serialise``: ``bytes(message)`` of the parsed message;
- ``ref split``: a minimal parse of the same bytes with ``bytes.split`` (start line, header
  name/value pairs, body; no validation, no objects) and ``ref regex``: the same with one
  regular expression over the header section. The ratio ``parse / ref split`` shows how much
  of the cost is our structure and checks rather than cutting the bytes up.

Each figure is the thread's CPU time per message, best of ``--rounds`` rounds of ``--n``
messages (the minimum is what the code costs; larger ones are other processes disturbing
caches), with the median beside it; the JSON adds the best wall-clock time.

Run from the repository root::

    python -m bench.sip_parse                  # 20000 messages per round, 7 rounds
    python -m bench.sip_parse --n 2000 --rounds 3 --label after

Writes a table to stdout and JSON to ``bench/results/sip-parse-<date>-<HHMM>[-label].json``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.sip.message import SipMessage, parse_message

RESULTS = Path(__file__).resolve().parent / "results"

_SDP_OFFER = (
    "v=0\r\n"
    "o=- 20518 0 IN IP4 192.0.2.41\r\n"
    "s=SDP data\r\n"
    "c=IN IP4 192.0.2.41\r\n"
    "t=0 0\r\n"
    "m=audio 11780 RTP/AVP 0 8 18 9 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:18 G729/8000\r\n"
    "a=fmtp:18 annexb=no\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)

_SDP_ANSWER = (
    "v=0\r\n"
    "o=provider 1823746 1823747 IN IP4 203.0.113.30\r\n"
    "s=-\r\n"
    "c=IN IP4 203.0.113.30\r\n"
    "t=0 0\r\n"
    "m=audio 40112 RTP/SAVP 0 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)


def _message(lines: list[str], body: str = "") -> bytes:
    payload = body.encode()
    head = "\r\n".join([*lines, f"Content-Length: {len(payload)}"])
    return (head + "\r\n\r\n").encode() + payload


INVITE = _message(
    [
        "INVITE sip:+442079460123@192.0.2.1:5060 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.41:5060;branch=z9hG4bK1466498512;rport",
        'From: "Reception 41" <sip:241@192.0.2.1:5060>;tag=1893520941',
        "To: <sip:+442079460123@192.0.2.1:5060>",
        "Call-ID: 1208407937@192.0.2.41",
        "CSeq: 2 INVITE",
        'Contact: <sip:241@192.0.2.41:5060>;+sip.instance="<urn:uuid:00000000-0000-1000-8000'
        '-805EC0A80A29>"',
        'Authorization: Digest username="241", realm="gateway", '
        'nonce="5f0c2f4e8a1b3c9d", uri="sip:+442079460123@192.0.2.1:5060", '
        'response="8f2b1c7d6e5a4b3c2d1e0f9a8b7c6d5e", algorithm=MD5',
        "Content-Type: application/sdp",
        "Allow: INVITE, INFO, PRACK, ACK, BYE, CANCEL, OPTIONS, NOTIFY, REGISTER, SUBSCRIBE, "
        "REFER, PUBLISH, UPDATE, MESSAGE",
        "Max-Forwards: 70",
        "User-Agent: Yealink SIP-T46S 66.86.0.15",
        "Supported: replaces, timer",
        "Allow-Events: talk,hold,conference,refer,check-sync",
    ],
    _SDP_OFFER,
)

OK_200 = _message(
    [
        "SIP/2.0 200 OK",
        "Via: SIP/2.0/TLS 198.51.100.21:5061;branch=z9hG4bKx3PqLm0c7Vw2RfYt8nKaZgD1;rport=5061;"
        "received=198.51.100.21",
        "Via: SIP/2.0/TLS 198.51.100.21:5061;branch=z9hG4bKq9Wd2Xv7Lp1Mn4Kb6Jh8Tf0S",
        "Record-Route: <sip:203.0.113.30:5061;transport=tls;lr;r2=on;ftag=Bq2Zr7LwT0yN>",
        "Record-Route: <sip:203.0.113.30;lr;r2=on;ftag=Bq2Zr7LwT0yN>",
        "From: <sip:+15551230041@trunk.example.net>;tag=Bq2Zr7LwT0yN",
        "To: <sip:+442079460123@trunk.example.net>;tag=as6b1f2e77",
        "Call-ID: 4bR7vQ2nXc8LpZ0wKy5TdA9m",
        "CSeq: 1 INVITE",
        "Server: provider-sbc",
        "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO, PUBLISH",
        "Supported: replaces, timer",
        "Contact: <sip:+442079460123@203.0.113.30:5061;transport=tls>",
        "Content-Type: application/sdp",
    ],
    _SDP_ANSWER,
)

REGISTER = _message(
    [
        "REGISTER sip:192.0.2.1:5060 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.41:5060;branch=z9hG4bK1932763461;rport",
        'From: "Reception 41" <sip:241@192.0.2.1:5060>;tag=2084710493',
        'To: "Reception 41" <sip:241@192.0.2.1:5060>',
        "Call-ID: 0_3270913546@192.0.2.41",
        "CSeq: 3 REGISTER",
        'Contact: <sip:241@192.0.2.41:5060>;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-'
        '1000-8000-805EC0A80A29>"',
        'Authorization: Digest username="241", realm="gateway", nonce="6a1d2e3f4b5c6d7e", '
        'uri="sip:192.0.2.1:5060", response="0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d", '
        "algorithm=MD5",
        "Max-Forwards: 70",
        "User-Agent: Yealink SIP-T46S 66.86.0.15",
        "Expires: 3600",
        "Allow: INVITE, INFO, PRACK, ACK, BYE, CANCEL, OPTIONS, NOTIFY, REGISTER, SUBSCRIBE, "
        "REFER, PUBLISH, UPDATE, MESSAGE",
    ],
)

MESSAGES: dict[str, bytes] = {"INVITE": INVITE, "200 OK": OK_200, "REGISTER": REGISTER}


def reference_split(data: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]], bytes]:
    """Cut a message up and nothing else: start line, (name, value) pairs, body."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    return lines[0].split(b" ", 2), headers, body


_REFERENCE_HEADER = re.compile(rb"([^:\r\n]+):[ \t]*([^\r\n]*)\r\n")


def reference_regex(data: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]], bytes]:
    """The same cut with one regular expression over the header section."""
    end = data.find(b"\r\n\r\n")
    first = data.find(b"\r\n")
    headers = _REFERENCE_HEADER.findall(data, first + 2, end + 2)
    return data[:first].split(b" ", 2), headers, data[end + 4 :]


def read_fields(message: SipMessage) -> None:
    """What the transaction layer and then the B2BUA read of every message they handle."""
    for _ in range(2):
        message.call_id  # noqa: B018
        message.cseq  # noqa: B018
        message.top_via.branch  # noqa: B018
        message.vias  # noqa: B018
        message.from_.tag  # noqa: B018
        message.to.tag  # noqa: B018
        message.contacts  # noqa: B018


def _time_per_call(fn: Callable[[], object], n: int, rounds: int) -> dict[str, float]:
    """µs per call over ``rounds`` rounds of ``n`` calls: CPU time best and median, wall best.

    CPU time is this thread's own (CLOCK_THREAD_CPUTIME_ID): on a machine shared with other
    work, time spent waiting for the CPU is left out of it and stays in the wall figure.
    """
    cpu = []
    wall = []
    for _ in range(rounds):
        wall_start = time.perf_counter_ns()
        cpu_start = time.thread_time_ns()
        for _ in range(n):
            fn()
        cpu.append((time.thread_time_ns() - cpu_start) / n / 1000)
        wall.append((time.perf_counter_ns() - wall_start) / n / 1000)
    return {
        "best": round(min(cpu), 2),
        "median": round(statistics.median(cpu), 2),
        "wall_best": round(min(wall), 2),
    }


def measure(n: int, rounds: int) -> dict[str, dict[str, dict[str, float]]]:
    """µs per message, {kind: {column: {"best", "median", "wall_best"}}}."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind, data in MESSAGES.items():
        parsed = parse_message(data)
        # Guard against benchmarking a parse that silently stopped working.
        assert bytes(parsed) == data, f"{kind} does not round-trip"

        def parse_and_read(data: bytes = data) -> None:
            read_fields(parse_message(data))

        columns: dict[str, Callable[[], object]] = {
            "parse": partial(parse_message, data),
            "parse+read": parse_and_read,
            "serialise": parsed.__bytes__,
            "ref split": partial(reference_split, data),
            "ref regex": partial(reference_regex, data),
        }
        results[kind] = {}
        for column, fn in columns.items():
            for _ in range(min(n, 500)):  # warm caches and the allocator
                fn()
            results[kind][column] = _time_per_call(fn, n, rounds)
    return results


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    columns = list(next(iter(results.values())))
    lines = [
        "CPU µs per message, best of rounds (median)",
        f"{'message':<10}" + "".join(f"{c:>18}" for c in columns) + f"{'parse/split':>13}",
    ]
    for kind, row in results.items():
        cells = "".join(f"{row[c]['best']:>9.2f} ({row[c]['median']:>6.2f})" for c in columns)
        ratio = row["parse"]["best"] / row["ref split"]["best"]
        lines.append(f"{kind:<10}{cells}{ratio:>12.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="messages per round (20000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per figure (7)")
    parser.add_argument("--label", default="", help="appended to the result file name")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be positive")
    started = datetime.datetime.now(datetime.UTC)
    # Collections would land in whichever figure happens to be running; none is needed here.
    gc.disable()
    try:
        results = measure(args.n, args.rounds)
    finally:
        gc.enable()
    text = table(results)
    print(text)
    if args.no_write:
        return 0
    record: dict[str, Any] = {
        "benchmark": "sip-parse",
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "unit": "µs per message (thread CPU time; wall_best: wall clock)",
        "n": args.n,
        "rounds": args.rounds,
        "message_bytes": {kind: len(data) for kind, data in MESSAGES.items()},
        "results": results,
        "load_average": os.getloadavg(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.label}" if args.label else ""
    path = args.out / f"sip-parse-{started:%Y-%m-%d-%H%M}{suffix}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
