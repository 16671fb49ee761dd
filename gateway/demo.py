"""``gateway demo``: one self-contained call through the gateway, and a plain-language verdict.

With nothing configured it makes a throwaway CA and certificates, starts a built-in provider
that takes only SIP over TLS and SRTP (:mod:`gateway.lab.provider`), the gateway itself, and a
built-in legacy phone (:mod:`gateway.lab.phone`) that registers, calls, exchanges a tone both
ways and hangs up. Then it says whether signalling was TLS with a verified peer, media was
SRTP, nothing plain reached the WAN side, the audio arrived both ways, and what latency and
jitter the gateway added. Exit status 0 only if every line holds.

Everything runs on loopback in one event loop, one address per role so the LAN and WAN sides
stay visibly apart (the gateway's media workers are its own child processes):

    phone 127.0.0.10  ->  gateway LAN 127.0.0.20 | gateway WAN 127.0.0.21  ->  provider 127.0.0.30

Latency is measured from the outside: the sender logs each RTP sequence number's send time,
the receiver its arrival, on one clock. A direct phone-to-provider run of the same code first
gives the baseline, so "added" is what the gateway costs, not what loopback and asyncio cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from gateway.certs.lab import make_lab
from gateway.lab.audio import analyse_ulaw, tone_frames
from gateway.lab.phone import LabPhone, PhoneError
from gateway.lab.provider import LabProvider
from gateway.lab.rtp import MediaLog, TonePlayer, Transit, open_endpoint, parse_rtp, transit
from gateway.sip.call_events import CallAnswered

if TYPE_CHECKING:
    from gateway.operations import StatusView

PHONE_ADDRESS = "127.0.0.10"
GATEWAY_LAN_ADDRESS = "127.0.0.20"
GATEWAY_WAN_ADDRESS = "127.0.0.21"
PROVIDER_ADDRESS = "127.0.0.30"
#: The name on the lab provider certificate; the gateway verifies it (RFC 5922 §7.2).
PROVIDER_NAME = "provider.lab"

PHONE_TONE_HZ = 440.0
PROVIDER_TONE_HZ = 1000.0
#: "Audio delivered" needs at least this share of the other side's packets.
MIN_DELIVERED = 0.90
#: Added one-way delay (p99) and interarrival jitter beyond which a call would suffer; generous
#: next to ITU-T G.114's 150 ms mouth-to-ear budget, since CI machines are noisy.
MAX_ADDED_P99 = 0.050
MAX_JITTER = 0.020
#: Length of the direct loopback run that gives the latency baseline.
BASELINE_SECONDS = 1.0


@dataclass
class Line:
    """One line of the verdict: a topic, what was seen, and whether it holds."""

    topic: str
    text: str
    ok: bool


@dataclass
class DemoReport:
    """What the demo found; ``lines`` is what is printed."""

    lines: list[Line] = field(default_factory=list)
    #: Plain RTP/RTCP datagrams that reached the provider (the WAN side).
    plaintext: int = 0
    #: Final status the phone got for its INVITE (None if it never got one).
    call_status: int | None = None
    suite: str | None = None
    #: The phone's REGISTER got a 200 through the gateway.
    registered: bool = False
    #: A plain-language addition to a failing verdict.
    note: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.lines) and all(line.ok for line in self.lines)

    @property
    def exit_status(self) -> int:
        return 0 if self.passed else 1

    def add(self, topic: str, text: str, ok: bool) -> None:
        self.lines.append(Line(topic, text, ok))

    def render(self) -> str:
        # Aligned status column, but a long explanation must not push it off every screen.
        width = min(80, max((len(line.text) for line in self.lines), default=0))
        rows = [
            f"  {line.topic:<11} {line.text:<{width}}  {'ok' if line.ok else 'FAIL'}"
            for line in self.lines
        ]
        if self.passed:
            verdict = "PASS: every call leg toward the provider was encrypted"
        else:
            failed = ", ".join(line.topic for line in self.lines if not line.ok)
            verdict = f"FAIL: {failed or 'nothing was checked'}"
            if self.note:
                verdict += f"; {self.note}"
        rows.append(f"  {'verdict':<11} {verdict}")
        return "\n".join(rows)


async def run_demo(
    seconds: float = 3.0,
    verbose: bool = False,
    *,
    provider_crypto: bool = True,
    out: TextIO | None = None,
) -> int:
    """Run the demo call, print the verdict, return the exit status (0 = all of it holds).

    ``provider_crypto=False`` makes the provider answer with plain RTP/AVP: the gateway must
    then refuse the call (488) and the demo fail, without a plain packet reaching the WAN.
    """
    stream = out if out is not None else sys.stdout
    report = await demo_call(seconds=seconds, verbose=verbose, provider_crypto=provider_crypto)
    print(report.render(), file=stream, flush=True)
    return report.exit_status


async def demo_call(
    *,
    seconds: float = 3.0,
    verbose: bool = False,
    provider_crypto: bool = True,
    digest_password: str | None = None,
) -> DemoReport:
    """Set everything up, place the call, measure, tear everything down; the report.

    With ``digest_password`` the provider challenges REGISTER (digest, realm provider.lab)
    and the phone answers with that password, through the gateway.
    """
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    report = DemoReport()
    restore_logging = _quiet_logging(verbose)
    directory = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    cleanups: list[Awaitable[object]] = []
    try:
        await _demo(report, directory, cleanups, seconds, provider_crypto, digest_password)
    except Exception as exc:
        # A demo that cannot even set up (no loopback alias, a port taken, a certificate
        # problem) still answers with a verdict line, not a traceback.
        report.add("setup", f"the demo could not run: {type(exc).__name__}: {exc}", False)
    finally:
        # Reverse order of start-up: phone, gateway (BYEs, worker processes), provider.
        for cleanup in reversed(cleanups):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(cleanup, 10.0)
        shutil.rmtree(directory, ignore_errors=True)
        restore_logging()
    return report


async def _demo(
    report: DemoReport,
    directory: Path,
    cleanups: list[Awaitable[object]],
    seconds: float,
    provider_crypto: bool,
    digest_password: str | None,
) -> None:
    # Imported here so `gateway --help` and the other commands stay light.
    from gateway.app import Gateway
    from gateway.config import parse_config

    missing = _unbindable(PHONE_ADDRESS, GATEWAY_LAN_ADDRESS, GATEWAY_WAN_ADDRESS, PROVIDER_ADDRESS)
    if missing:
        # Linux routes all of 127.0.0.0/8 to loopback; macOS and BSDs only 127.0.0.1.
        aliases = "; ".join(f"sudo ifconfig lo0 alias {a} up" for a in missing)
        report.add(
            "setup", f"cannot bind {', '.join(missing)} (add loopback aliases: {aliases})", False
        )
        return
    certs = directory / "certs"
    await asyncio.to_thread(make_lab, certs)
    # The phone's tone frames: seen in a WAN datagram they would prove audio leaked in clear.
    phone_frames = set(itertools.islice(tone_frames(PHONE_TONE_HZ), 50))
    provider = LabProvider(
        address=PROVIDER_ADDRESS,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        answer_without_crypto=not provider_crypto,
        tone_hz=PROVIDER_TONE_HZ,
        tone_seconds=seconds,
        known_plaintext=phone_frames,
        realm=PROVIDER_NAME if digest_password is not None else None,
        password=digest_password,
    )
    await provider.start()
    cleanups.append(provider.stop())

    baseline = await _baseline()

    config_text = _config_text(
        lan_port=_free_udp_port(GATEWAY_LAN_ADDRESS),
        lan_media=_free_port_range(GATEWAY_LAN_ADDRESS),
        wan_media=_free_port_range(GATEWAY_WAN_ADDRESS),
        provider_port=provider.port,
    )
    config_file = directory / "demo.toml"
    config_file.write_text(config_text, encoding="utf-8")
    config = parse_config(config_text, str(config_file), base_dir=str(directory))
    # One media worker: one call needs no more, and each costs a process start.
    gateway = Gateway(config, workers=1)
    cleanups.append(gateway.stop())
    await gateway.start()
    # From here on the demo only reads what an operator could: the gateway's status view.
    view: StatusView = gateway.console

    await _wait_for(lambda: view.provider().up, 5.0)
    # A stats round trip returns once the media worker has finished starting (its imports
    # take a moment): a call placed before that would lose its first packets, which says
    # something about the demo's haste, not about the gateway under steady use.
    await view.media_streams()
    link = view.provider()
    sessions = provider.refresh_tls_sessions()
    session = sessions[0] if sessions else None
    if not link.up or link.tls_version is None:
        report.add("signalling", f"no TLS connection to the provider: {link.state}", False)
        return
    version = (link.tls_version or "").replace("TLSv", "TLS ")
    verified = link.peer_certificate_subject == PROVIDER_NAME
    mutual = session is not None and session.client_subject is not None
    subject = link.peer_certificate_subject
    text = f"{version} ({link.tls_cipher}), provider certificate verified ({subject})"
    if mutual:
        text += ", mutual TLS"
    report.add(
        "signalling",
        text,
        verified and link.tls_version in ("TLSv1.2", "TLSv1.3") and link.tls_cipher is not None,
    )

    phone = LabPhone(
        address=PHONE_ADDRESS,
        proxy=(config.lan.sip_address, config.lan.sip_port),
        tone_hz=PHONE_TONE_HZ,
        password=digest_password,
        # A demo that stalls should say so in seconds, not after SIP's 32 s Timer F.
        timeout=5.0,
    )
    await phone.start()
    cleanups.append(phone.close())

    try:
        registered = await phone.register()
        if registered.status != 200:
            report.add(
                "register", f"REGISTER answered {registered.status} {registered.reason}", False
            )
            return
        report.registered = True
        call = await phone.dial("200")
    except (PhoneError, TimeoutError) as exc:
        report.add("call", f"the call did not complete: {exc}", False)
        _add_plaintext(report, provider)
        return
    report.call_status = call.status
    provider_call = provider.only_call()
    if call.status != 200 or call.remote_media is None or provider_call is None:
        why = f"call refused with {call.status}"
        if call.warning:
            # The Warning names every suite offered; the first clause says why.
            why += f": {_warning_text(call.warning).split(' (offered')[0]}"
        report.add("media", why, False)
        _add_plaintext(report, provider)
        if provider.media.plaintext == 0:
            report.note = "no encrypted call was possible, and the gateway sent nothing in clear"
        report.add("audio", "no call, no audio", False)
        return

    # Both ends play for the same time; the provider starts on the ACK.
    def provider_done() -> bool:
        player = provider_call.player
        return provider_call.ended.is_set() or (player is not None and player.done())

    await asyncio.gather(phone.play(seconds), _wait_for(provider_done, seconds + 1.0))
    await asyncio.sleep(0.1)  # let the last packets land before counting
    gateway_counters = await _gateway_counters(view)
    try:
        bye = await phone.hang_up()
    except (PhoneError, TimeoutError):
        bye = None

    suite = _answered_suite(view) or (provider_call.suite.value if provider_call.suite else None)
    report.suite = suite
    srtp_both_ways = (
        provider.media.srtp_ok > 0
        and gateway_counters.get("wan_in_packets", 0) > 0
        and gateway_counters.get("drop_auth", 0) == 0
        and provider.media.auth_failed == 0
    )
    media_text = f"SRTP {suite} both ways" if suite else "no SRTP suite agreed"
    if gateway_counters.get("drop_auth", 0) or provider.media.auth_failed:
        media_text += (
            f" ({provider.media.auth_failed} failed authentication at the provider,"
            f" {gateway_counters.get('drop_auth', 0)} at the gateway)"
        )
    report.add("media", media_text, suite is not None and srtp_both_ways)
    _add_plaintext(report, provider)

    up = _audio(phone.sent, provider_call.received)
    down = _audio(provider_call.sent, phone.received)
    up_tone = analyse_ulaw(provider_call.received.audio())
    down_tone = analyse_ulaw(phone.received.audio())
    report.add(
        "audio",
        f"phone -> provider {up_tone.freq:.0f} Hz ({up[0]}/{up[1]} packets),"
        f" provider -> phone {down_tone.freq:.0f} Hz ({down[0]}/{down[1]})",
        up_tone.is_tone(PHONE_TONE_HZ)
        and down_tone.is_tone(PROVIDER_TONE_HZ)
        and _delivered(up)
        and _delivered(down),
    )

    measured = [
        transit(phone.sent.sent, provider_call.received.arrived),
        transit(provider_call.sent.sent, phone.received.arrived),
    ]
    report.add(*_latency_line(measured, baseline))
    if bye is None or bye.status != 200:
        status = "no answer" if bye is None else f"{bye.status} {bye.reason}"
        report.add("hang-up", f"BYE answered {status}", False)


# --------------------------------------------------------------------------- report pieces


def _add_plaintext(report: DemoReport, provider: LabProvider) -> None:
    counters = provider.media
    report.plaintext = counters.plaintext
    text = f"{counters.plaintext} RTP packets seen unencrypted on the WAN side"
    if counters.received:
        text += f" (of {counters.received} received)"
    report.add("plaintext", text, counters.plaintext == 0)


def _audio(sent: MediaLog, received: MediaLog) -> tuple[int, int]:
    """(packets that arrived, packets sent) for one direction."""
    arrived = sum(1 for seq in received.arrived if seq in sent.sent)
    return arrived, len(sent.sent)


def _delivered(counts: tuple[int, int]) -> bool:
    arrived, sent = counts
    return sent > 0 and arrived >= MIN_DELIVERED * sent


def _latency_line(measured: list[Transit], baseline: list[Transit]) -> tuple[str, str, bool]:
    via = Transit(0, 0, tuple(d for t in measured for d in t.delays), 0.0)
    direct = Transit(0, 0, tuple(d for t in baseline for d in t.delays), 0.0)
    if not via.delays or not direct.delays:
        return "latency", "not measured (no audio both ways)", False
    added_p50 = max(0.0, via.quantile(0.50) - direct.quantile(0.50))
    added_p99 = max(0.0, via.quantile(0.99) - direct.quantile(0.99))
    jitter = max(t.jitter for t in measured)
    direct_jitter = max(t.jitter for t in baseline)
    text = (
        f"added p50 {added_p50 * 1000:.2f} ms, p99 {added_p99 * 1000:.2f} ms;"
        f" jitter {jitter * 1000:.2f} ms (direct {direct_jitter * 1000:.2f} ms)"
    )
    return "latency", text, added_p99 <= MAX_ADDED_P99 and jitter <= MAX_JITTER


def _warning_text(warning: str) -> str:
    """The quoted text of a Warning header (RFC 3261 §20.43), else the header as is."""
    first, _, rest = warning.partition('"')
    return rest.rpartition('"')[0] if rest else first


def _answered_suite(status: StatusView) -> str | None:
    """The suite the gateway's "answered" call event names (the gateway's own view)."""
    for event in reversed(status.recent_call_events()):
        if isinstance(event, CallAnswered):
            return event.suite
    return None


async def _gateway_counters(status: StatusView) -> dict[str, int]:
    """The gateway's media counters summed over streams (empty if the workers do not say)."""
    reading = await status.media_streams()
    totals: dict[str, int] = {}
    for counters in reading.streams.values():
        for name in ("wan_in_packets", "wan_out_packets", "drop_auth", "drop_replay"):
            totals[name] = totals.get(name, 0) + int(getattr(counters, name, 0))
    return totals


