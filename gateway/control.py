"""The local control socket: ``gateway status``, ``calls``, ``registrations``, ``bans``,
``spike-lock lift`` and ``reload`` ask the running gateway from its own shell, with no token.

What kamcmd is to kamailio and rtpengine-ctl to rtpengine: JSON over HTTP/1.1 on a UNIX socket
(``[control] socket``, default /run/sip-media-gateway/control.sock, which systemd's
``RuntimeDirectory=`` provides). Who may ask is decided by the file system, as for those
tools: the socket is created 0660 in a 0750 folder, owned by the gateway's user and its group
(or ``[control] group``), so only root, the service user and members of that group can
connect at all. Each request's peer credentials (SO_PEERCRED, unix(7)) are checked once more
and every request is logged with who made it.

The server reads and acts only through :mod:`gateway.operations` (the seam the admin API
uses) and answers with the admin API's own views (:mod:`gateway.admin.views`), so both
surfaces say the same thing. Nothing here is reachable from the network.

The client half (:func:`control_request`) is synchronous and standard-library only, so every
CLI command can use it in one line; the ``format_*`` functions turn answers into the tables
the commands print.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import http.client
import json
import logging
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.admin.limits import limited_factory
from gateway.admin.views import (
    MediaSampler,
    ban_views,
    call_views,
    media_worker_views,
    phone_views,
    provider_view,
    readiness,
    registration_views,
)
from gateway.config import SYSTEM_DATA_DIR, GatewayConfig, data_dir
from gateway.limits import LimitCounters
from gateway.operations import Operations, StatusView

__all__ = [
    "DEFAULT_SOCKET",
    "ControlError",
    "ControlServer",
    "ControlStartupError",
    "control_request",
    "format_calls",
    "format_registrations",
    "format_reload",
    "format_status",
    "socket_paths",
]

log = logging.getLogger("gateway.control")

#: Where the socket is unless the configuration says otherwise (gateway/config.py's default).
DEFAULT_SOCKET = "/run/sip-media-gateway/control.sock"
#: The name of the fallback socket in the state folder (only for the default path).
FALLBACK_NAME = "control.sock"
#: sockaddr_un holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
SOCKET_MODE = 0o660
FOLDER_MODE = 0o750

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS_KEY: web.AppKey[StatusView] = web.AppKey("control-status")
OPERATIONS_KEY: web.AppKey[Operations] = web.AppKey("control-operations")
SAMPLER_KEY: web.AppKey[MediaSampler] = web.AppKey("control-sampler")
GROUP_KEY: web.AppKey[int] = web.AppKey("control-group")
INFO_KEY: web.AppKey[dict[str, Any]] = web.AppKey("control-info")
#: ``gateway state status``: the saved state's store (gateway/state/redis_state.py).
STATE_KEY: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("control-state")
#: Who made a request ("user (uid N, pid N)"), for the log lines of what it changed.
WHO_KEY: web.RequestKey[str] = web.RequestKey("control-who")


def socket_paths(config: GatewayConfig) -> list[Path]:
    """Where a gateway run with ``config`` listens, in the order it tries: the configured
    socket, then (at the default only) ``control.sock`` in the state folder.

    The default /run path belongs to the system configuration (/etc/sip-media-gateway, as
    the unit runs it); a gateway started from a configuration anywhere else (a lab, a bench,
    a second instance) uses its state folder's socket, so two of them never contend for one."""
    fallback = Path(config.state.directory) / FALLBACK_NAME
    if config.control.socket != DEFAULT_SOCKET:
        return [config.path(config.control.socket)]
    if data_dir(config.base_dir) != SYSTEM_DATA_DIR:
        return [fallback]
    return [Path(DEFAULT_SOCKET), fallback]


def _package_version() -> str:
    try:
        return version("sip-media-gateway")
    except PackageNotFoundError:
        return "unknown (not installed)"


# --------------------------------------------------------------------------- server


