"""One gateway of an active/standby pair: the composition root's ``Gateway``, started standby.

``gateway run`` with ``[ha] enabled`` builds a :class:`HaGateway`. It starts like any gateway
(state folder, media workers, admin and control socket) but opens no SIP listener, no provider
link and no media stream: it is a standby, reading the active's replica from Redis into a warm
copy (``gateway.ha.replica.WarmCopy``), and tells systemd it is ready as such.

``gateway ha notify master`` (keepalived's notify script) promotes it, in this order: the
replica read once more, registrations and caps restored from Redis (the keeper's restore;
shared bans are already applied), every confirmed call restored in the core and its streams
re-opened by the media workers with their latest checkpoints, then the listeners, the provider
link(s) over TLS and the writer of this node's own replica. keepalived adds the site's
addresses as it notifies: every socket of a pair's gateway binds with IP_FREEBIND
(``gateway.transport.freebind``), so the promotion waits for none of them and traffic flows as
soon as they are here. An active told ``backup``, ``fault`` or ``stop`` (or seeing a newer
active's marker) is fenced: it closes its sockets and media workers at once, sends nothing (no
BYE: the other box carries the calls now), and ends with exit status 75 so
systemd starts it again, as a standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.ha.keepalived import FifoReader, follow_fifo
from gateway.ha.replica import CallWriter, WarmCopy
from gateway.ha.role import Fence, Promote, Role, RoleMachine
from gateway.policy.events import SecurityEvent
from gateway.service import ServiceNotifier, socket_address
from gateway.state.model import CAPS, REGISTRATIONS
from gateway.transport import freebind

__all__ = ["EXIT_FENCED", "HaGateway", "gateway_for"]

log = logging.getLogger("gateway.ha")

#: Exit status of a fenced gateway (EX_TEMPFAIL): systemd's Restart=on-failure restarts it.
EXIT_FENCED = 75
#: Seconds between checks of live calls' media checkpoints (written when they moved).
CHECKPOINT_EVERY = 1.0
#: Calls whose checkpoints are compared per write round (bounds the loop's work per round).
CHECKPOINT_SLICE = 64


def gateway_for(config: GatewayConfig, *, workers: int | None = None) -> Gateway:
    """The gateway ``gateway run`` starts: a single box, or one of a pair."""
    if config.ha.enabled:
        return HaGateway(config, workers=workers)
    return Gateway(config, workers=workers)


class HaGateway(Gateway):
    """A gateway that starts as standby and is promoted or fenced by keepalived's word."""

    def __init__(self, config: GatewayConfig, *, workers: int | None = None) -> None:
        super().__init__(config, workers=workers)
        if self.redis is None:  # check-config refuses this; a direct caller is told too
            raise ValueError("[ha] enabled needs [state] redis_url")
        self.node = config.ha.node or socket.gethostname()
        self.roles = RoleMachine(self.node)
        self.warm = WarmCopy(self.redis.link)
        self.media.freebind = True  # the media workers' stream sockets (IP_FREEBIND)
        self.writer: CallWriter | None = None
        #: The routes `gateway ha` asks (the composition root hands them to the control socket).
        self.control_routes = self._add_routes
        # systemd's socket, read before run_forever hides it from the media workers.
        self._service = ServiceNotifier(socket_address(os.environ.get("NOTIFY_SOCKET")))
        self._promotion: asyncio.Task[None] | None = None
        self._following: asyncio.Task[None] | None = None
        self._checkpoints: dict[str, Any] = {}
        self._checked_at = 0.0
        self._to_check: list[str] = []
        #: The last takeover: calls in the replica, restored, media re-opened, seconds taken.
        self.takeover: dict[str, Any] = {}
        self.console.ha_facts = self.metrics_facts

    # ------------------------------------------------------------- standby

    def _restore_state(self) -> None:
        # A standby restores nothing: the active's registrations move on while it waits,
        # and a copy restored now would carry stale CSeqs upstream after the takeover.
        if self.roles.role is Role.PROMOTING:
            # The caps document's calls that this box takes over go on (counted once, by
            # the caps document: restoring the call then adds no second start).
            self.policy.taking_over = frozenset(self.warm.calls)
            try:
                super()._restore_state()
            finally:
                self.policy.taking_over = frozenset()

    async def start(self) -> None:
        await super().start()
        # Once every surface is up: keepalived's current word may promote this box at once.
        self.keepalived: FifoReader | None = follow_fifo(self)

    async def open_network(self) -> None:
        if self.roles.role is Role.PROMOTING:
            await super().open_network()
            return
        self.roles.started(time.time())
        self._trunks_tried.set()  # ready for systemd as a standby: no provider link to wait on
        try:
            await asyncio.wait_for(self.warm.read_all(), self.config.state.redis_timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self.warm.link.went_down(exc if isinstance(exc, Exception) else OSError(str(exc)))
        self.warm.start()
        self._following = asyncio.get_running_loop().create_task(self._follow_state())
        marker = self.warm.marker
        log.warning(
            "HA standby: node %s (peer %s), no SIP listener, provider link or media until "
            "`gateway ha notify master`; replica: %d call(s), active %s",
            self.node,
            self.config.ha.peer or "unnamed",
            len(self.warm.calls),
            f"{marker.node} epoch {marker.epoch}" if marker is not None else "none yet",
        )

    async def _follow_state(self) -> None:
        """Registrations and caps as the active last wrote them, read again each second: a
        takeover while Redis is away starts from this copy (a fetch that fails keeps it)."""
        assert self.redis is not None
        while True:
            await asyncio.sleep(1.0)
            await self.redis.store.fetch((REGISTRATIONS, CAPS))

    def _service_status(self) -> str:
        if self.roles.role is not Role.ACTIVE:
            return f"HA {self.roles.role.value} (node {self.node}); " + super()._service_status()
        return f"HA active (node {self.node}, epoch {self.roles.epoch}); " + (
            super()._service_status()
        )

    async def stop(self, drain: float = 0.0) -> None:
        if self.roles.role is Role.ACTIVE:
            # A planned stop of the active ends its calls with BYE as a single box does (a
            # switchover that keeps them: stop keepalived instead, which fences this box).
            # The replica must then forget them: one last write, before the Redis link closes.
            assert self.redis is not None
            close_redis = self.redis.stop

            async def last_write_then_close() -> None:
                await self._last_write()
                await close_redis()

            self.redis.stop = last_write_then_close  # type: ignore[method-assign]
            await super().stop(drain)
            return
        # A standby holds nothing of its own: it writes no state on the way out (its empty
        # tables would overwrite the active's in Redis) and ends no call.
        await self.warm.stop()
        for task in [*self._background, self._following]:
            if task is not None:
                task.cancel()
        await self.media.stop()
        assert self.redis is not None
        await self.redis.stop()
        for surface in (self.control, self.admin):
            if surface is not None:
                await surface.stop()

    async def _last_write(self) -> None:
        writer = self.writer
        if writer is None:
            return
        await writer.stop()
        writer.take()
        try:
            await asyncio.wait_for(writer.flush(), self.config.state.redis_timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            log.error("HA: the last calls' changes did not reach Redis: %s", exc)

    # ------------------------------------------------------------- keepalived's word

    def notify(self, state: str) -> dict[str, Any]:
        """``gateway ha notify STATE``: acts in the background, answers at once."""
        marker = self.warm.marker
        seen = marker.epoch if marker is not None else 0
        action = self.roles.notify(state, time.time(), seen)
        log.warning(
            "HA: keepalived says %s (node %s, now %s)", state, self.node, self.roles.role.value
        )
        if isinstance(action, Promote):
            self._promotion = asyncio.get_running_loop().create_task(self._promote(action))
        elif isinstance(action, Fence):
            self._fence(action)
        return self.status()

    async def _promote(self, action: Promote) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._take_over(action)
        except Exception as exc:  # whatever failed, this box must not half-serve
            log.critical("HA: promotion failed: %s", exc, exc_info=True)
            fence = self.roles.fence(f"promotion failed: {exc}", time.time())
            if fence is not None:
                self._fence(fence)
            return
        self.takeover["seconds"] = round(loop.time() - started, 3)
        self.roles.promoted(time.time())
        if self.roles.role is not Role.ACTIVE:
            return  # fenced meanwhile
        detail = (
            f"node {self.node} active, epoch {action.epoch}: {self.takeover['restored']} of "
            f"{self.takeover['replicated']} call(s) taken over in {self.takeover['seconds']} s"
        )
        log.warning("HA: promoted: %s", detail)
        self._ha_event("ha.promoted", "unlock", detail)
        self._service.status(self._service_status())
        self._flush()

    async def _take_over(self, action: Promote) -> None:
        assert self.redis is not None and self._loop is not None
        timeout = self.config.state.redis_timeout
        if self._following is not None:
            self._following.cancel()
        await self.warm.stop()
        try:  # the freshest replica; on a Redis error the warm copy is what there is
            await asyncio.wait_for(self.warm.read_all(), timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            log.error("HA: replica not re-read (%s): taking over the warm copy", exc)
        try:  # registrations and caps as the active last wrote them (else the local folder's)
            await asyncio.wait_for(self.redis.store.fetch((REGISTRATIONS, CAPS)), 2 * timeout)
        except TimeoutError:
            log.error("HA: Redis did not answer for the registrations: restoring the local ones")
        self._restore_state()  # registrations and caps, as after a restart
        restored, reopened = await self._restore_calls()
        token = freebind.enabled.set(True)  # listeners and provider link: IP_FREEBIND
        try:
            await super().open_network()
        finally:
            freebind.enabled.reset(token)
        wall = time.time()
        self.writer = CallWriter(
            self.redis.link,
            node=self.node,
            epoch=action.epoch,
            since=wall,
            interval=self.config.ha.replicate_interval,
            collect=self._collect_calls,
            newer=self._newer_active,
        )
        self.writer.held.update(restored)
        # Replicated calls not taken over (ended meanwhile, refused) leave the replica.
        for key in set(self.warm.calls) - set(restored):
            self.writer.note_gone(key)
        self.writer.start()
        self.takeover.update(
            replicated=len(self.warm.calls), restored=len(restored), media=reopened
        )

    async def _restore_calls(self) -> tuple[list[str], int]:
        from gateway.state.calls import decode_call

        now, wall = self._now(), time.time()
        records = []
        for key, data in self.warm.calls.items():
            record = decode_call(data, self.state.sealer)
            if record is None:
                log.error("HA: call %s in the replica does not open (state key?): not taken", key)
                continue
            records.append(record)
        restored = self.core.restore_calls(records, now, wall)
        for key, why in self.core.call_restore_skipped.items():
            log.warning("HA: call %s not taken over: %s", key, why)
        for key in set(self.warm.calls) - set(restored):
            # Kept in progress by the caps restore but not carried on: it ended now.
            self.policy.call_ended(key, now)
        by_key = {r.key: r for r in records}
        reopened = 0
        for key in restored:
            if await self.media.restore_streams(key, by_key[key].streams):
                reopened += 1
            else:
                self.core.media_problem(key, "media not restored at takeover", now, self._wall())
        return restored, reopened

    # ------------------------------------------------------------- active

    def _collect_calls(self) -> dict[str, bytes | None]:
        """The calls whose record changed (and those whose media checkpoints moved)."""
        from gateway.state.calls import encode_call

        now, wall = self._now(), time.time()
        keys = set(self.core.take_changed_calls())
        if self.writer is not None:
            # Checkpoints move without the core knowing (every 0.5 s per worker): a slice of
            # the held calls per round, each call looked at about once a second or so.
            if not self._to_check and now - self._checked_at >= CHECKPOINT_EVERY:
                self._checked_at = now
                self._to_check = sorted(self.writer.held)
            for key in self._to_check[:CHECKPOINT_SLICE]:
                if self._stream_records(key) != self._checkpoints.get(key):
                    keys.add(key)
            del self._to_check[:CHECKPOINT_SLICE]
        changes: dict[str, bytes | None] = {}
        for key in keys:
            record = self.core.export_call(key, now, wall)
            if record is None:
                self._checkpoints.pop(key, None)
                changes[key] = None
                continue
            streams = self._stream_records(key)
            self._checkpoints[key] = streams
            if streams:
                record = msgspec.structs.replace(record, streams=streams)
            changes[key] = encode_call(record, self.state.sealer, self.config.state.site)
        return changes

    def _stream_records(self, key: str) -> tuple[Any, ...]:
        return tuple(self.media.stream_records(key))

    def _newer_active(self, node: str, epoch: int) -> None:
        fence = self.roles.newer_active(node, epoch, time.time())
        if fence is not None:
            self._fence(fence)

    # ------------------------------------------------------------- fenced

    def _fence(self, action: Fence) -> None:
        """Stop touching the network now; the process ends and systemd starts it as standby."""
        rule = "ha.demoted" if action.demoted else "ha.fenced"
        log.critical(
            "HA: %s (%s): closing listeners, provider link and media now, sending nothing; "
            "exiting with status %d for systemd to start this node again as standby",
            "demoted" if action.demoted else "fenced",
            action.reason,
            EXIT_FENCED,
        )
        self._ha_event(rule, "lock", f"node {self.node}: {action.reason}")
        if self._timer is not None:  # no retransmission, no timer-driven request any more
            self._timer.cancel()
            self._timer = None
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.abort()
        self._udp = None  # whatever the core still asks to send to the LAN goes nowhere
        for listener in self._listeners:
            listener.close()
        for conn in list(self._lan_streams.values()) + list(self._wan_streams.values()):
            conn.close("HA fenced")
        # No reconnect either: each link is marked stopping before its connection closes.
        asyncio.get_running_loop().create_task(self.trunk_links.stop())
        for pid in self.media.worker_pids():
            if pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        self._service.status(f"HA fenced: {action.reason}; exiting")
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        # A moment for the control socket's answer; nothing of this process touches the
        # site's network any more.
        asyncio.get_running_loop().call_later(0.1, os._exit, EXIT_FENCED)

    def _ha_event(self, rule: str, action: str, detail: str) -> None:
        event = SecurityEvent(self._clock(), "", "", "", rule, action, detail=detail)  # type: ignore[arg-type]
        self._security_event(event)

    # ------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """``gateway ha status``: role, node, peer, Redis, last sync, calls held, lag."""
        wall = time.time()
        roles = self.roles
        link = self.warm.link
        marker = self.warm.marker
        active = roles.role is Role.ACTIVE
        writer = self.writer
        last_sync: float | None
        lag: float | None
        if active and writer is not None:
            last_sync, lag = writer.last_write, writer.lag(wall)
            held = len(self.core.active_calls)
        else:
            last_sync, lag = self.warm.last_sync, self.warm.lag(wall)
            held = len(self.warm.calls)
        current = None
        if active:
            current = {"node": self.node, "epoch": roles.epoch, "since": roles.since}
        elif marker is not None:
            current = {"node": marker.node, "epoch": marker.epoch, "since": marker.since}
        return {
            "role": roles.role.value,
            "node": self.node,
            "peer": self.config.ha.peer or None,
            "since": roles.since,
            "epoch": roles.epoch,
            "role_changes": roles.changes,
            "site": link.site,
            "redis": {"reachable": link.up, "error": link.last_error or None},
            "active": current,
            "last_sync": last_sync,
            "calls_held": held,
            "replication_lag_seconds": None if lag is None else round(lag, 3),
            "last_notify": (
                {"state": roles.last_notify[0], "at": roles.last_notify[1]}
                if roles.last_notify
                else None
            ),
            "takeover": self.takeover or None,
            "fence_reason": roles.fence_reason or None,
            "keepalived_fifo": kf.facts() if (kf := getattr(self, "keepalived", None)) else None,
        }

    def metrics_facts(self) -> Mapping[str, Any]:
        data = self.status()
        return {
            "role": data["role"],
            "changes": data["role_changes"],
            "lag": data["replication_lag_seconds"],
            "calls_held": data["calls_held"],
        }

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ha", self._status_handler)
        app.router.add_post("/ha/notify", self._notify_handler)

    async def _status_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.status(), dumps=_dumps)

    async def _notify_handler(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            state = str(body["state"])
            data = self.notify(state)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"expected {{'state': WORD}}: {exc}"}, status=400)
        return web.json_response(data, status=202, dumps=_dumps)


def _dumps(data: Any) -> str:
    import json

    return json.dumps(data, default=str)
