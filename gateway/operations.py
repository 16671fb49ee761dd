"""The two seams between a running gateway and whoever watches or steers it.

:class:`StatusView` is what the admin surface, the metrics, the call records and the demo may
read: active calls with their state, parties, times and suite; registrations; bans; the
provider link; certificates; the media workers and their counters; counters of the core, the
policy engine and the call records; the per-call SIP ladders. Every answer is a plain value
or a frozen record, in Unix time, built afresh for each question: nothing handed out is a live
object of a core, so no reader can change a core by accident or come to depend on its
internals.

:class:`Operations` is what an operator may do to a running gateway: lift a ban, lift the
spike lock, reload certificates, check the configuration file, reload it. Each returns a
result record; an ordinary failure (no such ban, a broken file, a certificate that does not
load) is an answer, not an exception.

The composition root implements both (``gateway.console.OperatorConsole``); this module holds
only the vocabulary, so that ``gateway.admin`` can import it without importing the cores.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.limits import ALL_LIMITS
from gateway.media.control import StreamCounters
from gateway.media.loop import MediaLoop
from gateway.sip.call_events import CallEvent

__all__ = [
    "DROP_FIELDS",
    "LIMIT_COUNTERS",
    "PACKET_FIELDS",
    "BanLift",
    "BanStatus",
    "CallLadderView",
    "CallRecordStats",
    "CallStatus",
    "CertificateReload",
    "CertificateStatus",
    "ConfigCheck",
    "ConfigReload",
    "LadderCall",
    "LadderMessage",
    "MediaLoop",
    "MediaReading",
    "MediaWorkerStatus",
    "Operations",
    "PhoneStatus",
    "ProviderStatus",
    "RegistrationStatus",
    "SpikeLockLift",
    "StatusView",
    "TlsStatus",
    "stream_totals",
]

#: The counters of the [limits] limits, as ``StatusView.sip_counters`` reports them (a limit
#: never hit is absent there, and shown as 0 on /metrics).
LIMIT_COUNTERS: tuple[str, ...] = ALL_LIMITS

# --------------------------------------------------------------------------- media counters

#: Counter fields summed over a call's streams (into its record, into metrics totals).
PACKET_FIELDS = (
    "lan_in_packets",
    "lan_in_bytes",
    "wan_out_packets",
    "wan_in_packets",
    "wan_in_bytes",
    "lan_out_packets",
)
#: Drop counters and the label each has in records and metrics.
DROP_FIELDS = {
    "drop_auth": "auth",
    "drop_replay": "replay",
    "drop_wrong_source": "wrong_source",
    "drop_no_peer": "no_session",
    "drop_plain_rtcp": "plain_rtcp",
    "drop_malformed": "malformed",
    "drop_ssrc": "ssrc",
    # DTLS records from anyone but the provider's signalled address (a stranger's handshake).
    "dtls_wrong_source": "dtls_wrong_source",
    # RTCP of a DTLS-keyed WAN side without rtcp-mux: not carried (gateway/media/dtls_streams.py).
    "drop_rtcp_unkeyed": "rtcp_unkeyed",
}


def stream_totals(streams: Iterable[StreamCounters]) -> dict[str, int]:
    """Packet, byte and drop counters summed over streams, keyed by StreamCounters field."""
    totals = dict.fromkeys((*PACKET_FIELDS, *DROP_FIELDS), 0)
    for counters in streams:
        for name in totals:
            totals[name] += int(getattr(counters, name))
    return totals


# --------------------------------------------------------------------------- status records


@dataclass(frozen=True, slots=True)
class CallStatus:
    """One active call (an INVITE dialog pair) as the operator sees it."""

    #: The caller leg's Call-ID (the one the originator knows).
    call_id: str
    #: The core's key of the call.
    pair: str
    #: "calling", "early" or "confirmed".
    state: str
    #: "lan": a phone's call out; "wan": the provider's call in.
    caller_side: str
    #: User parts: who called whom, as the caller named them.
    caller: str | None
    callee: str | None
    #: Signalling addresses ("host:port") of the phone's and of the provider's leg.
    phone: str | None
    provider: str | None
    #: Unix times of the call's start and of its answer (None until answered).
    started: float
    answered: float | None
    #: The SRTP suite agreed on the WAN leg (None before the answer or under the downgrade;
    #: for DTLS-SRTP, until the handshake agreed it).
    suite: str | None
    plaintext_downgrade: bool
    #: How the WAN leg's SRTP is keyed: "sdes", "dtls", or None (no secured media).
    keying: str | None = None

    @property
    def direction(self) -> str:
        return "outbound" if self.caller_side == "lan" else "inbound"

    @property
    def encryption(self) -> str:
        """One of srtp, plaintext-downgrade, pending (no answer: nothing crossed the WAN)."""
        if self.plaintext_downgrade:
            return "plaintext-downgrade"
        return "srtp" if self.suite is not None else "pending"


@dataclass(frozen=True, slots=True)
class RegistrationStatus:
    """A phone contact registered through the gateway (never its credentials or token)."""

    user: str
    aor: str
    contact: str
    address: tuple[str, int]
    transport: str
    user_agent: str | None
    active: bool
    #: Seconds until the provider's binding lapses (None: no answer from the provider yet).
    expires_in: float | None


@dataclass(frozen=True, slots=True)
class PhoneStatus:
    """A phone of the inventory (gateway/inventory.py): what its User-Agent says it is, where
    and when it was seen, and whether its firmware is below the operator's minimum."""

    #: "user@ip": one entry per extension per host.
    key: str
    user: str
    #: "ip:port" it last signalled from, and over which transport.
    address: str
    transport: str
    user_agent: str
    #: "unknown" when the User-Agent matched no known phone (then model and firmware are None).
    vendor: str
    model: str | None
    firmware: str | None
    #: Unix times it was first and last seen (a registration or a call).
    first_seen: float
    last_seen: float
    #: The provider holds its registration now.
    registered: bool
    #: [inventory] minimum_firmware for its model (None: none set) and whether it is below.
    minimum_firmware: str | None
    outdated: bool


