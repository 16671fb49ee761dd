"""The operator console: status records read from the cores' state, and each operation's result.

The core is a stand-in with the attribute names the console reads (``active_calls``,
``registrations.all()``, ``counters``, ``accepting_calls``); the policy engine, the call
records, the TLS material (lab certificates) and the configuration file are the real ones.
Clocks are fixed: the cores' clock reads 100.0 while Unix time reads 1 000 000.0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.cdr import CallRecorder
from gateway.certs.lab import make_lab
from gateway.certs.runtime import TlsMaterial
from gateway.config import GatewayConfig, load_config, parse_config
from gateway.console import OperatorConsole
from gateway.media.control import StreamCounters
from gateway.media.controller import MediaError
from gateway.media.suites import SrtpSuite
from gateway.operations import (
    BanLift,
    ConfigReload,
    MediaReading,
    Operations,
    SpikeLockLift,
    StatusView,
    stream_totals,
)
from gateway.policy import PersistedBan, PolicyEngine
from gateway.policy.settings import PolicySettings
from gateway.sip.call_events import CallAnswered, CallStarted

NOW = 100.0
WALL = 1_000_000.0
OFFSET = WALL - NOW

CONFIG = """
[lan]
sip_address = "127.0.0.20"
sip_port = 5060
transports = ["udp"]
media_address = "127.0.0.20"
media_ports = [40000, 40015]

[wan]
provider_host = "127.0.0.30"
provider_port = 5061
domain = "provider.lab"
sip_address = "127.0.0.21"
media_address = "127.0.0.21"
media_ports = [41000, 41015]

[wan.identity]
certificate = "certs/gateway.pem"
private_key = "certs/gateway.key"

[wan.trust]
ca_bundle = "certs/ca.pem"
server_name = "provider.lab"

[media]
workers = 1

[state]
directory = "state"
"""


# --------------------------------------------------------------------------- stand-ins


@dataclass
class Peer:
    address: tuple[str, int]
    transport: str = "udp"


@dataclass
class Leg:
    call_id: str
    peer: Peer
    remote: object = None


@dataclass
class Media:
    suite: SrtpSuite | None
    uses_plaintext_downgrade: bool = False
    keying: str | None = None

    def chosen_suite(self) -> SrtpSuite | None:
        return self.suite


@dataclass
class Pair:
    key: str
    caller: Leg
    callee: Leg
    caller_side: str = "lan"
    state: str = "confirmed"
    method: str = "INVITE"
    started: float = 0.0
    answered: float = 0.0
    media: Media | None = None


@dataclass
class Binding:
    user: str
    aor: str
    phone_contact: str
    phone_peer: Peer
    user_agent: str | None = None
    expires_at: float = 0.0

    def active(self, now: float) -> bool:
        return self.expires_at > now


@dataclass
class Table:
    bindings: list[Binding] = field(default_factory=list)

    def all(self) -> list[Binding]:
        return list(self.bindings)


@dataclass
class Core:
    active_calls: list[Pair] = field(default_factory=list)
    registrations: Table = field(default_factory=Table)
    counters: dict[str, int] = field(default_factory=dict)
    accepting_calls: bool = True


class Workers:
    """The media controller's reading side: worker pids and stream counters."""

    def __init__(self) -> None:
        self.pids: list[int | None] = [4242]
        self.streams: dict[str, StreamCounters] = {}
        self.error: Exception | None = None

    def worker_pids(self) -> list[int | None]:
        return list(self.pids)

    async def stats(self) -> dict[str, StreamCounters]:
        if self.error is not None:
            raise self.error
        return dict(self.streams)


@dataclass
class Site:
    console: OperatorConsole
    core: Core
    policy: PolicyEngine
    workers: Workers
    cdr: CallRecorder
    tls: TlsMaterial
    config_path: Path
    changes: list[str]
    link: SimpleNamespace


@pytest.fixture(scope="module")
def lab_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("lab")
    make_lab(directory / "certs")
    return directory


