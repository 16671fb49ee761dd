"""The gateway's configuration: one TOML file decoded into typed, frozen msgspec Structs.

Every table forbids unknown keys, so a misspelt option is an error rather than a silently ignored
line. Errors name the file, the line where it can be found, the field path and what was expected;
``gateway check-config`` prints all of them at once (one decode per top-level table, then the
cross-field checks).

Insecure settings are deliberately long and loud (``insecure_...``): a configuration that would
send plaintext SIP or media toward the provider, or skip certificate verification, is refused
unless the operator wrote one of them (docs/design.md §3.1).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from gateway.certs.settings import (
    CertWatchSettings,
    ProviderTrustSettings,
    TlsIdentitySettings,
)
from gateway.config_check import LineLocator, check_document
from gateway.ha.settings import HaSettings, check_ha
from gateway.inventory import InventorySettings, check_inventory
from gateway.limits_settings import DEFAULT_MAX_MESSAGE_BYTES, LimitsSettings, check_limits
from gateway.media.suites import NULL_SUITE_NAMES, SrtpSuite
from gateway.policy.numbering import NumberFormat
from gateway.policy.settings import PolicySettings
from gateway.sdp.dtls import check_keying


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every configuration table: frozen, strict about unknown keys."""


class LanSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The side facing the legacy phones: plain SIP over UDP and TCP, plain RTP."""

    #: Address the SIP listeners bind to, and the address phones are told (Via, Contact).
    sip_address: str = "127.0.0.1"
    sip_port: int = 5060
    #: Listen on UDP and/or TCP.
    transports: tuple[str, ...] = ("udp", "tcp")
    #: Address of the gateway's LAN media ports (what the phone's SDP answer points at).
    media_address: str = "127.0.0.1"
    #: Inclusive range of LAN media ports (even ports for RTP, the next odd one for RTCP).
    media_ports: tuple[int, int] = (40000, 44999)


class WanSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The side facing the provider: SIP over verified TLS, SRTP."""

    #: The provider: a host name (resolved per RFC 3263: NAPTR, SRV, A/AAAA) or an address.
    provider_host: str = "127.0.0.1"
    #: Port; None means "look up SRV records, else 5061".
    provider_port: int | None = 5061
    #: SIP domain used in Request-URIs, To and From toward the provider; defaults to the host.
    domain: str | None = None
    #: Local address for the connection to the provider and for WAN media.
    sip_address: str = "127.0.0.1"
    media_address: str = "127.0.0.1"
    media_ports: tuple[int, int] = (45000, 49999)
    #: Optional TLS listener for providers that open their own connections (trunks).
    listen_port: int | None = None
    #: The gateway's certificate: required for the listener, optional client cert (mutual TLS).
    identity: TlsIdentitySettings | None = None
    trust: ProviderTrustSettings = ProviderTrustSettings()
    #: Addresses (CIDR) allowed to connect to the WAN listener; default: the provider's.
    listener_allow: tuple[str, ...] = ()
    #: RFC 5626 §4.4.1 CRLF keep-alive interval on the provider connection, seconds.
    keepalive_interval: float = 25.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    #: SRTP suites offered and accepted, in the operator's order of preference.
    srtp_suites: tuple[str, ...] = tuple(s.value for s in SrtpSuite)
    rtcp_mux: bool = True
    #: Media keying toward the provider, in order of preference: "sdes" (a=crypto, RFC 4568),
    #: "dtls" (DTLS-SRTP, RFC 5763/5764), or both (["dtls", "sdes"]).
    keying: tuple[str, ...] = ("sdes",)
    #: DOWNGRADE. Lets calls with this provider carry plain RTP. Logged at every call.
    insecure_plaintext_media: bool = False
    #: DOWNGRADE. Lets SIP go to the provider over plain TCP instead of TLS.
    insecure_plaintext_signalling: bool = False
    #: DOWNGRADE. Accepts a provider certificate that does not verify.
    insecure_skip_verify: bool = False
    #: How the dialled number goes to the provider (Request-URI, To): "e164" (+12025550123),
    #: "e164-no-plus", "national" (as dialled inside the country) or "as-dialled".
    number_format: NumberFormat = "e164"
    #: How the caller's number goes (From, P-Asserted-Identity); only full numbers change.
    caller_id_format: NumberFormat = "as-dialled"

    @property
    def sip_domain(self) -> str:
        return self.domain or self.provider_host

    @property
    def suites(self) -> tuple[SrtpSuite, ...]:
        return tuple(SrtpSuite(name) for name in self.srtp_suites)


class TrunkSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One provider trunk ([[trunks]]). The gateway's own WAN side (addresses, media ports,
    listener, certificate) stays in [wan] and is shared by every trunk."""

    #: Short name, used by routes, logs and metrics.
    name: str
    provider_host: str
    provider_port: int | None = 5061
    domain: str | None = None
    trust: ProviderTrustSettings = ProviderTrustSettings()
    #: SRTP suites toward this trunk (default: [wan].srtp_suites).
    srtp_suites: tuple[str, ...] | None = None
    #: Media keying toward this trunk, in order of preference (default: [wan].keying).
    keying: tuple[str, ...] | None = None
    number_format: NumberFormat = "e164"
    caller_id_format: NumberFormat = "as-dialled"
    #: Seconds for the trunk's first response to a call before the next trunk is tried.
    answer_timeout: float = 10.0
    #: Seconds a trunk that failed a call (503, 408, no response) is tried last for new calls.
    down_for: float = 30.0
    #: DOWNGRADES, for this trunk only. Logged at start-up and at every call.
    insecure_plaintext_media: bool = False
    insecure_skip_verify: bool = False

    @property
    def sip_domain(self) -> str:
        return self.domain or self.provider_host


class RouteSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A route ([[routes]]): destinations (prefixes of the normalised number, such as "+44",
    "*9", "reception"; "*" for any) and the trunks to try, in order."""

    destinations: tuple[str, ...]
    trunks: tuple[str, ...]


class SipSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Transaction timers (RFC 3261 §17.1.1.1) and limits."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    #: DEPRECATED: [limits] max_message_bytes. Still read when [limits] does not set it.
    max_message_bytes: int | None = None
    #: Registration expiry the gateway asks for when a phone gives none.
    default_expires: int = 3600
    #: Header value the gateway puts in User-Agent/Server toward both sides.
    user_agent: str = "sip-media-gateway"


class MediaSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The media workers that carry the packet path."""

    #: Worker processes; 0 means one per spare core (at least one).
    workers: int = 0
    #: End a call when no media flowed either way for this long (seconds).
    inactivity_timeout: float = 60.0
    #: DSCP code point for media sockets (46 = EF, RFC 3246).
    dscp: int = 46
    #: Keep each worker's core out of idle while media is dense (more than ~5000 packets/s):
    #: a lowest-priority (SCHED_IDLE) thread spins on the core, so the next packet does not
    #: wait for the core to wake up (1-3 ms on virtual machines). It only uses time the core
    #: would idle, but the core then shows busy and draws more power. Needs the C fast path.
    keep_core_awake: bool = True
    #: Pin worker N to its own core (the (N+1)th allowed core; the first is left to the
    #: signalling process and the system).
    pin_workers: bool = True
    #: SCHED_FIFO priority (1-99) of each worker's packet loop; 0 keeps normal scheduling.
    #: Kernel threads then wait for the worker's idle moments instead of preempting it for
    #: milliseconds; the kernel still keeps 5 % of the core for them (sched_rt_runtime_us).
    #: Needs CAP_SYS_NICE or LimitRTPRIO= in the service unit; without it a warning is logged
    #: and the worker runs normally.
    realtime_priority: int = 0
    #: A media worker that dies is restarted and its calls carried on; one that dies
    #: ``restart_limit`` times within ``restart_window`` seconds is in a crash loop: not
    #: restarted again, its calls ended (docs/high-availability.md).
    restart_limit: int = 3
    restart_window: float = 60.0


class AdminSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The operator's HTTP surface (status API, metrics)."""

    listen: str = "127.0.0.1:8080"
    #: Environment variable that holds the admin API token.
    token_env: str = "GATEWAY_ADMIN_TOKEN"
    enabled: bool = False
    #: Separate "address:port" for /metrics (no token: it holds no secrets); None serves
    #: /metrics on ``listen`` only.
    metrics_listen: str | None = None
    #: Serve the admin surface over TLS with this certificate and key (PEM).
    tls_certificate: str | None = None
    tls_private_key: str | None = None
    #: With TLS: clients presenting a certificate from this CA bundle need no token (mutual
    #: TLS); clients without one still need the token.
    client_ca: str | None = None
    #: Call detail records: one JSON line per finished call; relative to state.directory.
    cdr_file: str = "cdr/calls.jsonl"
    #: Rotate the record file beyond this size, keeping this many old files (.1 is newest).
    cdr_max_bytes: int = 10_000_000
    cdr_keep: int = 10
    #: Calls whose SIP ladder (both legs, redacted) is kept for the API and status page.
    ladder_calls: int = 50


class AuditSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Inputs of ``gateway audit`` that the gateway itself never needs."""

    #: A file with the phones' SIP passwords, one per line (as provisioned at the provider);
    #: read only by the audit, to check them and that the admin token differs from each.
    sip_secrets_file: str | None = None
    #: Words a secret must not contain: the site's name, street, owner, domain.
    personal_words: tuple[str, ...] = ()


class CredentialShieldSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The credential shield (gateway/sip/shield.py): phones authenticate to the gateway with
    LAN-only secrets it generates, and the gateway answers the provider's challenges with the
    trunk credentials it keeps. Off: credentials pass through untouched."""

    enabled: bool = False
    #: The phones' LAN secrets, written by ``gateway shield add-phone`` (TOML, mode 0600);
    #: None: ``shield-phones.toml`` in the [state] folder.
    phones_file: str | None = None
    #: Provider credentials per extension or for the whole trunk (``*``), written by the
    #: operator (TOML, mode 0600; passwords inline or named environment variables).
    credentials_file: str | None = None
    #: The realm of the gateway's challenges to the phones.
    realm: str = "sip-media-gateway"
    #: Digest algorithm of those challenges (legacy phones speak MD5 only).
    algorithm: Literal["MD5", "SHA-256"] = "MD5"
    #: Seconds a nonce is good for; an older one earns stale=true.
    nonce_lifetime: Annotated[float, msgspec.Meta(gt=0)] = 300.0


class LogSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: str = "info"
    #: "auto" (human on a terminal, JSON otherwise), "json" or "text".
    format: str = "auto"


class StateSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Folder for state that survives a restart (bans, call records).
    directory: str = "state"
    # --- Site state kept across a restart (gateway/state/): registrations, caps' totals.
    #: Environment variable holding the 256-bit key (64 hex digits or base64) that seals
    #: credentials in saved state (AES-GCM); unset: credentials are not saved at all.
    key_env: str = "GATEWAY_STATE_KEY"
    #: The previous key during a rotation: saved state sealed with it is still read.
    old_key_env: str = "GATEWAY_STATE_KEY_OLD"
    #: The site's name, bound into every sealed field (state of another site does not open).
    site: str = "default"
    #: Seconds between saves of changed state (changes are coalesced; all is saved at stop).
    save_interval: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    # --- Redis (gateway/state/redis_store.py): state under smg:<site>:<kind>, bans shared by
    # every site on the same Redis. None: the local folder only (a single box).
    #: ``unix:///run/redis/redis.sock``, ``redis://host:6379/0`` or ``rediss://`` (TLS).
    redis_url: str | None = None
    #: Environment variable holding Redis' password (never in this file); None: no AUTH.
    redis_password_env: str | None = None
    #: Seconds a Redis command may take before the link counts as down.
    redis_timeout: Annotated[float, msgspec.Meta(gt=0, le=30)] = 2.0

    def __post_init__(self) -> None:
        url = self.redis_url
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("[state] redis_url must start with redis://, rediss:// or unix://")
        if url is not None and (":" in self.site or self.site == "shared"):
            # Keys are smg:<site>:<kind>; smg:shared: holds what every site shares.
            raise ValueError("[state] site may not contain ':' nor be 'shared' with Redis")


