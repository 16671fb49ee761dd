"""Composition root: builds the sans-IO cores and wires them to sockets, TLS and media workers.

Everything protocol-shaped lives in the cores (``gateway.sip.b2bua``, ``gateway.sdp``,
``gateway.media.relay``); this module only moves bytes and time between them and the outside,
in the aioquic manner: feed an input with ``loop.time()``, perform the actions the core asks
for, re-arm the single timer the core reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.admin.observe import Observatory
from gateway.ban_file import BanFileSync
from gateway.cdr import CallRecorder, RecordFile
from gateway.config import GatewayConfig, insecure_settings
from gateway.console import OperatorConsole
from gateway.limits import MAX_MESSAGE_BYTES, ConnectionLimiter, LimitCounters
from gateway.logsetup import configure_logging
from gateway.media.control import CloseCall, OpenStream, StreamCounters, UpdateStream
from gateway.media.controller import MediaController, MediaError
from gateway.media.dtls_identity import DtlsIdentity
from gateway.operations import TrunkStatus
from gateway.policy import PolicyEngine, encode_line
from gateway.policy.events import SecurityEvent
from gateway.sdp.negotiation import MediaPolicy
from gateway.service import ServiceNotifier
from gateway.shield_store import ShieldFileError, save_last_used
from gateway.shield_store import build_settings as shield_settings
from gateway.shield_store import phone_secrets as shield_phone_secrets
from gateway.sip.actions import CallEvent, MediaCommand, SecurityNotice, SendMessage
from gateway.sip.b2bua import B2bua, EdgeSettings
from gateway.sip.call_events import CallRefused, MalformedMessage, PlaintextDowngrade
from gateway.sip.early_drop import droppable_when_banned
from gateway.sip.errors import SipParseError
from gateway.sip.limits import SipLimits
from gateway.sip.message import SipRequest, SipResponse
from gateway.sip.peer import Peer, Side
from gateway.sip.transaction import TimerSettings
from gateway.state.keeper import StateKeeper
from gateway.state.redis_state import RedisState, local_state_status
from gateway.transport.listener import StreamListener
from gateway.transport.provider import ProviderLink
from gateway.transport.stream import SipStreamConnection
from gateway.transport.tls_listener import rotating_server_context
from gateway.transport.udp import SipUdpEndpoint, open_udp
from gateway.trunk_links import TrunkLinks, core_trunks

__all__ = ["Counters", "Gateway", "configure_logging"]

log = logging.getLogger("gateway")
events_log = logging.getLogger("gateway.events")
security_log = logging.getLogger("gateway.security")

#: Core counter of datagrams from banned LAN sources dropped before parsing.
BANNED_UNPARSED = "policy_dropped_unparsed_lan"

#: How long readiness waits for every trunk's first connection attempt to end (up or failed):
#: a site whose provider is down at boot is still ready, for registrations and to answer its
#: phones 503 with the reason, while the link keeps retrying by itself.
PROVIDER_FIRST_TRY_S = 15.0


@dataclass
class Counters:
    """Glue-level counters (the cores keep their own)."""

    sent_wan_dropped_no_connection: int = 0
    #: TCP phones whose connection was gone and had to be reached on a new one.
    lan_reconnects: int = 0
    listener_refused: int = 0


class Gateway:
    """A running gateway: LAN listeners, the provider link, media workers and the B2BUA core."""

    def __init__(self, config: GatewayConfig, *, workers: int | None = None) -> None:
        self.config = config
        wan, lan = config.wan, config.lan
        self._insecure = insecure_settings(config)
        #: DTLS-SRTP certificate: its fingerprint goes into SDP, the workers handshake with it.
        self.dtls_identity = DtlsIdentity()
        media = MediaPolicy(
            lan_address=lan.media_address,
            wan_address=wan.media_address,
            suites=wan.suites,
            allow_plaintext=wan.insecure_plaintext_media,
            offer_rtcp_mux=wan.rtcp_mux,
            keying=wan.keying,
            dtls_fingerprint=lambda: ("sha-256", self.dtls_identity.fingerprint()),
        )
        trunks, routes = core_trunks(config, media)
        self.settings = EdgeSettings(
            lan_address=lan.sip_address,
            lan_port=lan.sip_port,
            wan_address=wan.sip_address,
            wan_port=wan.listen_port or 5061,
            provider=None,
            domain="",
            media=media,
            lan_media_ports=lan.media_ports,
            wan_media_ports=wan.media_ports,
            timers=TimerSettings(config.sip.t1, config.sip.t2, config.sip.t4),
            user_agent=config.sip.user_agent,
            default_expires=config.sip.default_expires,
            trunks=trunks,
            routes=routes,
            limits=SipLimits(
                max_message_bytes=config.limits.max_message_bytes,
                max_header_bytes=config.limits.max_header_bytes,
                max_headers=config.limits.max_headers,
                max_calls=config.limits.max_calls,
                max_dialogs=config.limits.max_dialogs,
                max_registrations=config.limits.max_registrations,
            ),
        )
        #: How often each [limits] limit enforced here in the glue was hit.
        self.limit_counters = LimitCounters()
        #: One verified link per trunk; the first trunk's TLS material is the gateway's.
        self.trunk_links = TrunkLinks(config, trunks)
        self.policy = PolicyEngine(config.policy)
        # [shield] on: its files are loaded now, and a problem with them stops the start.
        self.core = B2bua(self.settings, policy=self.policy, shield=shield_settings(config))
        self._shield_saved: dict[str, float] = {}
        self.ban_file = BanFileSync(Path(config.state.directory) / "bans.json")
        #: Registrations and caps' totals kept across a restart (gateway/state/).
        self.state = StateKeeper(config.state)
        #: [state] redis_url: the state in Redis too, and bans shared with every site on it.
        self.redis: RedisState | None = None
        if config.state.redis_url is not None:
            self.redis = RedisState(config.state)
            self.state = StateKeeper(config.state, store=self.redis.store)
        self.counters = Counters()
        self.media = MediaController(
            lan_address=lan.media_address,
            wan_address=wan.media_address,
            workers=workers if workers is not None else (config.media.workers or None),
            inactivity_timeout=config.media.inactivity_timeout,
            dscp=config.media.dscp,
            keep_core_awake=config.media.keep_core_awake,
            pin_workers=config.media.pin_workers,
            realtime_priority=config.media.realtime_priority,
            restart_limit=config.media.restart_limit,
            restart_window=config.media.restart_window,
            on_idle=self._on_media_idle,
            on_worker_lost=self._on_worker_lost,
            dtls_identity=self.dtls_identity,
            on_dtls_failed=self._on_dtls_failed,
            on_dtls_keyed=self._on_dtls_keyed,
        )
        self._udp: SipUdpEndpoint | None = None
        self._servers: list[asyncio.Server] = []
        self._listeners: list[StreamListener] = []
        self._lan_streams: dict[int, SipStreamConnection] = {}
        self._wan_streams: dict[int, SipStreamConnection] = {}
        self.provider: ProviderLink | None = None
        # uvloop's call_at returns a plain Handle (no when()) for a deadline due within a
        # millisecond, so the deadline a timer was armed for is kept beside it.
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._media_tasks: set[asyncio.Task[None]] = set()
        self.wan_state = (False, "not connected yet")
        #: Each trunk's link: (up, reason).
        self.trunk_states: dict[str, tuple[bool, str]] = {}
        #: Set once every trunk's link has reported its first attempt (readiness waits on it).
        self._trunks_tried = asyncio.Event()
        self.tls = self.trunk_links.first.tls
        self._background: list[asyncio.Task[None]] = []
        # Operator surface: recent security events and call counts, call detail records.
        self.observatory = Observatory()
        admin = config.admin
        cdr_path = Path(config.state.directory) / admin.cdr_file
        self.cdr = CallRecorder(
            RecordFile(cdr_path, max_bytes=admin.cdr_max_bytes, keep=admin.cdr_keep),
            locate=lambda key: self.console.call_location(key),
        )
        #: What operators may read and do (admin surface, demo): the only reader of the cores.
        self.console = OperatorConsole(
            config=config,
            core=self.core,
            policy=self.policy,
            media=self.media,
            tls=self.tls,
            cdr=self.cdr,
            provider=lambda: self.provider,
            wan_state=lambda: self.wan_state,
            clock=self._clock,
            after_change=self._flush,
            keep_ladders=config.admin.ladder_calls,
            trunks=self._trunk_status,
            limit_counters=self.limit_counters.snapshot,
        )
        # `gateway reload` re-reads the shield's phones file (add-phone/remove take effect).
        self.console.reload_hooks.append(self._reload_shield_phones)
        if len(self.trunk_links.links) > 1:
            # The first trunk's material is the console's own; `gateway reload` takes up the
            # others' as SIGHUP does.
            self.console.certificate_hooks.append(self.trunk_links.reload)
        #: Both legs' SIP of recent calls, redacted, for the operator (TLS hides the WAN leg).
        self.ladder = self.console.ladder
        self.admin: Any = None  # gateway.admin.server.AdminServer when [admin] is enabled
        self.control: Any = None  # gateway.control.ControlServer: the local control socket

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for name in self._insecure:
            log.warning("INSECURE SETTING ACTIVE: %s", name)
        self.trunk_links.load()
        self.ban_file.restore(self.policy, self._now(), time.time())
        # Before any listener opens and before the provider link: the registrar registers
        # the restored bindings again when the link comes up.
        if self.redis is not None:  # this site's state from Redis, bounded by its timeout
            await self.redis.start(self.policy, self._now, self._flush)
        self._restore_state()
        await self.media.start()
        # A stats round trip proves every worker's loop is up before the first call.
        await self.media.wait_running()
        await self.media.stats()
        media_loop = self.console.media_loop()
        log.log(
            logging.INFO if media_loop.engine == "c" else logging.WARNING,
            "media loop: %s",
            media_loop.describe(),
        )
        await self.open_network()
        self._background.append(self._loop.create_task(self._watch_certificates()))
        if self.config.admin.enabled:
            from gateway.admin.server import AdminServer  # aiohttp only when it is wanted

            self.admin = AdminServer(
                self.config.admin,
                status=self.console,
                operations=self.console,
                observatory=self.observatory,
                limits=self.config.limits,
                limit_counters=self.limit_counters,
                on_security=self._security_event,
            )
            await self.admin.start()
        from gateway.control import ControlServer

        self.control = ControlServer(
            self.config,
            status=self.console,
            operations=self.console,
            sampler=self.admin.sampler if self.admin is not None else None,
            state=self._state_status,
            routes=getattr(self, "control_routes", None),  # gateway/ha/: `gateway ha`
            limit_counters=self.limit_counters,
        )
        await self.control.start()
        lan = self.config.lan
        log.info(
            "gateway started: LAN %s:%d (%s), trunks %s over %s",
            lan.sip_address,
            lan.sip_port,
            "+".join(lan.transports),
            ", ".join(
                f"{t.name}={t.provider_host}:{t.provider_port or 'SRV'}"
                for t in self.config.effective_trunks()
            ),
            self.settings.registrar_peer.transport.upper(),
        )

    def _restore_state(self) -> None:
        self.state.restore(self.core.registrations, self.policy, self._now(), time.time())

    async def open_network(self) -> None:
        """LAN and WAN listeners, provider links, state saving (an HA standby: at promotion)."""
        assert self._loop is not None
        lan = self.config.lan
        if "udp" in lan.transports:
            self._udp = await open_udp(
                lan.sip_address,
                lan.sip_port,
                self._on_lan_datagram,
                self.config.limits.max_message_bytes,
                lambda: self.limit_counters.hit(MAX_MESSAGE_BYTES),
            )
        if "tcp" in lan.transports:
            await self._listen("lan-tcp", Side.LAN, lan.sip_address, lan.sip_port, None)
        wan = self.config.wan
        if wan.listen_port is not None:
            context = rotating_server_context(lambda: self.tls.server_context)
            await self._listen("wan-tls", Side.WAN, wan.sip_address, wan.listen_port, context)
        self.trunk_links.start(lambda: self._new_stream(Side.WAN), self._on_provider_state)
        self.provider = self.trunk_links.first.link
        self._background.append(self._loop.create_task(self._keep_state()))

    def _state_status(self) -> dict[str, Any]:
        """``gateway state status``: Redis, or the local folder alone."""
        if self.redis is not None:
            return self.redis.status()
        return local_state_status(self.config.state)

    def _trunk_status(self) -> list[TrunkStatus]:
        found = []
        for t in self.trunk_links.links:
            up, state = self.trunk_states.get(t.trunk.name, (False, "not connected yet"))
            link = t.link
            connects = link.connects if link is not None else 0
            host, port = t.settings.provider_host, t.settings.provider_port
            found.append(TrunkStatus(t.trunk.name, host, port, up, state, connects))
        return found

    def reload_certificates(self, reason: str) -> str | None:
        """SIGHUP: load, validate, swap; None on success, else why not."""
        error = self.console.reload_certificates(reason).error
        return error or self.trunk_links.reload(reason)

    async def _watch_certificates(self) -> None:
        """Take up rotated files by themselves; warn as expiry approaches."""
        ticks = 0
        while True:
            await asyncio.sleep(2.0)
            self.trunk_links.poll()
            self._save_shield_use()
            if self.ban_file.follow(self.policy, self._now()):
                self._flush()  # the lifts' security events
            if ticks % 1800 == 0:  # hourly is plenty for day-granular warnings
                self.trunk_links.check_expiry()
                self.media.renew_dtls_identity()
            ticks += 1

    async def _keep_state(self) -> None:
        """Save changed site state, coalesced: at most one write per kind and interval."""
        while True:
            await asyncio.sleep(self.config.state.save_interval)
            self.state.save(self.core.registrations, self.policy, self._now())

    def _reload_shield_phones(self, new: GatewayConfig) -> str | None:
        """The phones file as it is now, for the running shield (its [shield] table itself
        changes only at a restart: the reload says so)."""
        shield = self.core.shield
        if shield is None or not new.shield.enabled:
            return None
        try:
            secrets = shield_phone_secrets(self.config)
        except ShieldFileError as exc:
            log.warning("shield phones not reloaded, the previous ones stay: %s", exc)
            return None
        shield.set_phone_secrets(secrets)
        return "shield phones"

    def _save_shield_use(self) -> None:
        """When each phone last proved its shield secret, for ``gateway shield list``."""
        shield = self.core.shield
        if shield is None or shield.last_used == self._shield_saved:
            return
        self._shield_saved = dict(shield.last_used)
        offset = time.time() - self._now()
        used = {user: at + offset for user, at in self._shield_saved.items()}
        try:
            save_last_used(Path(self.config.state.directory), used)
        except OSError as exc:
            log.warning("cannot record shield use: %s", exc)

    async def stop(self, drain: float = 0.0) -> None:
        """Stop taking calls, let active ones finish for ``drain`` seconds, then end them."""
        self.core.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain
        while self.core.active_calls and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if self.core.active_calls:
            self.core.hang_up_all(loop.time(), self._wall(), "gateway shutting down")
            self._flush()
            await asyncio.sleep(0.2)  # let the BYEs reach the transports
        for task in self._background:
            task.cancel()
        for server in self._servers:
            server.close()
        for listener in self._listeners:
            listener.close()
        await self.trunk_links.stop()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        for conn in list(self._lan_streams.values()) + list(self._wan_streams.values()):
            conn.close("gateway stopping")
        if self._timer is not None:
            self._timer.cancel()
        await self.media.stop()
        self.cdr.flush(time.time())
        # After the calls ended: their minutes are in the caps' totals saved here.
        self.state.save(self.core.registrations, self.policy, loop.time())
        if self.redis is not None:
            await self.redis.stop()
        if self.control is not None:  # last, with admin: operators watch the drain
            await self.control.stop()
        if self.admin is not None:  # last: operators watch the drain through it
            await self.admin.stop()

    async def run_forever(self, drain: float = 5.0) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully; under systemd, say when the
        gateway is ready, reloading and stopping, and feed the watchdog (gateway.service)."""
        # Before start(): the media workers inherit the environment and must not see it.
        service = ServiceNotifier.from_environment()
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_for_manager, service)
        watchdog = loop.create_task(service.watchdog())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._trunks_tried.wait(), PROVIDER_FIRST_TRY_S)
        service.ready(self._service_status())
        await stop.wait()
        log.info("stopping: draining active calls for up to %.0f s", drain)
        service.stopping(f"stopping: draining active calls for up to {drain:.0f} s")
        await self.stop(drain)
        watchdog.cancel()
        service.close()

    def _reload_for_manager(self, service: ServiceNotifier) -> None:
        service.reloading("reloading certificates (SIGHUP)")
        error = self.reload_certificates("SIGHUP")
        note = f"; certificate reload failed, previous ones in service: {error}" if error else ""
        service.ready(self._service_status() + note)

    def _service_status(self) -> str:
        """One line for `systemctl status`: the LAN side, the trunks, the media loop."""
        lan = self.config.lan
        trunks = ", ".join(
            f"{name} {'up' if up else 'down: ' + why}"
            for name, (up, why) in self.trunk_states.items()
        )
        return (
            f"LAN {lan.sip_address}:{lan.sip_port}; trunks: {trunks or 'still connecting'}; "
            f"media loop: {self.console.media_loop().engine}"
        )

    # ---------------------------------------------------------------- inputs

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    @staticmethod
    def _wall() -> datetime:
        """Local wall-clock time for the core's dial-plan windows (the core reads no clock)."""
        return datetime.now()

    def _clock(self) -> float:
        """The cores' clock, also before start-up (a status asked of a gateway not started)."""
        if self._loop is not None:
            return self._loop.time()
        return time.monotonic()

    def _on_lan_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "recv lan:udp:%s:%d: %s", *addr, data.split(b"\r\n", 1)[0].decode(errors="replace")
            )
        policy = self.core.policy
        if (
            policy is not None
            and policy.banned(addr[0], self._now())
            and droppable_when_banned(data, policy.is_emergency)
        ):
            # Refused after parsing anyway: a banned scanner's flood costs no parse (counted
            # with the core's counters, as the refusals after parsing are).
            counters = self.core.counters
            counters[BANNED_UNPARSED] = counters.get(BANNED_UNPARSED, 0) + 1
            if policy.note_banned_drop(addr[0], self._now()):
                self._flush()  # the operator sees the drops as before (folded security events)
            return
        peer = Peer(Side.LAN, "udp", addr)
        self.ladder.received(peer, data, self._now())
        self.core.receive_datagram(peer, data, self._now(), self._wall())
        self._flush()

    async def _listen(
        self,
        name: str,
        side: Side,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
    ) -> None:
        """A stream listener whose connection limits apply at accept ([limits])."""
        limits = self.config.limits
        limiter = ConnectionLimiter(
            name,
            side.value,
            per_source=limits.connections_per_source,
            total=limits.connections_total,
            counters=self.limit_counters,
        )
        listener = StreamListener(
            limiter,
            lambda: self._new_stream(side, accepted=True),
            self.limit_counters,
            tls=tls,
            tls_handshake_timeout=limits.tls_handshake_timeout,
            on_security=self._security_event,
            allow=self._address_allowed if side == Side.WAN else None,
            on_refused=self._count_listener_refused,
        )
        await listener.start(host, port)
        self._listeners.append(listener)

    def _security_event(self, event: SecurityEvent) -> None:
        security_log.warning(encode_line(event, time.time() - self._now()).decode().rstrip())
        self.observatory.security_event(event, time.time() - self._now())

    def _new_stream(self, side: Side, *, accepted: bool = False) -> SipStreamConnection:
        limits = self.config.limits
        conn = SipStreamConnection(
            on_message=lambda c, m: self._on_stream_message(side, c, m),
            on_error=lambda c, e: self._on_stream_error(side, c, e),
            on_close=lambda c, r: self._on_stream_close(side, c, r),
            idle_timeout=limits.idle_timeout,
            max_message_bytes=limits.max_message_bytes,
            max_header_bytes=limits.max_header_bytes,
            max_headers=limits.max_headers,
            close_if_unused=accepted,
            on_limit=self.limit_counters.hit,
        )
        registry = self._lan_streams if side == Side.LAN else self._wan_streams
        registry[conn.id] = conn
        if accepted:
            conn.accepted = True  # type: ignore[attr-defined]
        return conn

    def _stream_peer(self, side: Side, conn: SipStreamConnection) -> Peer:
        if side == Side.LAN:
            return Peer(Side.LAN, "tcp", conn.peer, conn.id)
        trunk_peer = self.trunk_links.peer_of(conn)
        if trunk_peer is not None:
            # A trunk's link: whichever connection is current carries the dialogs.
            return trunk_peer
        return Peer(Side.WAN, self.settings.registrar_peer.transport, conn.peer, conn.id)

    def _on_stream_message(
        self, side: Side, conn: SipStreamConnection, message: SipRequest | SipResponse
    ) -> None:
        if (
            side == Side.WAN
            and getattr(conn, "accepted", False)
            and not self._listener_allowed(conn)
        ):
            self.counters.listener_refused += 1
            conn.close("not the configured provider")
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("recv %s: %s", self._stream_peer(side, conn), message.start_line())
        peer = self._stream_peer(side, conn)
        self.ladder.received(peer, message, self._now())
        self.core.receive_message(peer, message, self._now(), self._wall())
        self._flush()

    def _count_listener_refused(self) -> None:
        self.counters.listener_refused += 1
        # With the SIP counters on /metrics (gateway_sip_events_total{event=...}).
        self.limit_counters.hit("listener_not_allowed")

    def _listener_allowed(self, conn: SipStreamConnection) -> bool:
        return self._address_allowed(conn.peer[0])

    def _address_allowed(self, source: str) -> bool:
        """The WAN listener serves only the configured provider (by address or allowlist):
        checked at accept, before any TLS, and again at the first message."""
        allow = self.config.wan.listener_allow
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        if allow:
            return any(address in ipaddress.ip_network(c, strict=False) for c in allow)
        hosts = self.trunk_links.provider_addresses() or [
            t.provider_host for t in self.config.effective_trunks()
        ]
        for host in hosts:
            try:
                if address == ipaddress.ip_address(host):
                    return True
            except ValueError:
                continue
        return False

    def _on_stream_error(self, side: Side, conn: SipStreamConnection, error: SipParseError) -> None:
        self.core.receive_invalid(self._stream_peer(side, conn), error, self._now())
        self._flush()

    def _on_stream_close(self, side: Side, conn: SipStreamConnection, reason: str) -> None:
        registry = self._lan_streams if side == Side.LAN else self._wan_streams
        registry.pop(conn.id, None)
        if side == Side.WAN:
            self.trunk_links.connection_closed(conn, reason)

    def _on_provider_state(self, trunk: str, up: bool, reason: str) -> None:
        if up:
            # The providers' own addresses are always allowed on the WAN and never banned.
            self.policy.set_provider_peers(self.trunk_links.provider_addresses())
        if not up and self.trunk_states.get(trunk) != (up, reason):
            named = f" [trunk {trunk}]" if len(self.trunk_links.links) > 1 else ""
            log.error("provider unavailable: %s%s", reason, named)
        self.trunk_states[trunk] = (up, reason)
        if len(self.trunk_states) >= len(self.trunk_links.links):
            self._trunks_tried.set()
        if trunk == self.trunk_links.first.trunk.name:
            self.wan_state = (up, reason)
        self.core.wan_connection_state(up, reason, self._now(), self._wall(), trunk)
        self._flush()

    def _on_media_idle(self, call_key: str) -> None:
        self.core.media_problem(call_key, "no media in either direction", self._now(), self._wall())
        self._flush()

    def _on_dtls_failed(self, call_key: str, reason: str) -> None:
        self.core.media_problem(call_key, f"DTLS-SRTP: {reason}", self._now(), self._wall())
        self._flush()

    def _on_dtls_keyed(self, call_key: str, stream: int, generation: int, suite: str) -> None:
        self.core.media_keyed(call_key, stream, generation, suite, self._now(), self._wall())
        self._flush()

    def _on_worker_lost(self, call_keys: list[str]) -> None:
        for key in call_keys:
            self.core.media_problem(key, "media worker lost", self._now(), self._wall())
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self._now(), self._wall())
        self._flush()

    # --------------------------------------------------------------- outputs

    def _flush(self) -> None:
        """Perform what the core asked for, then re-arm its timer."""
        actions = self.core.actions()
        # Media commands first: the worker must have bound a call's ports before the SIP
        # message that makes the far end start sending (a 200, an ACK) leaves.
        for action in actions:
            if isinstance(action, MediaCommand):
                self._media(action.command)
        for action in actions:
            if isinstance(action, SendMessage):
                self._send(action.peer, action.data)
            elif isinstance(action, MediaCommand):
                continue
            elif isinstance(action, SecurityNotice):
                security_log.warning(
                    encode_line(action.event, time.time() - self._now()).decode().rstrip()
                )
                self.observatory.security_event(action.event, time.time() - self._now())
            else:
                self._record(action)
        if self._loop is not None:
            self.ban_file.save_if_changed(self.policy, self._now(), time.time())
            if self.redis is not None:
                self.redis.bans_changed()
        self.cdr.settle(lambda: (p.key for p in self.core.active_calls), time.time())
        deadline = self.core.get_timer()
        if self._timer is not None and (deadline is None or self._timer_at != deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _send(self, peer: Peer, data: bytes) -> None:
        self.ladder.sent(peer, data, self._now())
        if log.isEnabledFor(logging.DEBUG):
            log.debug("send %s: %s", peer, data.split(b"\r\n", 1)[0].decode(errors="replace"))
        if peer.side == Side.LAN:
            if peer.transport == "udp":
                if self._udp is not None:
                    self._udp.send(data, peer.address)
                return
            conn = self._lan_streams.get(peer.connection or -1)
            if conn is None:
                conn = self._lan_stream_to(peer.address)
            if conn is None:
                self.counters.lan_reconnects += 1
                self._open_lan_stream(peer.address, data)
                return
            conn.write(data)
            return
        # WAN: never over UDP, never to a connection that is not TLS (unless the loud downgrade).
        if peer.connection is not None:
            conn = self._wan_streams.get(peer.connection)
            if conn is not None:
                conn.write(data)
                return
        if not self.trunk_links.send(peer, data):
            self.counters.sent_wan_dropped_no_connection += 1

    def _lan_stream_to(self, address: tuple[str, int]) -> SipStreamConnection | None:
        for conn in self._lan_streams.values():
            if conn.peer == address and not conn.closed:
                return conn
        return None

    def _open_lan_stream(self, address: tuple[str, int], data: bytes) -> None:
        """RFC 3261 §18.2.2: the phone's connection is gone; open one to its address."""

        async def connect() -> None:
            assert self._loop is not None
            try:
                _, conn = await self._loop.create_connection(
                    lambda: self._new_stream(Side.LAN), address[0], address[1]
                )
            except OSError as exc:
                log.warning("cannot reach phone at %s:%d over TCP: %s", *address, exc)
                return
            conn.write(data)

        task = asyncio.get_running_loop().create_task(connect())
        self._media_tasks.add(task)
        task.add_done_callback(self._media_tasks.discard)

    def _media(self, command: OpenStream | UpdateStream | CloseCall) -> None:
        if isinstance(command, CloseCall):
            self.cdr.expect_media(command.call_id)  # its record waits for the last counters
            # Closed now, in order with everything else; its last counters come back with
            # the worker's reply, so the ports are free before any later call can ask.
            closing = self.media.submit_close(command.call_id)

            async def closed() -> None:
                self._log_media_counters(command.call_id, await closing)

            self._spawn(closed())
            return
        try:
            outcome = self.media.submit(command)  # written to the worker now, in order
        except MediaError as exc:
            self._media_failed(command, exc)
            return

        async def perform() -> None:
            try:
                await outcome
            except MediaError as exc:
                self._media_failed(command, exc)

        self._spawn(perform())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._media_tasks.add(task)
        task.add_done_callback(self._media_tasks.discard)

    def _media_failed(self, command: OpenStream | UpdateStream | CloseCall, exc: Exception) -> None:
        log.error("media for %s: %s", command.call_id, exc)
        if not isinstance(command, CloseCall):
            self.core.media_problem(command.call_id, str(exc), self._now(), self._wall())
            self._flush()

    def _log_media_counters(self, call_key: str, stats: dict[str, StreamCounters] | None) -> None:
        """Log one JSON line with a closed call's per-stream counters (counters only, no keys)."""
        self.cdr.media_closed(call_key, stats, time.time())
        if stats is None:
            log.warning("media counters of %s unavailable", call_key)
            return
        prefix = call_key + "/"
        streams = {
            key[len(prefix) :]: {f: getattr(c, f) for f in c.__struct_fields__}
            for key, c in stats.items()
            if key.startswith(prefix)
        }
        record = {
            "time": round(time.time(), 3),
            "event": "media-closed",
            "pair": call_key,
            "streams": streams,
        }
        events_log.info(json.dumps(record))

    def _record(self, event: CallEvent) -> None:
        wall = time.time()
        self.console.note_call_event(event)
        self.ladder.event(event, self._now() if self._loop is not None else None)
        record: dict[str, Any] = {
            "time": round(wall, 3),
            "event": event.kind,
            "call_id": event.call_id,
            **event.fields(),
        }
        loud = isinstance(event, CallRefused | PlaintextDowngrade | MalformedMessage)
        events_log.log(logging.WARNING if loud else logging.INFO, json.dumps(record, default=str))
        self.observatory.call_event(event, wall)
        self.cdr.on_event(event, wall)