# --------------------------------------------------------------------------- measurements


async def _baseline() -> list[Transit]:
    """Direct phone <-> provider loopback RTP, both ways at once, measured as the call is."""
    up, down = MediaLog(), MediaLog()

    def arrive(log: MediaLog) -> Callable[[bytes, tuple[str, int], float], None]:
        def on_datagram(data: bytes, addr: tuple[str, int], at: float) -> None:
            packet = parse_rtp(data)
            if packet is not None:
                log.record_arrival(packet, at)

        return on_datagram

    phone_end = await open_endpoint(PHONE_ADDRESS, 0, arrive(down))
    provider_end = await open_endpoint(PROVIDER_ADDRESS, 0, arrive(up))
    try:
        to_provider, to_phone = provider_end.local, phone_end.local
        phone_player = TonePlayer(lambda d: phone_end.sendto(d, to_provider), PHONE_TONE_HZ, up)
        provider_player = TonePlayer(
            lambda d: provider_end.sendto(d, to_phone), PROVIDER_TONE_HZ, down
        )

        async def offset_provider() -> None:
            # Half a packet apart, as two independent ends are: in lockstep each packet would
            # wait for the other's send, which would inflate the baseline.
            await asyncio.sleep(0.010)
            await provider_player.play(BASELINE_SECONDS)

        await asyncio.gather(phone_player.play(BASELINE_SECONDS), offset_provider())
        await asyncio.sleep(0.02)
    finally:
        phone_end.close()
        provider_end.close()
    return [transit(up.sent, up.arrived), transit(down.sent, down.arrived)]