class ControlSettings(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The local control socket of ``gateway status``, ``calls``, ``bans`` ... (no token: the
    socket's file permissions decide who may use it; see gateway/control.py)."""

    enabled: bool = True
    #: The UNIX socket; a relative path is taken from this file's folder. The default is for
    #: the system configuration (/etc/sip-media-gateway): a gateway that cannot create
    #: /run/sip-media-gateway/ listens on ``control.sock`` in the state folder instead, and
    #: says so at start-up; a configuration anywhere else uses that state-folder socket.
    socket: str = "/run/sip-media-gateway/control.sock"
    #: Group that may use the socket (mode 0660); None: the gateway's own group.
    group: str | None = None


class GatewayConfig(_Table, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration file."""

    lan: LanSettings = LanSettings()
    wan: WanSettings = WanSettings()
    sip: SipSettings = SipSettings()
    media: MediaSettings = MediaSettings()
    policy: PolicySettings = PolicySettings()
    certs: CertWatchSettings = CertWatchSettings()
    admin: AdminSettings = AdminSettings()
    audit: AuditSettings = AuditSettings()
    shield: CredentialShieldSettings = CredentialShieldSettings()
    log: LogSettings = LogSettings()
    state: StateSettings = StateSettings()
    control: ControlSettings = ControlSettings()
    limits: LimitsSettings = LimitsSettings()
    #: The phone inventory and its minimum firmware versions (gateway/inventory.py).
    inventory: InventorySettings = InventorySettings()
    #: One gateway of an active/standby pair (gateway/ha/); off: a single box.
    ha: HaSettings = HaSettings()
    #: Several provider trunks; empty: one trunk made of [wan]'s provider settings.
    trunks: tuple[TrunkSettings, ...] = ()
    #: Routes choosing trunks by destination; empty: every trunk, in order, for every call.
    routes: tuple[RouteSettings, ...] = ()
    #: Folder relative paths in this file are resolved against (set by the loader).
    base_dir: str = "."
    #: The file this came from (set by ``load_config``), for the admin API's check and reload.
    source_file: str = ""

    def __post_init__(self) -> None:
        # [sip] max_message_bytes is the deprecated spelling of [limits] max_message_bytes:
        # an old file keeps its value unless [limits] sets one (a conflict is a problem).
        old = self.sip.max_message_bytes
        if old is not None and self.limits.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES:
            limits = msgspec.structs.replace(self.limits, max_message_bytes=old)
            msgspec.structs.force_setattr(self, "limits", limits)

    def effective_trunks(self) -> tuple[TrunkSettings, ...]:
        """The trunks in force: [[trunks]], or the one [wan] describes."""
        if self.trunks:
            return self.trunks
        wan = self.wan
        return (
            TrunkSettings(
                name="provider",
                provider_host=wan.provider_host,
                provider_port=wan.provider_port,
                domain=wan.domain,
                trust=wan.trust,
                srtp_suites=wan.srtp_suites,
                keying=wan.keying,
                number_format=wan.number_format,
                caller_id_format=wan.caller_id_format,
                insecure_plaintext_media=wan.insecure_plaintext_media,
                insecure_skip_verify=wan.insecure_skip_verify,
            ),
        )

    def path(self, relative: str) -> Path:
        """Resolve a path from the file against the file's own folder."""
        p = Path(relative)
        return p if p.is_absolute() else Path(os.path.normpath(Path(self.base_dir) / p))


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[ConfigProblem], config: GatewayConfig | None = None):
        self.problems = problems
        #: What could be decoded, each wrong value at its default (``check-config`` still
        #: opens the files it names); None when nothing could be.
        self.config = config
        super().__init__("\n".join(str(p) for p in problems))


_TABLES: dict[str, Any] = {
    name: info.type
    for name, info in ((f.name, f) for f in msgspec.structs.fields(GatewayConfig))
    if name not in ("base_dir", "source_file")
}

#: The configuration the ``gateway`` commands read when ``--config`` is not given: the layout
#: of deploy/gateway.service (state and certificates under /var/lib/sip-media-gateway/).
DEFAULT_CONFIG_PATH = "/etc/sip-media-gateway/gateway.toml"
#: Environment variable naming another default (a second instance, a lab, a container).
CONFIG_PATH_ENV = "GATEWAY_CONFIG"


def default_config_path() -> str:
    """``$GATEWAY_CONFIG`` when set and not empty, else DEFAULT_CONFIG_PATH."""
    return os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str | Path) -> GatewayConfig:
    """Read, decode and check a configuration file; raise ConfigError listing every problem."""
    file = Path(path)
    name = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(name, None, "(file)", exc.strerror or str(exc))]) from None
    config = parse_config(text, name, base_dir=str(file.resolve().parent))
    return msgspec.structs.replace(config, source_file=str(file.resolve()))