@pytest.fixture
def site(lab_certs: Path, tmp_path: Path) -> Iterator[Site]:
    (tmp_path / "certs").symlink_to(lab_certs / "certs")
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(CONFIG)
    config: GatewayConfig = load_config(config_path)
    core = Core()
    policy = PolicyEngine(PolicySettings())
    workers = Workers()
    cdr = CallRecorder(None)
    tls = TlsMaterial(config.wan.identity, config.wan.trust)
    tls.load()
    changes: list[str] = []
    link = SimpleNamespace(
        up=True,
        tls_version="TLSv1.3",
        tls_cipher="TLS_AES_256_GCM_SHA384",
        peer_certificate_subject="provider.lab",
        connects=2,
    )
    console = OperatorConsole(
        config=config,
        core=core,
        policy=policy,
        media=workers,  # type: ignore[arg-type]
        tls=tls,
        cdr=cdr,
        provider=lambda: link,  # type: ignore[arg-type,return-value]
        wan_state=lambda: (True, "connected"),
        clock=lambda: NOW,
        after_change=lambda: changes.append("flushed"),
        wall=lambda: WALL,
    )
    yield Site(console, core, policy, workers, cdr, tls, config_path, changes, link)


def _call(key: str = "c1", *, answered: float = 0.0, suite: SrtpSuite | None = None) -> Pair:
    return Pair(
        key,
        Leg(
            "abc@phone",
            Peer(("127.0.0.10", 5062)),
            SimpleNamespace(uri=SimpleNamespace(user="100")),
        ),
        Leg("gw-1", Peer(("127.0.0.30", 5061), "tls")),
        started=40.0,
        answered=answered,
        media=Media(suite),
    )


# --------------------------------------------------------------------------- status


def test_the_console_is_both_seams(site: Site) -> None:
    status: StatusView = site.console
    operations: Operations = site.console
    assert status.started_at == WALL and operations is status


def test_calls_are_frozen_records_in_unix_time(site: Site) -> None:
    site.core.active_calls.append(_call(answered=50.0, suite=SrtpSuite.AEAD_AES_128_GCM))
    [call] = site.console.calls()
    assert call.call_id == "abc@phone" and call.pair == "c1" and call.state == "confirmed"
    # Before the records know the call, the core's clock is converted.
    assert call.started == 40.0 + OFFSET and call.answered == 50.0 + OFFSET
    assert call.caller == "100" and call.callee is None
    assert call.phone == "127.0.0.10:5062" and call.provider == "127.0.0.30:5061"
    assert call.direction == "outbound" and call.encryption == "srtp"
    assert call.suite == "AEAD_AES_128_GCM"
    with pytest.raises(AttributeError):
        call.state = "ended"  # type: ignore[misc]
    # Once the records know it, their parties and Unix times are the ones shown.
    site.cdr.on_event(CallStarted("abc@phone", "c1", "INVITE", "lan", "100", "200", "gw-1"), 5.0)
    site.cdr.on_event(CallAnswered("abc@phone", "c1", "AEAD_AES_128_GCM", False), 7.0)
    [call] = site.console.calls()
    assert (call.caller, call.callee, call.started, call.answered) == ("100", "200", 5.0, 7.0)


def test_unanswered_and_downgraded_calls(site: Site) -> None:
    pending = _call("c2")
    pending.state = "early"
    downgraded = _call("c3", answered=60.0)
    downgraded.media = Media(None, uses_plaintext_downgrade=True)
    inbound = _call("c4")
    inbound.caller_side = "wan"
    inbound.media = None
    site.core.active_calls += [pending, downgraded, inbound]
    by_pair = {c.pair: c for c in site.console.calls()}
    assert by_pair["c2"].encryption == "pending" and by_pair["c2"].answered is None
    assert by_pair["c3"].encryption == "plaintext-downgrade"
    assert by_pair["c4"].direction == "inbound"
    # The phone is on the callee leg of an inbound call.
    assert by_pair["c4"].phone == "127.0.0.30:5061"
    assert site.console.call_location("c4") == ("127.0.0.30:5061", "127.0.0.10:5062")
    assert site.console.call_location("gone") == (None, None)


def test_a_dtls_keyed_call_shows_its_keying(site: Site) -> None:
    dtls = _call("c5", answered=60.0)
    dtls.media = Media(SrtpSuite.AEAD_AES_128_GCM, keying="dtls")
    site.core.active_calls.append(dtls)
    [call] = site.console.calls()
    assert (call.suite, call.keying, call.encryption) == ("AEAD_AES_128_GCM", "dtls", "srtp")


