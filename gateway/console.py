"""The running gateway as its operators see it: the one implementation of both seams of
:mod:`gateway.operations` (:class:`~gateway.operations.StatusView` and
:class:`~gateway.operations.Operations`).

This is the only module that reads the cores' state for someone else: the B2BUA core's
``active_calls`` (dialog pairs: ``key``, ``state``, ``method``, ``caller``/``callee`` legs,
``caller_side``, ``started``, ``answered``, ``media``), ``registrations.all()``, ``counters`` and
``accepting_calls``; the policy engine's bans, spike lock and counters; the media controller,
the TLS material, the provider link and the call-record writer. It copies what it reads into
frozen records, converting the cores' monotonic clock into Unix time, so a reader never holds
a live object of a core.

Operations change state only through the owners' own methods, then let the composition root
perform whatever the change produced (``after_change``: security events, the ban file).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from gateway.cdr import CallRecorder, read_records
from gateway.config import GatewayConfig
from gateway.config_files import check_config_file
from gateway.inventory import PhoneInventory
from gateway.ladder import CallLadder
from gateway.media.control import StreamCounters
from gateway.media.controller import MediaError
from gateway.media.loop import MediaLoop, probe_media_loop
from gateway.operations import (
    BanLift,
    BanStatus,
    CallLadderView,
    CallRecordStats,
    CallStatus,
    CertificateReload,
    CertificateStatus,
    ConfigCheck,
    ConfigReload,
    LadderCall,
    MediaReading,
    MediaWorkerStatus,
    PhoneStatus,
    ProviderStatus,
    RegistrationStatus,
    SpikeLockLift,
    TlsStatus,
    TrunkStatus,
)
from gateway.sip.call_events import CallEvent, CallStarted, PhoneRegistered

if TYPE_CHECKING:
    from gateway.certs.runtime import TlsMaterial
    from gateway.media.controller import MediaController
    from gateway.policy import PolicyEngine
    from gateway.transport.provider import ProviderLink

__all__ = ["CoreView", "OperatorConsole"]

#: Configuration tables that take effect only at start-up; a change to them needs a restart.
RESTART_TABLES = (
    "lan", "wan", "sip", "media", "policy", "admin", "log", "state", "certs", "control", "limits",
    "shield",
)  # fmt: skip
#: How long the media workers may take to report their counters.
MEDIA_STATS_TIMEOUT = 3.0


# --------------------------------------------------------------------------- what is read
# Read-only shapes of the core's objects: the attribute names the core keeps for this module.


class _PeerView(Protocol):
    @property
    def address(self) -> tuple[str, int]: ...
    @property
    def transport(self) -> str: ...


class _LegView(Protocol):
    @property
    def call_id(self) -> str: ...
    @property
    def peer(self) -> _PeerView: ...
    @property
    def remote(self) -> object: ...


class _MediaView(Protocol):
    def chosen_suite(self) -> Any: ...
    @property
    def uses_plaintext_downgrade(self) -> bool: ...
    @property
    def keying(self) -> str | None: ...


class _PairView(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def caller(self) -> _LegView: ...
    @property
    def callee(self) -> _LegView: ...
    @property
    def caller_side(self) -> str: ...
    @property
    def started(self) -> float: ...
    @property
    def answered(self) -> float | None: ...
    @property
    def media(self) -> _MediaView | None: ...


class _BindingView(Protocol):
    @property
    def user(self) -> str: ...
    @property
    def aor(self) -> str: ...
    @property
    def phone_contact(self) -> str: ...
    @property
    def phone_peer(self) -> _PeerView: ...
    @property
    def user_agent(self) -> str | None: ...
    @property
    def expires_at(self) -> float: ...
    def active(self, now: float) -> bool: ...


class _RegistrationsView(Protocol):
    def all(self) -> Sequence[_BindingView]: ...


class CoreView(Protocol):
    """What this module reads of the B2BUA core."""

    @property
    def active_calls(self) -> Sequence[_PairView]: ...
    @property
    def registrations(self) -> _RegistrationsView: ...
    @property
    def counters(self) -> Mapping[str, int]: ...
    @property
    def accepting_calls(self) -> bool: ...
    def sizes(self) -> Mapping[str, int]: ...


def _address(peer: _PeerView) -> str:
    return "{}:{}".format(*peer.address)


def _user(leg: _LegView) -> str | None:
    user = getattr(getattr(leg.remote, "uri", None), "user", None)
    return user if isinstance(user, str) else None


def _sides(pair: _PairView) -> tuple[_LegView, _LegView]:
    """(the phone's leg, the provider's leg) of a call."""
    if pair.caller_side == "lan":
        return pair.caller, pair.callee
    return pair.callee, pair.caller


# --------------------------------------------------------------------------- the console


class OperatorConsole:
    """Status and operations of one running gateway, over its parts.

    ``clock`` is the cores' clock (the event loop's), ``wall`` Unix time; ``provider`` and
    ``wan_state`` are asked each time because the link is made at start-up and its state
    moves; ``after_change`` lets the composition root perform what an operation produced.
    """

    def __init__(
        self,
        *,
        config: GatewayConfig,
        core: CoreView,
        policy: PolicyEngine,
        media: MediaController,
        tls: TlsMaterial,
        cdr: CallRecorder,
        provider: Callable[[], ProviderLink | None],
        wan_state: Callable[[], tuple[bool, str]],
        clock: Callable[[], float],
        after_change: Callable[[], None],
        wall: Callable[[], float] = time.time,
        keep_events: int = 1000,
        keep_ladders: int = 50,
        trunks: Callable[[], list[TrunkStatus]] | None = None,
        limit_counters: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self._config = config
        #: The glue's limit counters (listeners, connections), shown with the core's counters.
        self._limit_counters = limit_counters
        self._core = core
        self._policy = policy
        self._media = media
        self._tls = tls
        self._cdr = cdr
        self._provider = provider
        self._wan_state = wan_state
        self._trunks = trunks
        self._clock = clock
        self._after_change = after_change
        self._wall = wall
        self._started_at = wall()
        self._media_loop: MediaLoop | None = None
        self._events: deque[CallEvent] = deque(maxlen=keep_events)
        #: Both legs' SIP messages per call; the composition root feeds it every message it
        #: receives or sends and every call event (``sent``, ``received``, ``event``).
        self.ladder = CallLadder(keep_calls=keep_ladders)
        #: Called with the new configuration on each good reload; each says what it applied
        #: (None: nothing). The composition root adds its own (the shield's phone secrets).
        self.reload_hooks: list[Callable[[GatewayConfig], str | None]] = []
        #: Further TLS material a reload takes up (the other trunks' links): each returns
        #: None or why it could not.
        self.certificate_hooks: list[Callable[[str], str | None]] = []
        #: One of an HA pair (gateway/ha/node.py): role, changes, lag, calls for /metrics.
        self.ha_facts: Callable[[], Mapping[str, Any]] | None = None
        #: Phones seen registering or calling; a source banned now never enters it.
        self._minimums = dict(config.inventory.minimum_firmware)
        self.inventory = PhoneInventory(
            capacity=config.inventory.max_phones,
            minimums=config.inventory.minimum_firmware,
            banned=lambda ip: self._policy.banned(ip, self._clock()),
        )

    # -- fed by the composition root -----------------------------------------------------

    def note_call_event(self, event: CallEvent) -> None:
        """Keep ``event`` in the bounded window ``recent_call_events`` answers from, and
        note the phone a registration or a phone's call came from in the inventory."""
        self._events.append(event)
        match event:
            case PhoneRegistered(phone=str() as where, transport=str() as transport):
                self.inventory.observe(
                    event.user,
                    where,
                    transport,
                    event.user_agent,
                    self._wall(),
                    registered_for=event.expires,
                )
            case CallStarted(from_side="lan", phone=str() as where, transport=str() as transport):
                user = event.caller or "?"
                self.inventory.observe(user, where, transport, event.user_agent, self._wall())

    def call_location(self, pair_key: str) -> tuple[str | None, str | None]:
        """The phone's and the provider's signalling addresses of an active call."""
        for pair in self._core.active_calls:
            if pair.key == pair_key:
                phone, provider = _sides(pair)
                return _address(phone.peer), _address(provider.peer)
        return None, None

    # -- StatusView ----------------------------------------------------------------------

    @property
    def started_at(self) -> float:
        return self._started_at

    def accepting_calls(self) -> bool:
        return bool(self._core.accepting_calls)

    def calls(self) -> list[CallStatus]:
        offset = self._wall() - self._clock()
        rows = []
        for pair in self._core.active_calls:
            known = self._cdr.call_info(pair.key)
            media = pair.media
            suite = media.chosen_suite() if media is not None else None
            phone, provider = _sides(pair)
            started = known.started if known is not None else pair.started + offset
            answered = known.answered if known is not None else None
            if answered is None and pair.answered:
                answered = pair.answered + offset
            rows.append(
                CallStatus(
                    call_id=pair.caller.call_id,
                    pair=pair.key,
                    state=str(pair.state),
                    caller_side=str(pair.caller_side),
                    caller=(known.caller if known is not None else None) or _user(pair.caller),
                    callee=known.callee if known is not None else None,
                    phone=_address(phone.peer),
                    provider=_address(provider.peer),
                    started=started,
                    answered=answered,
                    suite=str(suite.value) if suite is not None else None,
                    plaintext_downgrade=bool(media is not None and media.uses_plaintext_downgrade),
                    keying=media.keying if media is not None else None,
                )
            )
        return rows

    def registrations(self) -> list[RegistrationStatus]:
        now = self._clock()
        rows = [
            RegistrationStatus(
                user=b.user,
                aor=b.aor,
                contact=b.phone_contact,
                address=(str(b.phone_peer.address[0]), int(b.phone_peer.address[1])),
                transport=str(b.phone_peer.transport),
                user_agent=b.user_agent,
                active=b.active(now),
                expires_in=round(max(0.0, b.expires_at - now), 1) if b.expires_at else None,
            )
            for b in self._core.registrations.all()
        ]
        return sorted(rows, key=lambda r: (r.user, r.address))

    def phones(self) -> list[PhoneStatus]:
        wall = self._wall()
        return [
            PhoneStatus(
                key=p.key,
                user=p.user,
                address=p.address,
                transport=p.transport,
                user_agent=p.phone.user_agent,
                vendor=p.phone.vendor,
                model=p.phone.model,
                firmware=p.phone.firmware,
                first_seen=p.first_seen,
                last_seen=p.last_seen,
                registered=p.registered(wall),
                minimum_firmware=p.minimum,
                outdated=p.outdated,
            )
            for p in self.inventory.phones()
        ]

    def bans(self) -> list[BanStatus]:
        now = self._clock()
        offset = self._wall() - now
        return [
            BanStatus(
                address=b.address,
                rule=b.rule,
                since=b.since + offset,
                until=b.until + offset,
                seconds_left=round(max(0.0, b.until - now), 1),
                offences=b.offences,
            )
            for b in self._policy.bans(now)
        ]

    def spike_locked(self) -> bool:
        return self._policy.spike_locked(self._clock())

    def provider(self) -> ProviderStatus:
        link = self._provider()
        up, reason = self._wan_state()
        wan = self._config.wan
        return ProviderStatus(
            up=bool(link is not None and link.up and up),
            state=reason,
            host=wan.provider_host,
            port=wan.provider_port,
            tls_version=link.tls_version if link is not None else None,
            tls_cipher=link.tls_cipher if link is not None else None,
            peer_certificate_subject=link.peer_certificate_subject if link is not None else None,
            connects=link.connects if link is not None else 0,
            plaintext_signalling=wan.insecure_plaintext_signalling,
        )

    def trunks(self) -> list[TrunkStatus]:
        if self._trunks is not None:
            return self._trunks()
        first = self.provider()
        return [
            TrunkStatus("provider", first.host, first.port, first.up, first.state, first.connects)
        ]

    def tls(self) -> TlsStatus:
        from gateway.certs.inspect import common_name, spki_pin
        from gateway.certs.status import trust_status

        now = dt.datetime.now(dt.UTC)
        rows: list[CertificateStatus] = []
        identity = self._tls.identity
        if identity is not None:
            for index, cert in enumerate(identity.chain):
                left = (cert.not_valid_after_utc - now).total_seconds()
                rows.append(
                    CertificateStatus(
                        role="identity" if index == 0 else "identity chain",
                        file=str(identity.cert_path),
                        subject=common_name(cert.subject),
                        issuer=common_name(cert.issuer),
                        not_after=cert.not_valid_after_utc,
                        seconds_left=round(left),
                        days_left=int(left // 86400),
                        pin=spki_pin(cert),
                    )
                )
        trust = self._config.wan.trust
        for row in trust_status(trust.ca_bundle, trust.spki_pins, now=now):
            if row.role != "provider trust" or row.days_left is None:
                continue
            try:
                not_after = dt.datetime.fromisoformat(row.not_after).replace(tzinfo=dt.UTC)
            except ValueError:
                continue
            rows.append(
                CertificateStatus(
                    role=row.role,
                    file=str(row.file),
                    subject=row.subject,
                    issuer=row.issuer,
                    not_after=not_after,
                    seconds_left=round((not_after - now).total_seconds()),
                    days_left=row.days_left,
                    pin=row.pin,
                    problems=tuple(row.problems),
                )
            )
        return TlsStatus(
            certificates=tuple(rows),
            identity_configured=self._config.wan.identity is not None,
            identity_loaded=identity is not None,
            reloads=self._tls.reloads,
            last_error=self._tls.last_error,
        )

    def media_workers(self) -> list[int | None]:
        return list(self._media.worker_pids())

    def media_worker_states(self) -> list[MediaWorkerStatus]:
        return [
            MediaWorkerStatus(
                slot=int(str(row["slot"])),
                pid=row["pid"] if isinstance(row["pid"], int) else None,
                state=str(row["state"]),
                restarts=int(str(row["restarts"])),
                last_restored=_count(row["last_restored"]),
                last_lost=_count(row["last_lost"]),
                failed=str(row["failed"]) if row["failed"] is not None else None,
            )
            for row in self._media.worker_states()
        ]

    def media_calls_restored(self) -> int:
        return self._media.calls_restored

    def media_loop(self) -> MediaLoop:
        # Decided once: the workers decide at their start, with the environment they
        # inherit from this process, and [media] changes only with a restart.
        if self._media_loop is None:
            self._media_loop = probe_media_loop(self._config.media.keep_core_awake)
        return self._media_loop

    async def media_streams(self) -> MediaReading:
        try:
            streams = await asyncio.wait_for(self._media.stats(), MEDIA_STATS_TIMEOUT)
        except (MediaError, TimeoutError) as exc:
            return MediaReading({}, str(exc) or "media workers did not answer")
        return MediaReading(dict(streams))

    def on_media_closed(
        self, listener: Callable[[str, Mapping[str, StreamCounters]], None]
    ) -> None:
        self._cdr.media_listeners.append(listener)

    def sip_counters(self) -> dict[str, int]:
        counters = dict(self._core.counters)
        if self._limit_counters is not None:
            counters.update(self._limit_counters())
        return counters

    def policy_counters(self) -> dict[str, int]:
        return self._policy.counters()

    def core_sizes(self) -> dict[str, int]:
        return dict(self._core.sizes())

    def call_record_stats(self) -> CallRecordStats:
        cdr = self._cdr
        path = str(cdr.file.path) if cdr.file is not None else None
        return CallRecordStats(cdr.written, cdr.write_errors, cdr.pending, path)

    def call_records(
        self, *, limit: int, match: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        if self._cdr.file is None:
            return []
        return read_records(self._cdr.file, limit=limit, match=match)

    def recent_call_events(self) -> Sequence[CallEvent]:
        return tuple(self._events)

    def call_ladder(self, ref: str) -> CallLadderView | None:
        return self.ladder.view(ref, self._wall() - self._clock())

    def ladder_calls(self) -> list[LadderCall]:
        return self.ladder.calls(self._wall() - self._clock())

    # -- Operations ----------------------------------------------------------------------

    def lift_ban(self, address: str) -> BanLift:
        lifted = self._policy.lift_ban(address, self._clock())
        if lifted:
            self._after_change()  # the lift's security event, and the ban file
        return BanLift(address, lifted)

    def lift_spike_lock(self) -> SpikeLockLift:
        lifted = self._policy.lift_spike_lock(self._clock())
        if lifted:
            self._after_change()
        return SpikeLockLift(lifted)

    def reload_certificates(self, reason: str) -> CertificateReload:
        error = self._tls.reload(reason)
        return CertificateReload(error is None, error)

    async def check_configuration(self) -> ConfigCheck:
        new, check = await asyncio.to_thread(self._check_file)
        del new
        return check

    async def reload_configuration(self) -> ConfigReload:
        new, check = await asyncio.to_thread(self._check_file)
        if new is None:
            return ConfigReload(valid=False, problems=check.problems)
        applied = [name for hook in self.reload_hooks if (name := hook(new)) is not None]
        error = None
        if new.inventory.minimum_firmware != self._minimums:
            # Minimum firmware versions only change what is flagged: applied at once.
            self._minimums = dict(new.inventory.minimum_firmware)
            self.inventory.set_minimums(self._minimums)
            applied.append("inventory minimum_firmware")
        if self._config.wan.identity is not None:
            error = self._tls.reload("configuration reload")
            if error is None:
                applied.append("certificates")
        for reload_more in self.certificate_hooks:
            more = reload_more("configuration reload")
            error = error or more
            if more is None:
                applied.append("trunk certificates")
        return ConfigReload(
            valid=True,
            applied=tuple(applied),
            certificate_error=error,
            restart_needed=check.restart_needed,
        )

    def _check_file(self) -> tuple[GatewayConfig | None, ConfigCheck]:
        path = self._config.source_file or None
        if path is None:
            problem = "the gateway was not started from a file: nothing to check"
            return None, ConfigCheck(None, False, (problem,))
        # The checks of `gateway check-config` and of start-up, the files it names included.
        report = check_config_file(path)
        if report.config is None:
            return None, ConfigCheck(path, False, tuple(str(p) for p in report.errors))
        new = report.config
        return new, ConfigCheck(path, True, (), restart_needed(self._config, new))


def restart_needed(running: GatewayConfig, new: GatewayConfig) -> tuple[str, ...]:
    """The start-up-only tables in which ``new`` differs from ``running``."""
    return tuple(t for t in RESTART_TABLES if getattr(running, t) != getattr(new, t))


def _count(value: object) -> int | None:
    return value if isinstance(value, int) else None