def parse_config(text: str, name: str = "<config>", *, base_dir: str = ".") -> GatewayConfig:
    """Decode TOML text into a GatewayConfig, collecting every problem before raising."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib puts the position in the message only: "... (at line 2, column 12)".
        found = re.search(r"at line (\d+)", str(exc))
        line = int(found.group(1)) if found else None
        raise ConfigError([ConfigProblem(name, line, "(syntax)", str(exc))]) from None
    locate = LineLocator(text)
    # Every key on its own, then the cross-field checks on what was right (wrong values fall
    # back to their defaults), so one run lists every problem of the file.
    tables, pairs = check_document(raw, GatewayConfig, hidden=("base_dir", "source_file"))
    config = _resolve_paths(
        msgspec.convert({**tables, "base_dir": base_dir}, GatewayConfig, strict=True)
    )
    wrong = [field for field, _ in pairs]
    if len(config.trunks) != len(raw.get("trunks") or ()):
        wrong.append("routes")  # a trunk left out: routes naming it are not wrong
    pairs += [
        (field, message)
        for field, message in check(config)
        if not any(_overlaps(field, bad) for bad in wrong)
    ]
    problems = [ConfigProblem(name, locate(field), field, message) for field, message in pairs]
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise ConfigError(problems, config)
    return config


def _overlaps(field: str, wrong: str) -> bool:
    """A cross-field problem about a value already reported wrong (and replaced by its
    default) would only repeat it, or judge the default."""
    return field == wrong or field.startswith(wrong + ".") or wrong.startswith(field + ".")


#: The system configuration's folder, and where its relative ``[state] directory`` and
#: ``[certs] store`` (the defaults "state" and "certs" included) go: /etc is read-only under
#: deploy/gateway.service, /var/lib/sip-media-gateway the one folder it lets the gateway write.
SYSTEM_CONFIG_DIR = "/etc/sip-media-gateway"
SYSTEM_DATA_DIR = "/var/lib/sip-media-gateway"


def data_dir(base_dir: str) -> str:
    """The folder relative state and certificate-store paths are resolved against: the data
    folder for the system configuration, the configuration's own folder for any other (a
    checkout, a test, the demo), so a configuration file means the same wherever it is run
    from and whoever runs it (no environment variable takes part)."""
    return SYSTEM_DATA_DIR if os.path.normpath(base_dir) == SYSTEM_CONFIG_DIR else base_dir


def _resolve_paths(config: GatewayConfig) -> GatewayConfig:
    """Make every file path absolute against the configuration file's own folder, so the
    gateway behaves the same whatever directory it is started from; the state folder and the
    certificate store against :func:`data_dir`."""
    rel = config.path

    def data(value: str) -> str:
        return os.path.normpath(Path(data_dir(config.base_dir)) / value)

    wan = config.wan
    identity = wan.identity
    if identity is not None:
        identity = msgspec.structs.replace(
            identity,
            certificate=str(rel(identity.certificate)),
            private_key=str(rel(identity.private_key)),
            passphrase_file=str(rel(identity.passphrase_file))
            if identity.passphrase_file
            else None,
        )
    trust = wan.trust
    if trust.ca_bundle is not None:
        trust = msgspec.structs.replace(trust, ca_bundle=str(rel(trust.ca_bundle)))
    trunks = tuple(
        msgspec.structs.replace(
            t, trust=msgspec.structs.replace(t.trust, ca_bundle=str(rel(t.trust.ca_bundle)))
        )
        if t.trust.ca_bundle is not None
        else t
        for t in config.trunks
    )
    return msgspec.structs.replace(
        config,
        trunks=trunks,
        wan=msgspec.structs.replace(wan, identity=identity, trust=trust),
        certs=msgspec.structs.replace(config.certs, store=data(config.certs.store)),
        state=msgspec.structs.replace(config.state, directory=data(config.state.directory)),
        admin=msgspec.structs.replace(
            config.admin,
            **{
                name: str(rel(value))
                for name in ("tls_certificate", "tls_private_key", "client_ca")
                if (value := getattr(config.admin, name)) is not None
            },
        ),
    )


def check(config: GatewayConfig) -> list[tuple[str, str]]:
    """Cross-field checks that types alone cannot express; returns (field, message) pairs."""
    problems: list[tuple[str, str]] = []
    wan, lan = config.wan, config.lan
    for field, value in (
        ("lan.sip_address", lan.sip_address),
        ("lan.media_address", lan.media_address),
        ("wan.sip_address", wan.sip_address),
        ("wan.media_address", wan.media_address),
    ):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            problems.append((field, f"expected an IP address, got {value!r}"))
    for field, transports in (("lan.transports", lan.transports),):
        for t in transports:
            if t not in ("udp", "tcp"):
                problems.append((field, f"expected 'udp' or 'tcp', got {t!r}"))
    if not lan.transports:
        problems.append(("lan.transports", "expected at least one of 'udp', 'tcp'"))
    for field, (first, last) in (
        ("lan.media_ports", lan.media_ports),
        ("wan.media_ports", wan.media_ports),
    ):
        if not (1024 <= first < last <= 65535) or last - first < 3:
            problems.append(
                (
                    field,
                    f"expected [first, last], 1024 <= first < last <= 65535, got {first}..{last}",
                )
            )
    if (
        lan.media_address == wan.media_address
        and lan.media_ports[0] <= wan.media_ports[1]
        and wan.media_ports[0] <= lan.media_ports[1]
    ):
        problems.append(("wan.media_ports", "overlaps lan.media_ports on the same address"))
    for port_field, port in (
        ("lan.sip_port", lan.sip_port),
        ("wan.provider_port", wan.provider_port),
        ("wan.listen_port", wan.listen_port),
    ):
        if port is not None and not 1 <= port <= 65535:
            problems.append((port_field, f"expected a port 1..65535, got {port}"))
    if not wan.srtp_suites and not wan.insecure_plaintext_media:
        problems.append(("wan.srtp_suites", "expected at least one SRTP suite"))
    for suite in wan.srtp_suites:
        if suite in NULL_SUITE_NAMES:
            problems.append(
                ("wan.srtp_suites", f"{suite} encrypts nothing and counts as plaintext; remove it")
            )
            continue
        try:
            SrtpSuite.from_name(suite)
        except ValueError as exc:
            problems.append(("wan.srtp_suites", str(exc)))
    if (keying_problem := check_keying(wan.keying)) is not None:
        problems.append(("wan.keying", keying_problem))
    if wan.listen_port is not None and wan.identity is None:
        problems.append(
            ("wan.identity", "the WAN TLS listener needs the gateway's certificate and key")
        )
    for cidr in wan.listener_allow:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(("wan.listener_allow", f"expected CIDR, got {cidr!r}"))
    if config.log.format not in ("auto", "json", "text"):
        problems.append(
            ("log.format", f"expected 'auto', 'json' or 'text', got {config.log.format!r}")
        )
    if config.log.level not in ("debug", "info", "warning", "error"):
        problems.append(
            ("log.level", f"expected debug, info, warning or error, got {config.log.level!r}")
        )
    for timer, seconds in (
        ("sip.t1", config.sip.t1),
        ("sip.t2", config.sip.t2),
        ("sip.t4", config.sip.t4),
    ):
        if seconds <= 0:
            problems.append((timer, f"expected a positive number of seconds, got {seconds}"))
    if config.sip.t2 < config.sip.t1:
        problems.append(("sip.t2", "expected T2 >= T1 (RFC 3261 §17.1.2.2)"))
    if not 0 <= config.media.realtime_priority <= 99:
        problems.append(
            ("media.realtime_priority", f"expected 0..99, got {config.media.realtime_priority}")
        )
    if not 0 <= config.media.dscp <= 63:
        problems.append(("media.dscp", f"expected 0..63, got {config.media.dscp}"))
    problems += _check_admin(config.admin)
    problems += check_limits(config)
    problems += _check_trunks(config)
    problems += check_inventory(config.inventory)
    problems += check_ha(config)
    return problems


def _check_trunks(config: GatewayConfig) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    names = [t.name for t in config.trunks]
    for index, trunk in enumerate(config.trunks):
        where = f"trunks.{index}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", trunk.name):
            problems.append(
                (f"{where}.name", f"expected letters, digits, '-', '_', got {trunk.name!r}")
            )
        if names.count(trunk.name) > 1:
            problems.append((f"{where}.name", f"trunk {trunk.name!r} is named twice"))
        if trunk.answer_timeout <= 0 or trunk.down_for < 0:
            problems.append(
                (f"{where}.answer_timeout", "expected answer_timeout > 0, down_for >= 0")
            )
        if trunk.provider_port is not None and not 1 <= trunk.provider_port <= 65535:
            problems.append(
                (f"{where}.provider_port", f"expected 1..65535, got {trunk.provider_port}")
            )
        for suite in trunk.srtp_suites or ():
            if suite in NULL_SUITE_NAMES:
                problems.append((f"{where}.srtp_suites", f"{suite} encrypts nothing; remove it"))
        if trunk.keying is not None and (keying := check_keying(trunk.keying)) is not None:
            problems.append((f"{where}.keying", keying))
    if config.trunks and config.wan.provider_host != WanSettings().provider_host:
        problems.append(
            (
                "wan.provider_host",
                "with [[trunks]] the provider is set per trunk: move provider_host (and "
                "provider_port, domain, [wan.trust]) into a [[trunks]] entry",
            )
        )
    known = set(names) or {"provider"}
    for index, route in enumerate(config.routes):
        if not route.destinations or not route.trunks:
            problems.append((f"routes.{index}", "expected destinations and trunks, both non-empty"))
        for name in route.trunks:
            if name not in known:
                choices = ", ".join(sorted(known))
                problems.append((f"routes.{index}.trunks", f"no trunk {name!r} (known: {choices})"))
    return problems


def parse_listen(text: str) -> tuple[str, int]:
    """ "127.0.0.1:8080" or "[::1]:8080" as (address, port); port 0 picks a free one."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected address:port, got {text!r}")
    ipaddress.ip_address(host)  # an address, not a name: binding must not depend on DNS
    return host, int(port_text)