def test_registrations_counters_and_readiness_inputs(site: Site) -> None:
    site.core.registrations.bindings += [
        Binding("201", "sip:201@x", "sip:201@127.0.0.11", Peer(("127.0.0.11", 5060)), "P/2", 400.0),
        Binding("200", "sip:200@x", "sip:200@127.0.0.10", Peer(("127.0.0.10", 5060)), None, 50.0),
        Binding("202", "sip:202@x", "sip:202@127.0.0.12", Peer(("127.0.0.12", 5060))),
    ]
    rows = site.console.registrations()
    assert [r.user for r in rows] == ["200", "201", "202"]
    assert rows[0].active is False and rows[0].expires_in == 0.0
    assert rows[1].active is True and rows[1].expires_in == 300.0 and rows[1].user_agent == "P/2"
    assert rows[2].expires_in is None and rows[2].address == ("127.0.0.12", 5060)
    site.core.counters["malformed_lan"] = 3
    counters = site.console.sip_counters()
    counters["malformed_lan"] = 99  # a copy: the core's own count does not move
    assert site.core.counters["malformed_lan"] == 3
    assert site.console.accepting_calls() is True
    site.core.accepting_calls = False
    assert site.console.accepting_calls() is False
    assert site.console.media_workers() == [4242]
    stats = site.console.call_record_stats()
    assert (stats.written, stats.write_errors, stats.pending, stats.file) == (0, 0, 0, None)
    assert site.console.call_records(limit=10) == []


def test_bans_in_unix_time(site: Site) -> None:
    site.policy.import_bans(
        [PersistedBan("192.0.2.7", "scan.user-agent", WALL - 5, WALL + 600, 2)], NOW, WALL
    )
    [ban] = site.console.bans()
    assert ban.address == "192.0.2.7" and ban.rule == "scan.user-agent" and ban.offences == 2
    assert ban.since == pytest.approx(WALL - 5) and ban.until == pytest.approx(WALL + 600)
    assert ban.seconds_left == 600.0
    assert site.console.policy_counters() == site.policy.counters()


def test_provider_and_certificates(site: Site) -> None:
    provider = site.console.provider()
    assert provider.up and provider.state == "connected" and provider.connects == 2
    assert provider.host == "127.0.0.30" and provider.port == 5061
    assert provider.tls_version == "TLSv1.3" and not provider.plaintext_signalling
    site.link.up = False
    assert site.console.provider().up is False
    tls = site.console.tls()
    assert tls.identity_configured and tls.identity_loaded and tls.reloads == 0
    roles = [c.role for c in tls.certificates]
    assert roles[0] == "identity" and "provider trust" in roles
    identity = tls.certificates[0]
    assert identity.file.endswith("gateway.pem") and identity.days_left > 300
    assert identity.pin and identity.not_after.tzinfo is not None


async def test_media_streams_never_raise(site: Site) -> None:
    counters = StreamCounters(lan_in_packets=10, wan_out_packets=9, drop_auth=1)
    site.workers.streams = {"c1/0": counters}
    reading = await site.console.media_streams()
    assert reading == MediaReading({"c1/0": counters})
    assert stream_totals(reading.streams.values())["drop_auth"] == 1
    site.workers.error = MediaError("worker 0 is not running")
    assert await site.console.media_streams() == MediaReading({}, "worker 0 is not running")
    site.workers.error = TimeoutError()
    assert (await site.console.media_streams()).error == "media workers did not answer"


def test_media_closed_listeners_and_recent_events(site: Site) -> None:
    seen: list[str] = []
    site.console.on_media_closed(lambda pair, streams: seen.append(pair))
    site.cdr.media_closed("c9", {"c9/0": StreamCounters()}, WALL)
    assert seen == ["c9"]
    started = CallStarted("x", "c9", "INVITE", "lan", "100", "200", "gw")
    site.console.note_call_event(started)
    assert site.console.recent_call_events() == (started,)


# --------------------------------------------------------------------------- operations


