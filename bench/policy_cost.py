"""What a policy decision costs per request, beside parsing the same INVITE.

For one realistic INVITE from a desk phone (about 900 bytes with its SDP) it times, with
``timeit``:

- ``parse_message``: the SIP parser the gateway runs on every datagram;
- ``check_request``: allowlist, bans, scanner User-Agents, flood buckets, enumeration;
- ``check_outbound_call``: dial plan (number normalisation and templates), spike lock, caps;

and reports microseconds per call, the decision (both checks) and its ratio to the parse.

The engine is the production one with the default ``[policy]`` settings, and it is timed in a
steady state, not on a fresh start: before timing it has seen a day of calls from the phone (one
every ``--interval`` seconds of engine time), and every timed decision moves engine time on by
the same interval. So the token buckets refill as they would, the spike detector holds a day of
per-minute history, and every decision takes the "allowed" path, as nearly all real ones do.

Run from the repository root::

    python -m bench.policy_cost
    python -m bench.policy_cost --number 20000 --repeat 7

Prints a table and writes JSON to ``bench/results/policy-cost-<date>.json`` (``--out`` for
another folder).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.policy import PolicyEngine
from gateway.policy.settings import AllowlistSettings, PolicySettings
from gateway.sip.message import SipRequest, parse_message

RESULTS = Path(__file__).resolve().parent / "results"

PHONE = "201"
PHONE_IP = "192.0.2.23"
DIALLED = "12125550143"  # a national NANP number: allowed by the default dial plan
USER_AGENT = "Yealink SIP-T46S 66.86.0.15"
WALL = datetime.datetime(2024, 5, 1, 10, 0, 0)  # a weekday morning, local time

INVITE = (
    f"INVITE sip:{DIALLED}@192.0.2.2 SIP/2.0\r\n"
    f"Via: SIP/2.0/UDP {PHONE_IP}:5060;branch=z9hG4bK1d8e2a6c7f;rport\r\n"
    "Max-Forwards: 70\r\n"
    f'From: "Reception" <sip:{PHONE}@192.0.2.2>;tag=2849133715\r\n'
    f"To: <sip:{DIALLED}@192.0.2.2>\r\n"
    "Call-ID: 0_2270612418@192.0.2.23\r\n"
    "CSeq: 2 INVITE\r\n"
    f"Contact: <sip:{PHONE}@{PHONE_IP}:5060>\r\n"
    "Allow: INVITE, INFO, PRACK, ACK, BYE, CANCEL, OPTIONS, NOTIFY, REGISTER, SUBSCRIBE, REFER,"
    " PUBLISH, UPDATE, MESSAGE\r\n"
    "Supported: replaces, timer\r\n"
    f"User-Agent: {USER_AGENT}\r\n"
    "Allow-Events: talk,hold,conference,refer,check-sync\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n"
    "\r\n"
)
SDP = (
    "v=0\r\n"
    f"o=- 20010 20010 IN IP4 {PHONE_IP}\r\n"
    "s=SDP data\r\n"
    f"c=IN IP4 {PHONE_IP}\r\n"
    "t=0 0\r\n"
    "m=audio 11780 RTP/AVP 0 8 18 9 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:18 G729/8000\r\n"
    "a=fmtp:18 annexb=no\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)


def invite_bytes() -> bytes:
    return (INVITE.replace("{length}", str(len(SDP))) + SDP).encode()


class SteadyEngine:
    """A default-settings engine that has already seen a day of calls from the phone."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # Default settings, with the site's phone subnet (a documentation range) allowed.
        self.engine = PolicyEngine(
            PolicySettings(allowlist=AllowlistSettings(lan=("192.0.2.0/24",)))
        )
        self.now = 1000.0
        for _ in range(int(86400 / interval)):
            self.decide()
        self.engine.drain_events()

    def check_request(self) -> None:
        self.now += self.interval
        verdict = self.engine.check_request(
            "lan", PHONE_IP, "INVITE", USER_AGENT, DIALLED, True, self.now
        )
        assert verdict.allowed, verdict

    def check_outbound_call(self) -> None:
        self.now += self.interval
        verdict = self.engine.check_outbound_call(PHONE, PHONE_IP, DIALLED, self.now, WALL)
        assert verdict.allowed, verdict

    def decide(self) -> None:
        """Both checks, as the core asks them for one INVITE."""
        self.now += self.interval
        verdict = self.engine.check_request(
            "lan", PHONE_IP, "INVITE", USER_AGENT, DIALLED, True, self.now
        )
        assert verdict.allowed, verdict
        verdict = self.engine.check_outbound_call(PHONE, PHONE_IP, DIALLED, self.now, WALL)
        assert verdict.allowed, verdict


def time_us(fn: Callable[[], object], number: int, repeat: int) -> dict[str, float]:
    """Microseconds per call: best and median of ``repeat`` runs of ``number`` calls."""
    runs = sorted(t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat))
    return {"best_us": round(runs[0], 3), "median_us": round(runs[len(runs) // 2], 3)}


def measure(number: int, repeat: int, interval: float) -> dict[str, dict[str, float]]:
    data = invite_bytes()
    message = parse_message(data)
    assert isinstance(message, SipRequest) and message.method == "INVITE"
    # A fresh steady engine per operation: timing one check alone for days of engine time
    # would leave the other's state behind (a day without outbound calls and then a run of
    # them is a spike, rightly locked).
    return {
        "parse_message": time_us(lambda: parse_message(data), number, repeat),
        "check_request": time_us(SteadyEngine(interval).check_request, number, repeat),
        "check_outbound_call": time_us(SteadyEngine(interval).check_outbound_call, number, repeat),
        "decision": time_us(SteadyEngine(interval).decide, number, repeat),
    }


def table(results: dict[str, dict[str, float]], ratio: float) -> str:
    lines = [f"{'operation':<42} {'best µs':>9} {'median µs':>10}"]
    labels = {
        "parse_message": "parse_message (INVITE, SDP)",
        "check_request": "check_request",
        "check_outbound_call": "check_outbound_call",
        "decision": "decision (check_request + outbound_call)",
    }
    for key, label in labels.items():
        r = results[key]
        lines.append(f"{label:<42} {r['best_us']:>9.2f} {r['median_us']:>10.2f}")
    lines.append(f"decision / parse (median): {ratio:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs per operation")
    parser.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="engine seconds between decisions, and between the day of calls before (default 10)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    args = parser.parse_args(argv)
    if args.number < 1 or args.repeat < 1 or args.interval <= 0:
        parser.error("--number, --repeat and --interval must be positive")

    started = datetime.datetime.now(datetime.UTC)
    results = measure(args.number, args.repeat, args.interval)
    ratio = round(results["decision"]["median_us"] / results["parse_message"]["median_us"], 3)
    record = {
        "benchmark": "policy-cost",
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "request": f"INVITE of {len(invite_bytes())} bytes (with SDP) from a LAN phone",
        "settings": "default [policy]; a day of history, one call per interval",
        "number": args.number,
        "repeat": args.repeat,
        "interval_s": args.interval,
        **results,
        "decision_per_parse": ratio,
        "host": {"python": platform.python_version(), "machine": platform.machine()},
    }
    print(table(results, ratio))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"policy-cost-{started:%Y-%m-%d}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
