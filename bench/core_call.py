"""CPU cost of one whole call in the B2BUA core, without sockets: what the signalling process
spends per call set-up and tear-down, insensitive to other load on the machine.

A call is what ``bench/sip_setup_rate.py`` sends through a running gateway, fed straight into
``gateway.sip.b2bua.B2bua`` with its policy engine: the phone's INVITE (SDP offer), the
provider's 100, 180 and 200 (SDES answer), the phone's ACK, the phone's BYE and the
provider's 200; plus, once per call, the gateway's own outputs drained and serialised as the
glue does. Every message is parsed from bytes, so the parser's cost is included.

The figure is the thread's CPU time per call (``time.thread_time``), best of ``--rounds``
rounds of ``--calls`` calls, with the median beside it. It runs against any checkout of the
gateway, so two trees can be compared in one sitting::

    python -m bench.core_call                                   # this tree
    PYTHONPATH=/path/to/other/tree python -m bench.core_call --label before

The core's API changed over time (``now`` and ``wall`` with every input; earlier a
``wall_clock`` callable at construction): the driver adapts to either.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import gc
import inspect
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

import gateway
from gateway.policy import PolicyEngine, PolicySettings
from gateway.sdp.negotiation import MediaPolicy
from gateway.sip import b2bua as b2bua_module
from gateway.sip.actions import SendMessage
from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from gateway.sip.peer import Peer, Side
from gateway.sip.transaction import TimerSettings

RESULTS = Path(__file__).resolve().parent / "results"
PHONE = Peer(Side.LAN, "udp", ("192.0.2.10", 5062))
PROVIDER = Peer(Side.WAN, "tls", ("198.51.100.30", 5061))
WALL = datetime.datetime(2026, 11, 25, 10, 0)

_OFFER = (
    "v=0\r\no=phone 1 1 IN IP4 192.0.2.10\r\ns=call\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 8000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
)


def _invite(n: int) -> bytes:
    body = _OFFER
    return (
        f"INVITE sip:+15551234567@192.0.2.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKc{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f'From: "Desk 1001" <sip:1001@192.0.2.1>;tag=ph{n}\r\n'
        "To: <sip:+15551234567@192.0.2.1>\r\n"
        f"Call-ID: call-{n}@phone\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:1001@192.0.2.10:5062>\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY\r\n"
        "Supported: replaces, timer\r\nUser-Agent: Legacy Desk 2.1\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def _in_dialog(method: str, n: int, cseq: int, to_tag: str) -> bytes:
    return (
        f"{method} sip:+15551234567@192.0.2.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK{method.lower()}{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f'From: "Desk 1001" <sip:1001@192.0.2.1>;tag=ph{n}\r\n'
        f"To: <sip:+15551234567@192.0.2.1>;tag={to_tag}\r\n"
        f"Call-ID: call-{n}@phone\r\nCSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


#: A fixed 30-byte master key and salt (AES_CM_128_HMAC_SHA1_80, the suite offered first).
_KEY = base64.b64encode(bytes(range(30))).decode()


def _answer(offer: bytes) -> bytes:
    crypto = next(line for line in offer.decode().split("\r\n") if line.startswith("a=crypto:"))
    tag, suite = crypto.split()[0].split(":")[1], crypto.split()[1]
    return (
        "v=0\r\no=prov 5 5 IN IP4 198.51.100.30\r\ns=-\r\nc=IN IP4 198.51.100.30\r\nt=0 0\r\n"
        "m=audio 30000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        f"a=crypto:{tag} {suite} inline:{_KEY}\r\n"
    ).encode()


class Driver:
    """One core with a policy engine, fed through whichever API it has."""

    def __init__(self) -> None:
        settings = b2bua_module.EdgeSettings(
            lan_address="192.0.2.1",
            lan_port=5060,
            wan_address="198.51.100.1",
            wan_port=5061,
            provider=PROVIDER,
            domain="provider.example",
            media=MediaPolicy(lan_address="192.0.2.1", wan_address="198.51.100.1"),
            lan_media_ports=(20000, 29999),
            wan_media_ports=(30000, 39999),
            timers=TimerSettings(),
        )
        # Production's policy, with the limits that would refuse a benchmark's burst off (the
        # same ones bench/sip_setup_rate.py turns off): every check still runs per call.
        off = {"rate": 0.0, "burst": 0.0}
        no_caps = {
            "concurrent": 0,
            "calls_per_hour": 0,
            "minutes_per_day": 0.0,
            "international_minutes_per_day": 0.0,
        }
        limits = {
            "allowlist": {"lan": ["192.0.2.0/24"]},
            "flood": {"per_source": off, "register": off, "invite": off, "site": off},
            "caps": {"phone": no_caps, "site": no_caps, "spike": {"enabled": False}},
        }
        policy = PolicyEngine(msgspec.convert(limits, PolicySettings))
        params = inspect.signature(b2bua_module.B2bua).parameters
        if "wall_clock" in params:  # the core before it stopped reading a clock
            self.core = b2bua_module.B2bua(settings, policy=policy, wall_clock=lambda: WALL)
            self._wall: tuple[Any, ...] = ()
        else:
            self.core = b2bua_module.B2bua(settings, policy=policy)
            self._wall = (WALL,)
        self.now = 1.0
        self.core.wan_connection_state(True, "verified", self.now, *self._wall)
        self.core.actions()

    def phone(self, data: bytes) -> list[bytes]:
        self.core.receive_datagram(PHONE, data, self.now, *self._wall)
        return self._drain()

    def provider(self, message: SipRequest | SipResponse) -> list[bytes]:
        self.core.receive_message(PROVIDER, message, self.now, *self._wall)
        return self._drain()

    def _drain(self) -> list[bytes]:
        to_provider = []
        for action in self.core.actions():
            if isinstance(action, SendMessage) and action.peer.side == Side.WAN:
                to_provider.append(action.data)
        return to_provider

    def call(self, n: int) -> None:
        self.now += 0.01
        [invite_bytes] = self.phone(_invite(n))
        invite = parse_message(invite_bytes)
        assert isinstance(invite, SipRequest)
        self.provider(parse_message(bytes(make_response(invite, 100))))
        ringing = make_response(invite, 180, to_tag=f"pv{n}")
        self.provider(parse_message(bytes(ringing)))
        ok = make_response(invite, 200, to_tag=f"pv{n}")
        ok.add("Contact", "<sip:pbx@198.51.100.30:5061;transport=tls>")
        ok.add("Content-Type", "application/sdp")
        ok.body = _answer(invite.body)
        self.provider(parse_message(bytes(ok)))
        to_tag = self._phone_tag
        self.phone(_in_dialog("ACK", n, 1, to_tag))
        out = self.phone(_in_dialog("BYE", n, 2, to_tag))
        bye = parse_message(next(b for b in out if b.startswith(b"BYE ")))
        assert isinstance(bye, SipRequest)
        self.provider(parse_message(bytes(make_response(bye, 200))))

    @property
    def _phone_tag(self) -> str:
        pairs = self.core.active_calls
        tag = pairs[-1].caller.local_tag
        assert tag is not None
        return tag


def measure(calls: int, rounds: int) -> dict[str, Any]:
    driver = Driver()
    for n in range(200):  # warm-up: imports, caches, the allocator
        driver.call(-1 - n)
    per_call: list[float] = []
    serial = 0
    for _ in range(rounds):
        gc.collect()
        start = time.thread_time()
        for _ in range(calls):
            serial += 1
            driver.call(serial)
        per_call.append((time.thread_time() - start) / calls * 1e6)
    assert not driver.core.active_calls, "every call ended"
    return {"best_us": round(min(per_call), 1), "median_us": round(statistics.median(per_call), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core_call", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    figures = measure(args.calls, args.rounds)
    tree = str(Path(gateway.__file__).resolve().parents[1])
    print(
        f"tree {tree}: one call through the core {figures['best_us']} µs CPU "
        f"(median of rounds {figures['median_us']} µs)"
    )
    stamp = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        "benchmark": "core-call",
        "date": stamp.isoformat(timespec="seconds"),
        "tree": tree,
        "calls_per_round": args.calls,
        "rounds": args.rounds,
        **figures,
        "host": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.label}" if args.label else ""
    path = args.out / f"core-call-{stamp:%Y-%m-%d-%H%M}{suffix}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