def test_lift_ban(site: Site) -> None:
    site.policy.import_bans(
        [PersistedBan("192.0.2.7", "scan.user-agent", WALL - 5, WALL + 600, 1)], NOW, WALL
    )
    assert site.console.lift_ban("192.0.2.7") == BanLift("192.0.2.7", True)
    assert site.console.bans() == [] and site.changes == ["flushed"]
    [event] = site.policy.drain_events()
    assert event.action == "lift" and event.detail == "operator"
    # Not banned (any more), or not an address at all: an answer, not an exception.
    assert site.console.lift_ban("192.0.2.7") == BanLift("192.0.2.7", False)
    assert site.console.lift_ban("not-an-address").lifted is False
    assert site.changes == ["flushed"]


def test_lift_spike_lock(site: Site) -> None:
    assert site.console.spike_locked() is False
    assert site.console.lift_spike_lock() == SpikeLockLift(False)
    assert site.changes == []


def test_reload_certificates(site: Site) -> None:
    result = site.console.reload_certificates("test")
    assert result.reloaded and result.error is None
    assert site.console.tls().reloads == 1
    key = site.config_path.parent / "certs" / "gateway.key"
    aside = key.with_name("gateway.key.aside")
    key.rename(aside)
    try:
        failed = site.console.reload_certificates("test")
    finally:
        aside.rename(key)
    assert not failed.reloaded and failed.error and "gateway.key" in failed.error
    # The identity in service stays in service.
    assert site.console.tls().identity_loaded


async def test_check_and_reload_configuration(site: Site) -> None:
    check = await site.console.check_configuration()
    assert check.valid and check.problems == () and check.restart_needed == ()
    assert check.file == str(site.config_path.resolve())
    reloaded = await site.console.reload_configuration()
    assert reloaded == ConfigReload(valid=True, applied=("certificates",))
    assert reloaded.ok and site.console.tls().reloads == 1

    site.config_path.write_text(CONFIG.replace("workers = 1", "workers = 2"))
    check = await site.console.check_configuration()
    assert check.valid and check.restart_needed == ("media",)

    site.config_path.write_text(CONFIG.replace("workers = 1", 'workers = "one"'))
    check = await site.console.check_configuration()
    assert not check.valid and "media.workers" in check.problems[0]
    assert str(site.config_path) in check.problems[0]
    bad = await site.console.reload_configuration()
    assert not bad.valid and not bad.ok and bad.applied == () and bad.problems == check.problems
    assert site.console.tls().reloads == 1  # a bad file changes nothing


async def test_a_gateway_not_started_from_a_file_has_nothing_to_check(site: Site) -> None:
    config = parse_config(CONFIG, base_dir=str(site.config_path.parent))
    console = OperatorConsole(
        config=config,
        core=site.core,
        policy=site.policy,
        media=site.workers,  # type: ignore[arg-type]
        tls=site.tls,
        cdr=site.cdr,
        provider=lambda: None,
        wan_state=lambda: (False, "not connected yet"),
        clock=lambda: NOW,
        after_change=lambda: None,
        wall=lambda: WALL,
    )
    check = await console.check_configuration()
    assert not check.valid and "not started from a file" in check.problems[0]
    assert not (await console.reload_configuration()).valid
    provider = console.provider()
    assert not provider.up and provider.state == "not connected yet" and provider.connects == 0


async def test_a_reload_takes_up_every_trunks_certificates(site: Site) -> None:
    # The other trunks' links hold TLS material of their own: `gateway reload` takes it up as
    # SIGHUP does, and a trunk whose files do not load is the reload's certificate error.
    asked: list[str] = []
    answers = iter([None, "trunk b: gateway.key: no such file"])

    def other_trunks(reason: str) -> str | None:
        asked.append(reason)
        return next(answers)

    site.console.certificate_hooks.append(other_trunks)
    reloaded = await site.console.reload_configuration()
    assert reloaded.applied == ("certificates", "trunk certificates") and reloaded.ok
    failed = await site.console.reload_configuration()
    assert failed.applied == ("certificates",)
    assert failed.certificate_error == "trunk b: gateway.key: no such file" and not failed.ok
    assert asked == ["configuration reload", "configuration reload"]