async def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition()`` every 10 ms until true or ``timeout``; returns its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# --------------------------------------------------------------------------- set-up


def _config_text(
    *, lan_port: int, lan_media: tuple[int, int], wan_media: tuple[int, int], provider_port: int
) -> str:
    """The gateway configuration of the demo, in the shape of deploy/lab.toml."""
    return f"""\
# Written by `gateway demo` into a throwaway folder.
[lan]
sip_address = "{GATEWAY_LAN_ADDRESS}"
sip_port = {lan_port}
transports = ["udp"]
media_address = "{GATEWAY_LAN_ADDRESS}"
media_ports = [{lan_media[0]}, {lan_media[1]}]

[wan]
provider_host = "{PROVIDER_ADDRESS}"
provider_port = {provider_port}
domain = "{PROVIDER_NAME}"
sip_address = "{GATEWAY_WAN_ADDRESS}"
media_address = "{GATEWAY_WAN_ADDRESS}"
media_ports = [{wan_media[0]}, {wan_media[1]}]
srtp_suites = [
  "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM", "AEAD_AES_256_GCM",
]

[wan.identity]
certificate = "certs/gateway.pem"
private_key = "certs/gateway.key"

[wan.trust]
ca_bundle = "certs/ca.pem"
server_name = "{PROVIDER_NAME}"

[media]
workers = 1

[policy.allowlist]
# Only the demo phone may use the LAN side.
lan = ["{PHONE_ADDRESS}/32"]

[state]
directory = "state"

[control]
# The demo's own socket: the default one belongs to a gateway service on this box.
socket = "control.sock"
"""


def _unbindable(*addresses: str) -> list[str]:
    """The addresses this host cannot bind a socket to."""
    missing: list[str] = []
    for address in addresses:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((address, 0))
        except OSError:
            missing.append(address)
    return missing


def _free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def _free_port_range(address: str, size: int = 16) -> tuple[int, int]:
    """An even-aligned range of ``size`` UDP ports on ``address`` that are all free now."""
    for _ in range(100):
        first = 20000 + 2 * secrets.randbelow(20000)
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + size):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(probe)
                probe.bind((address, port))
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
        return first, first + size - 1
    raise OSError(f"no {size} free UDP ports in a row on {address}")


def _quiet_logging(verbose: bool) -> Callable[[], None]:
    """Silence the gateway's log (or show it with --verbose); returns how to undo that."""
    logger = logging.getLogger("gateway")
    saved_level = logger.level
    if verbose:
        root = logging.getLogger()
        if not root.handlers:
            from gateway.logsetup import configure_logging

            configure_logging("debug", "text")
        logger.setLevel(logging.DEBUG)
    else:
        logger.setLevel(logging.CRITICAL + 1)

    def restore() -> None:
        logger.setLevel(saved_level)

    return restore