@dataclass(frozen=True, slots=True)
class BanStatus:
    """A source banned now; times are Unix seconds."""

    address: str
    rule: str
    since: float
    until: float
    seconds_left: float
    offences: int


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """The signalling link to the provider."""

    up: bool
    #: Why it is down, or how it came up.
    state: str
    host: str
    port: int | None
    tls_version: str | None
    tls_cipher: str | None
    peer_certificate_subject: str | None
    connects: int
    plaintext_signalling: bool


@dataclass(frozen=True, slots=True)
class TrunkStatus:
    """One provider trunk: its link and whether new calls may use it."""

    name: str
    host: str
    port: int | None
    #: The verified TLS link is up.
    up: bool
    #: Why it is down, or how it came up.
    state: str
    connects: int


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """One certificate the gateway uses: its own identity (and chain) or a provider anchor."""

    #: "identity", "identity chain" or "provider trust".
    role: str
    file: str
    subject: str
    issuer: str
    not_after: dt.datetime
    seconds_left: float
    days_left: int
    pin: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsStatus:
    """The certificates in service and the state of hot reloads."""

    certificates: tuple[CertificateStatus, ...]
    #: A gateway identity is configured, and (if so) one is loaded now.
    identity_configured: bool
    identity_loaded: bool
    reloads: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class MediaReading:
    """One look at the media workers' live streams ("<pair>/<n>" -> counters)."""

    streams: Mapping[str, StreamCounters]
    #: Why the workers did not answer (then ``streams`` is empty).
    error: str | None = None


@dataclass(frozen=True, slots=True)
class MediaWorkerStatus:
    """One media worker slot (issue 14: a worker that dies is restarted with its calls)."""

    slot: int
    #: None while the slot's worker is down.
    pid: int | None
    #: "running", "restarting" or "failed" (a crash loop: not restarted again).
    state: str
    restarts: int
    #: Calls the last restart re-opened on the new worker / ended; None before any restart.
    last_restored: int | None
    last_lost: int | None
    #: Why the slot is failed (None unless ``state`` is "failed").
    failed: str | None = None


@dataclass(frozen=True, slots=True)
class CallRecordStats:
    """The call-record writer's own counts."""

    written: int
    write_errors: int
    #: Calls between their first event and their record.
    pending: int
    #: The records file (None: records are not written to a file).
    file: str | None


@dataclass(frozen=True, slots=True)
class LadderCall:
    """A call the SIP ladder keeps (``gateway.ladder``): who, which Call-IDs, how it ended."""

    #: The core's key of the call (None: refused before it started).
    pair: str | None
    #: The caller leg's Call-ID, and the one the gateway made for the other leg.
    caller_call_id: str
    callee_call_id: str | None
    #: The same two Call-IDs by side: the phone's leg and the provider's leg.
    lan_call_id: str | None
    wan_call_id: str | None
    #: "lan": a phone's call out; "wan": the provider's call in (None: not known).
    from_side: str | None
    method: str | None
    caller: str | None
    callee: str | None
    #: Unix times of the first message and of the call's end (None: still going).
    started: float
    ended: float | None
    #: The kind of event that ended it ("ended", "failed", "refused" ...).
    outcome: str | None
    #: Messages kept, and messages seen but not kept (over the per-call or memory bound).
    messages: int
    dropped: int