class ControlStartupError(OSError):
    """The control socket cannot be opened as configured; the message says what to fix.

    An OSError, so ``gateway run`` reports it as it reports an address it cannot bind."""


def peer_credentials(request: web.Request) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of the socket (Linux SO_PEERCRED)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def may_control(uid: int, gid: int, group: int, *, own_uid: int) -> bool:
    """Root, the gateway's own user, or a member of the socket's group (primary or not)."""
    if uid in (0, own_uid) or gid == group:
        return True
    try:
        entry = pwd.getpwuid(uid)
        members = grp.getgrgid(group).gr_mem
    except KeyError:
        return False
    return entry.pw_gid == group or entry.pw_name in members


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Second lock behind the file mode, and one log line per request naming who asked."""
    started = time.monotonic()
    creds = peer_credentials(request)
    who = "unknown peer"
    if creds is not None:
        pid, uid, gid = creds
        who = f"{user_name(uid)} (uid {uid}, pid {pid})"
        if not may_control(uid, gid, request.app[GROUP_KEY], own_uid=os.geteuid()):
            response: web.StreamResponse = _json(
                {"error": "neither root, the gateway's user nor a member of its group"}, 403
            )
            _log_request(request, who, response.status, started)
            return response
    request[WHO_KEY] = who
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _log_request(request, who, exc.status, started)
        raise
    _log_request(request, who, response.status, started)
    return response


def _log_request(request: web.Request, who: str, status: int, started: float) -> None:
    changes = request.method not in ("GET", "HEAD")
    level = logging.WARNING if status == 403 or (changes and status < 400) else logging.INFO
    log.log(
        level,
        "control: %s %s by %s -> %d (%.1f ms)",
        request.method,
        request.path,
        who,
        status,
        (time.monotonic() - started) * 1000,
    )


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


async def status_handler(request: web.Request) -> web.Response:
    view = request.app[STATUS_KEY]
    sampler = request.app[SAMPLER_KEY]
    sample = await sampler.sample()
    calls = call_views(view, sample)
    registrations = view.registrations()
    pids = view.media_workers()
    probe = getattr(view, "media_loop", None)
    loop_text = probe().describe() if callable(probe) else None
    now = time.time()
    info: dict[str, Any] = request.app[INFO_KEY]
    return _json(
        {
            **info,
            "started_unix": round(view.started_at, 3),
            "uptime_seconds": round(now - view.started_at, 1),
            "accepting_calls": view.accepting_calls(),
            "ready": readiness(view),
            "media": {
                "workers": len(pids),
                "workers_up": sum(1 for pid in pids if pid is not None),
                "pids": pids,
                "loop": loop_text,
                "worker_states": media_worker_views(view),
                "packets_per_second": sampler.rates()["packets_per_second"],
                "error": sample.error,
            },
            "provider": provider_view(view),
            "counts": {
                "calls": len(calls),
                "encrypted": sum(1 for c in calls if c["encrypted"]),
                "registrations": len(registrations),
                "registrations_active": sum(1 for r in registrations if r.active),
                "bans": len(view.bans()),
            },
            "spike_locked": view.spike_locked(),
        }
    )


async def ready_handler(request: web.Request) -> web.Response:
    state = readiness(request.app[STATUS_KEY])
    return _json(state, 200 if state["ready"] else 503)


async def calls_handler(request: web.Request) -> web.Response:
    sample = await request.app[SAMPLER_KEY].sample()
    calls = call_views(request.app[STATUS_KEY], sample)
    return _json({"calls": calls, "media_error": sample.error})


async def registrations_handler(request: web.Request) -> web.Response:
    return _json({"registrations": registration_views(request.app[STATUS_KEY])})


async def phones_handler(request: web.Request) -> web.Response:
    return _json({"phones": phone_views(request.app[STATUS_KEY])})


async def bans_handler(request: web.Request) -> web.Response:
    body: dict[str, Any] = {"bans": ban_views(request.app[STATUS_KEY])}
    state = request.app.get(STATE_KEY)
    if state is not None:
        found = state()
        if found.get("backend") == "redis":
            # [state] redis_url: the shared list in force too, each ban with its site.
            body["shared"] = found.get("shared_ban_list", [])
            body["site"] = found.get("site")
    return _json(body)


async def lift_ban_handler(request: web.Request) -> web.Response:
    address = request.match_info["address"]
    if not request.app[OPERATIONS_KEY].lift_ban(address).lifted:
        return _json({"error": f"{address} is not banned"}, 404)
    # The same words as a lift through the ban file, so one search finds both.
    log.warning("ban on %s lifted by the operator (%s)", address, request[WHO_KEY])
    return _json({"lifted": address})


async def lift_spike_lock_handler(request: web.Request) -> web.Response:
    if not request.app[OPERATIONS_KEY].lift_spike_lock().lifted:
        return _json({"error": "outbound calling is not locked"}, 404)
    log.warning("spike lock lifted by the operator (%s)", request[WHO_KEY])
    return _json({"lifted": True})


async def reload_handler(request: web.Request) -> web.Response:
    """Check the file; when valid, apply what can change live (certificates)."""
    result = await request.app[OPERATIONS_KEY].reload_configuration()
    body = {
        "valid": result.valid,
        "applied": list(result.applied),
        "certificate_error": result.certificate_error,
        "restart_needed": list(result.restart_needed),
        "problems": list(result.problems),
    }
    if not result.valid:
        return _json(body, 422)
    return _json(body, 200 if result.ok else 409)


def build_control_app(
    status: StatusView,
    operations: Operations,
    sampler: MediaSampler,
    *,
    group: int,
    info: Mapping[str, Any],
    state: Callable[[], dict[str, Any]] | None = None,
) -> web.Application:
    """The control application (what the socket serves; tests may drive it directly)."""
    app = web.Application(middlewares=[access_middleware])
    app[STATUS_KEY] = status
    app[OPERATIONS_KEY] = operations
    app[SAMPLER_KEY] = sampler
    app[GROUP_KEY] = group
    app[INFO_KEY] = dict(info)
    app.router.add_get("/status", status_handler)
    app.router.add_get("/ready", ready_handler)
    app.router.add_get("/calls", calls_handler)
    app.router.add_get("/registrations", registrations_handler)
    app.router.add_get("/phones", phones_handler)
    app.router.add_get("/bans", bans_handler)
    app.router.add_delete("/bans/{address}", lift_ban_handler)
    app.router.add_post("/spike-lock/lift", lift_spike_lock_handler)
    app.router.add_post("/reload", reload_handler)
    if state is not None:
        app[STATE_KEY] = state
        app.router.add_get("/state", state_handler)
    return app


async def state_handler(request: web.Request) -> web.Response:
    return _json(request.app[STATE_KEY]())


def _answers(path: Path) -> bool:
    """Something accepts connections on the socket at ``path`` now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class ControlServer:
    """The control application on its UNIX socket, for the life of the gateway."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        status: StatusView,
        operations: Operations,
        sampler: MediaSampler | None = None,
        state: Callable[[], dict[str, Any]] | None = None,
        routes: Callable[[web.Application], None] | None = None,
        limit_counters: LimitCounters | None = None,
    ) -> None:
        self._config = config
        #: Where refusals over [limits] control_connections are counted.
        self._limit_counters = limit_counters or LimitCounters()
        self._server: asyncio.AbstractServer | None = None
        self._state = state
        #: Adds further routes (gateway/ha/: `gateway ha status|notify`).
        self._routes = routes
        self._status = status
        self._operations = operations
        self._sampler = sampler or MediaSampler(status)
        self._runner: web.AppRunner | None = None
        #: The socket in use, once started.
        self.path: Path | None = None

    def _group(self) -> int:
        name = self._config.control.group
        if name is None:
            return os.getegid()
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            raise ControlStartupError(f"control.group: no group named {name!r}") from None

    async def start(self) -> None:
        settings = self._config.control
        if not settings.enabled:
            log.info("control socket off ([control] enabled = false)")
            return
        group = self._group()
        candidates = socket_paths(self._config)
        for index, path in enumerate(candidates):
            try:
                await self._listen(path, group)
            except PermissionError as exc:
                why = exc.strerror or str(exc)
            except OSError as exc:
                if exc.errno != errno.EROFS or isinstance(exc, ControlStartupError):
                    raise
                why = exc.strerror or str(exc)
            else:
                break
            if index + 1 == len(candidates):
                raise ControlStartupError(
                    f"control socket {path}: {why}: set [control] socket to a folder the "
                    "gateway may write, or [control] enabled = false"
                )
            log.warning(
                "control socket: cannot use %s (%s); listening in the state folder instead "
                "(systemd's RuntimeDirectory= provides the default; [control] socket chooses)",
                path,
                why,
            )
        assert self.path is not None
        log.info(
            "control socket on %s (mode %o, group %s): gateway status --socket %s",
            self.path,
            SOCKET_MODE,
            _group_name(group),
            self.path,
        )

    async def _listen(self, path: Path, group: int) -> None:
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ControlStartupError(
                f"control socket {path}: longer than the {MAX_SOCKET_PATH} bytes a UNIX socket "
                "path may have; set [control] socket to a shorter one"
            )
        folder = path.parent
        if not folder.exists():
            folder.mkdir(mode=FOLDER_MODE, parents=True)
            # mkdir's mode passes through the umask; say exactly what we mean.
            os.chmod(folder, FOLDER_MODE)
            if group != os.getegid():
                os.chown(folder, -1, group)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ControlStartupError(f"control socket {path}: exists and is not a socket")
            if await asyncio.to_thread(_answers, path):
                raise ControlStartupError(
                    f"control socket {path}: another process answers on it (a gateway already "
                    "running?): stop it, or give this gateway a [control] socket of its own"
                )
            path.unlink()  # left behind by a gateway that did not stop cleanly
        info = {
            "version": _package_version(),
            "pid": os.getpid(),
            "config": self._config.source_file or None,
            "socket": str(path),
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        }
        app = build_control_app(
            self._status, self._operations, self._sampler, group=group, info=info, state=self._state
        )
        if self._routes is not None:
            self._routes(app)
        limits = self._config.limits
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.idle_timeout)
        await runner.setup()
        try:
            # Not web.UnixSite: its protocol factory takes every connection; this one admits
            # [limits] control_connections at once and closes the others.
            assert runner.server is not None
            factory = limited_factory(
                runner.server, limits.control_connections, self._limit_counters
            )
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(factory, str(path))
            # Bound with the umask's mode; no one else could write to it before this (the
            # umask never grants write), and from here it is exactly owner+group rw.
            os.chmod(path, SOCKET_MODE)
            if group != os.getegid():
                os.chown(path, -1, group)
        except BaseException:
            if self._server is not None:
                self._server.close()
                self._server = None
            await runner.cleanup()
            raise
        self._runner = runner
        self.path = path

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# --------------------------------------------------------------------------- client


class ControlError(Exception):
    """The control request did not succeed; the message is one line for the operator.

    ``unavailable``: no gateway answers (a command may fall back to the files); ``status``
    and ``body``: the gateway answered with an HTTP error (the body says why)."""

    def __init__(
        self,
        message: str,
        *,
        unavailable: bool = False,
        status: int | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.unavailable = unavailable
        self.status = status
        self.body: dict[str, Any] = dict(body or {})


class _SocketConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a UNIX socket that is already connected."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # the socket is connected by the caller
        return None


def _group_hint(path: Path) -> str:
    for candidate in (path, path.parent):
        try:
            return _group_name(candidate.stat().st_gid)
        except OSError:
            continue
    return "sip-media-gateway"


def _connect(paths: list[Path], timeout: float) -> socket.socket:
    stale: list[Path] = []
    for path in paths:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            sock.close()
            continue
        except ConnectionRefusedError:
            sock.close()
            stale.append(path)
            continue
        except PermissionError:
            sock.close()
            raise ControlError(
                f"permission denied on {path}: run as root or a member of group {_group_hint(path)}"
            ) from None
        except OSError as exc:
            sock.close()
            raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
        return sock
    if stale:
        raise ControlError(
            f"no gateway is running (nothing answers on {stale[0]}: left by a gateway "
            "that stopped)",
            unavailable=True,
        )
    where = " or ".join(str(p) for p in paths)
    raise ControlError(f"no gateway is running (no socket at {where})", unavailable=True)


def control_request(
    target: GatewayConfig | str | Path,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    *,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """One request to the running gateway's control socket; the decoded JSON answer.

    ``target`` is the configuration (its ``[control]`` table names the socket) or the
    socket's path. Raises :class:`ControlError` when no gateway answers, the socket may not
    be used, or the gateway answers with an error status."""
    if isinstance(target, GatewayConfig):
        if not target.control.enabled:
            where = target.source_file or "the configuration"
            raise ControlError(
                f"the control socket is off in {where} ([control] enabled = false)",
                unavailable=True,
            )
        paths = socket_paths(target)
    else:
        paths = [Path(target)]
    sock = _connect(paths, timeout)
    connection = _SocketConnection(sock, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        answer = connection.getresponse()
        raw = answer.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ControlError(f"control socket {sock.getpeername()}: {exc}") from None
    finally:
        connection.close()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {"error": raw.decode(errors="replace").strip()[:200]}
    if not isinstance(data, dict):
        data = {"answer": data}
    if answer.status >= 400:
        message = str(data.get("error") or f"the gateway answered {answer.status}")
        raise ControlError(message, status=answer.status, body=data)
    return data


# --------------------------------------------------------------------------- formatting


def duration(seconds: float | None) -> str:
    """``H:MM:SS`` (days in front when there are any)."""
    total = int(max(0.0, seconds or 0.0))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines)


def _worker_restarts(states: list[Mapping[str, Any]]) -> str:
    """The media workers that restarted or failed, for the status line (nothing when none)."""
    parts = []
    for w in states:
        if w.get("state") == "running" and not w.get("restarts"):
            continue
        text = f"worker {w.get('slot')} {str(w.get('state')).upper()}"
        text += f", {w.get('restarts', 0)} restart(s)"
        if w.get("last_restored") is not None:
            text += f", last: {w['last_restored']} call(s) restored, {w['last_lost']} lost"
        if w.get("failed"):
            text += f" ({w['failed']})"
        parts.append(text)
    return "; " + "; ".join(parts) if parts else ""


def format_status(data: Mapping[str, Any]) -> str:
    """``gateway status``: one line per part of the gateway."""
    ready = data.get("ready", {})
    checks = ready.get("checks", {})
    if not data.get("accepting_calls", True):
        state = "DRAINING (no new calls)"
    elif ready.get("ready"):
        state = "ready"
    else:
        failing = [name.replace("_", " ") for name, ok in checks.items() if not ok]
        state = "NOT READY: " + ", ".join(failing) + " failing"
    media = data.get("media", {})
    pids = ", ".join(str(p) if p is not None else "down" for p in media.get("pids", []))
    media_line = f"{media.get('workers_up', 0)}/{media.get('workers', 0)} workers up ({pids})"
    if media.get("loop"):
        media_line += f", {media['loop']}"
    media_line += f", {media.get('packets_per_second', 0.0)} packets/s"
    if media.get("error"):
        media_line += f"; workers did not answer: {media['error']}"
    media_line += _worker_restarts(media.get("worker_states", []))
    provider = data.get("provider", {})
    counts = data.get("counts", {})
    lines = [
        ("gateway", f"{data.get('version')} (pid {data.get('pid')}), up "
         f"{duration(data.get('uptime_seconds'))}, {data.get('event_loop')} loop"),
        ("config", str(data.get("config") or "-")),
        ("state", state),
        ("media", media_line),
    ]  # fmt: skip
    for trunk in provider.get("trunks", []):
        where = f"{trunk.get('host')}:{trunk.get('port') or 'SRV'}"
        link = "up" if trunk.get("up") else "DOWN"
        lines.append((f"trunk {trunk.get('name')}", f"{link} {where}: {trunk.get('state')}"))
    lines += [
        ("calls", f"{counts.get('calls', 0)} active, {counts.get('encrypted', 0)} with SRTP"),
        (
            "registrations",
            f"{counts.get('registrations', 0)} ({counts.get('registrations_active', 0)} active)",
        ),
        ("bans", f"{counts.get('bans', 0)} in force"),
        (
            "spike lock",
            "ENGAGED: outbound calls refused (gateway spike-lock lift)"
            if data.get("spike_locked")
            else "off",
        ),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def _per_direction(call: Mapping[str, Any], field: str, fmt: str = "{}") -> str:
    media = call.get("media", {})
    up = media.get("phone_to_provider", {}).get(field)
    down = media.get("provider_to_phone", {}).get(field)
    if up is None and down is None:
        return "-"
    return "/".join(fmt.format(v) if v is not None else "-" for v in (up, down))


def format_calls(calls: list[Mapping[str, Any]]) -> str:
    """``gateway calls``: a row per call; "up" is phone→provider, "down" provider→phone."""
    if not calls:
        return "no active calls"
    header = [
        "REF", "STATE", "FROM", "TO", "DURATION", "SUITE",
        "PKTS UP in/out", "PKTS DOWN in/out", "LOST up/down", "JITTER ms up/down",
    ]  # fmt: skip
    rows = []
    for c in calls:
        media = c.get("media", {})
        up, down = media.get("phone_to_provider", {}), media.get("provider_to_phone", {})
        suite = c.get("suite") or c.get("encryption") or "-"
        rows.append(
            [
                str(c.get("pair")),
                str(c.get("state")),
                str(c.get("caller") or "-"),
                str(c.get("callee") or "-"),
                duration(c.get("duration")),
                str(suite),
                f"{up.get('packets_in', '-')}/{up.get('packets_out', '-')}",
                f"{down.get('packets_in', '-')}/{down.get('packets_out', '-')}",
                _per_direction(c, "lost"),
                _per_direction(c, "jitter_ms", "{:.1f}"),
            ]
        )
    return _table(header, rows)


def format_registrations(registrations: list[Mapping[str, Any]]) -> str:
    if not registrations:
        return "no registrations"
    header = ["USER", "ADDRESS", "TRANSPORT", "ACTIVE", "EXPIRES IN", "USER AGENT"]
    rows = [
        [
            str(r.get("user")),
            str(r.get("address")),
            str(r.get("transport")),
            "yes" if r.get("active") else "no",
            f"{r['expires_in']:.0f}s" if r.get("expires_in") is not None else "-",
            str(r.get("user_agent") or "-"),
        ]
        for r in registrations
    ]
    return _table(header, rows)


def format_reload(data: Mapping[str, Any]) -> str:
    """``gateway reload``: what was applied, what needs a restart, what is wrong."""
    if not data.get("valid"):
        problems = data.get("problems") or ["the configuration is not valid"]
        return "\n".join(
            ["configuration not reloaded: nothing changed", *(f"  {p}" for p in problems)]
        )
    lines = ["configuration is valid"]
    applied = data.get("applied") or []
    lines.append("applied: " + (", ".join(applied) if applied else "nothing to apply live"))
    if data.get("certificate_error"):
        lines.append(f"certificates NOT reloaded (still in service): {data['certificate_error']}")
    restart = data.get("restart_needed") or []
    if restart:
        lines.append("needs a restart to take effect: " + ", ".join(f"[{t}]" for t in restart))
    return "\n".join(lines)