def _check_admin(admin: AdminSettings) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for field, value in (
        ("admin.listen", admin.listen),
        ("admin.metrics_listen", admin.metrics_listen),
    ):
        if value is None:
            continue
        try:
            parse_listen(value)
        except ValueError:
            problems.append(
                (field, f"expected an IP address and port (e.g. 127.0.0.1:8080), got {value!r}")
            )
    if (admin.tls_certificate is None) != (admin.tls_private_key is None):
        problems.append(("admin.tls_certificate", "set both tls_certificate and tls_private_key"))
    if admin.client_ca is not None and admin.tls_certificate is None:
        problems.append(("admin.client_ca", "mutual TLS needs tls_certificate and tls_private_key"))
    if admin.cdr_max_bytes < 4096 or admin.cdr_keep < 1:
        problems.append(("admin.cdr_max_bytes", "expected cdr_max_bytes >= 4096 and cdr_keep >= 1"))
    return problems


def insecure_settings(config: GatewayConfig) -> list[str]:
    """The downgrades an operator switched on, for the loud start-up and per-call warnings."""
    wan = config.wan
    found = [
        name
        for name, on in (
            ("wan.insecure_plaintext_media", wan.insecure_plaintext_media),
            ("wan.insecure_plaintext_signalling", wan.insecure_plaintext_signalling),
            ("wan.insecure_skip_verify", wan.insecure_skip_verify),
        )
        if on
    ]
    for trunk in config.trunks:
        for name in ("insecure_plaintext_media", "insecure_skip_verify"):
            if getattr(trunk, name):
                found.append(f"trunks.{trunk.name}.{name}")
    return found