@dataclass(frozen=True, slots=True)
class LadderMessage:
    """One SIP message of a call as the gateway received or sent it, secrets redacted."""

    #: Unix time.
    time: float
    #: "lan" or "wan"; "in" (received by the gateway) or "out" (sent by it).
    side: str
    direction: str
    transport: str
    #: The far end's "host:port".
    peer: str
    call_id: str
    #: Request or status line.
    first_line: str
    #: Via, From, To, Call-ID, CSeq, Contact, Warning, Reason ... in message order.
    headers: tuple[tuple[str, str], ...]
    #: The whole message, redacted (credentials, nonces, SDES keys).
    text: str
    #: The text was cut at the per-message bound.
    truncated: bool


@dataclass(frozen=True, slots=True)
class CallLadderView:
    """Both legs' messages of one call, in time order."""

    call: LadderCall
    messages: tuple[LadderMessage, ...]


# --------------------------------------------------------------------------- operation results


@dataclass(frozen=True, slots=True)
class BanLift:
    address: str
    #: False: no active ban on that address (or not an address at all).
    lifted: bool


@dataclass(frozen=True, slots=True)
class SpikeLockLift:
    #: False: outbound calling was not locked.
    lifted: bool


@dataclass(frozen=True, slots=True)
class CertificateReload:
    reloaded: bool
    #: Why not (the certificates in service stay in service).
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ConfigCheck:
    """The configuration file as it is on disk now, checked against the running one."""

    file: str | None
    valid: bool
    #: Each problem names the file, line and field.
    problems: tuple[str, ...] = ()
    #: Tables that differ from the running configuration and take effect only at a restart.
    restart_needed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigReload:
    """A reload: a bad file changes nothing; a good one applies what can change live."""

    valid: bool
    applied: tuple[str, ...] = ()
    certificate_error: str | None = None
    restart_needed: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.valid and self.certificate_error is None


# --------------------------------------------------------------------------- the two seams


class StatusView(Protocol):
    """What may be read of a running gateway; no method changes anything it reports."""

    @property
    def started_at(self) -> float:
        """Unix time the gateway started."""
        ...

    def accepting_calls(self) -> bool:
        """False while draining for a stop."""
        ...

    def calls(self) -> list[CallStatus]:
        """Active calls, oldest first."""
        ...

    def registrations(self) -> list[RegistrationStatus]: ...

    def phones(self) -> list[PhoneStatus]:
        """The phone inventory: every phone that registered or called, by user then address."""
        ...

    def bans(self) -> list[BanStatus]:
        """Active bans, soonest to expire first."""
        ...

    def spike_locked(self) -> bool: ...

    def provider(self) -> ProviderStatus: ...

    def trunks(self) -> list[TrunkStatus]:
        """Every provider trunk in order (one for a site with only [wan])."""
        ...

    def tls(self) -> TlsStatus: ...

    def media_workers(self) -> list[int | None]:
        """The pid of each media worker slot (None: the slot's worker is down)."""
        ...

    def media_worker_states(self) -> list[MediaWorkerStatus]:
        """Each media worker slot's state, restarts and last restart's calls restored/lost."""
        ...

    def media_calls_restored(self) -> int:
        """Calls carried over to a restarted media worker since the gateway started."""
        ...

    def media_loop(self) -> MediaLoop:
        """Which packet loop the media workers run (C fast path or Python) and why."""
        ...

    async def media_streams(self) -> MediaReading:
        """The live streams' counters; never raises (a failure is in ``error``)."""
        ...

    def on_media_closed(
        self, listener: Callable[[str, Mapping[str, StreamCounters]], None]
    ) -> None:
        """Call ``listener(pair, streams)`` with the last counters of every call that ends."""
        ...

    def sip_counters(self) -> dict[str, int]:
        """Signalling events counted by the core (malformed, rejected, refused ...)."""
        ...

    def policy_counters(self) -> dict[str, int]:
        """Policy events, "<action>.<rule>" -> n."""
        ...

    def core_sizes(self) -> dict[str, int]:
        """State the signalling core holds now, by kind (dialog pairs, transactions, relays,
        armed timers, registrations, media port pairs in use): flat under steady churn."""
        ...

    def call_record_stats(self) -> CallRecordStats: ...

    def call_records(
        self, *, limit: int, match: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """Finished calls' records, newest first (reads files: run it off the event loop)."""
        ...

    def recent_call_events(self) -> Sequence[CallEvent]:
        """The latest call events, oldest first (a bounded window)."""
        ...

    def call_ladder(self, ref: str) -> CallLadderView | None:
        """The SIP ladder of a kept call, by its key or either leg's Call-ID."""
        ...

    def ladder_calls(self) -> list[LadderCall]:
        """The calls whose ladders are kept (active and the last finished), newest first."""
        ...


class Operations(Protocol):
    """What an operator may do to a running gateway; ordinary failures are results."""

    def lift_ban(self, address: str) -> BanLift: ...

    def lift_spike_lock(self) -> SpikeLockLift: ...

    def reload_certificates(self, reason: str) -> CertificateReload: ...

    async def check_configuration(self) -> ConfigCheck: ...

    async def reload_configuration(self) -> ConfigReload: ...
