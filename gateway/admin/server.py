"""The admin HTTP surface (aiohttp): JSON API under ``/api/``, the status page, ``/metrics``.

Access:

- ``/api/*`` needs ``Authorization: Bearer <token>`` (the token comes from the environment
  variable named by ``admin.token_env``, never from the configuration file), or, when the
  surface runs over TLS with ``admin.client_ca``, a client certificate from that CA (mutual
  TLS). Tokens are compared in constant time; a source that keeps failing is told to wait
  (429) instead of being allowed to guess. Every API request is logged (who, what, answer),
  never the token.
- ``/`` and ``/static/*`` are the status page's own files: no data, no token. The page asks
  the operator for the token and sends it with each API request (a header, not a cookie, so
  other sites cannot make the browser use it).
- ``/metrics`` is readable without the token (it holds no secrets), on the admin address and,
  with ``admin.metrics_listen``, on an address of its own for the scraper.
- ``/api/health`` (liveness) and ``/api/ready`` (readiness) need no token either, for load
  balancers and container health checks; they answer ok / not ready and nothing else (the
  checks behind readiness are in ``/api/status``, behind the token).

The server binds to ``admin.listen`` (loopback by default); it refuses to start without a
token unless mutual TLS is configured. Its listeners apply ``[limits]`` (connections per source
and in total, TLS handshake and idle timeouts, header and body sizes, requests per second:
``gateway/admin/limits.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.admin.limits import AdminListener, SecurityHandler, limits_middleware
from gateway.admin.metrics import CONTENT_TYPE, render_metrics
from gateway.admin.observe import Observatory
from gateway.admin.openapi import openapi_document
from gateway.admin.views import (
    MediaSampler,
    ban_views,
    call_views,
    certificate_views,
    ladder_list,
    ladder_view,
    media_worker_views,
    phone_views,
    provider_view,
    readiness,
    registration_views,
)
from gateway.config import AdminSettings, LimitsSettings, parse_listen
from gateway.limits import LimitCounters
from gateway.operations import Operations, StatusView

__all__ = ["AdminServer", "AdminStartupError", "build_app"]

log = logging.getLogger("gateway.admin")
#: One JSON line per API request: the admin action log.
access_log = logging.getLogger("gateway.admin.access")
STATIC = Path(__file__).with_name("static")

#: Failed authentications from one source within the window before it gets 429.
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0
#: Answered without a token: they say only whether the gateway is alive and ready.
OPEN_PATHS = frozenset({"/api/health", "/api/ready"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS_KEY: web.AppKey[StatusView] = web.AppKey("status")
OPERATIONS_KEY: web.AppKey[Operations] = web.AppKey("operations")
OBSERVATORY_KEY: web.AppKey[Observatory] = web.AppKey("observatory")
SAMPLER_KEY: web.AppKey[MediaSampler] = web.AppKey("sampler")
TOKEN_KEY: web.AppKey[bytes | None] = web.AppKey("token")
FAILURES_KEY: web.AppKey[dict[str, deque[float]]] = web.AppKey("failures")


class AdminStartupError(OSError):
    """The admin surface cannot start as configured; the message says what to fix.

    An OSError, so that ``gateway run`` reports it as it reports an address it cannot bind.
    """


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


# --------------------------------------------------------------------------- access


def _client_identity(request: web.Request) -> str | None:
    """The verified client certificate's subject (mutual TLS), else None."""
    transport = request.transport
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return f"cert:{value}"
    return "cert"


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token or client certificate on /api/, and one log line per API request."""
    path = request.path
    if not path.startswith("/api/") or path in OPEN_PATHS:
        return await handler(request)
    started = time.monotonic()
    source = request.remote or "?"
    who = _client_identity(request)
    failures = request.app[FAILURES_KEY]
    recent = failures.get(source)
    now = time.monotonic()
    if recent is not None:
        while recent and now - recent[0] > FAILURE_WINDOW:
            recent.popleft()
    response: web.StreamResponse
    if who is None:
        if recent is not None and len(recent) >= MAX_FAILURES:
            response = _error(429, "too many failed attempts; wait a minute")
            response.headers["Retry-After"] = str(int(FAILURE_WINDOW))
            _log_access(request, source, "-", response.status, started, "throttled")
            return response
        who = _check_token(request)
        if who is None:
            failures.setdefault(source, deque()).append(now)
            if len(failures) > 10_000:  # a scan from many sources must not grow this forever
                failures.clear()
            response = _error(401, "missing or wrong token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="gateway-admin"'
            _log_access(request, source, "-", response.status, started, "refused")
            return response
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _log_access(request, source, who, exc.status, started)
        raise
    _log_access(request, source, who, response.status, started)
    return response


def _check_token(request: web.Request) -> str | None:
    expected = request.app[TOKEN_KEY]
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if expected is None or scheme.lower() != "bearer" or not presented:
        return None
    # compare_digest: the time taken does not tell how much of a guess was right.
    if hmac.compare_digest(presented.strip().encode(), expected):
        return "token"
    return None


def _log_access(
    request: web.Request,
    source: str,
    who: str,
    status: int,
    started: float,
    outcome: str | None = None,
) -> None:
    record = {
        "time": round(time.time(), 3),
        "event": "admin-request",
        "method": request.method,
        "path": request.path,
        "query": request.query_string or None,
        "source": source,
        "client": who,
        "status": status,
        "ms": round((time.monotonic() - started) * 1000, 1),
    }
    if outcome is not None:
        record["outcome"] = outcome
    changes = request.method not in ("GET", "HEAD")
    level = logging.WARNING if status in (401, 429) or (changes and status < 400) else logging.INFO
    access_log.log(level, json.dumps(record))


# --------------------------------------------------------------------------- handlers


def _status(request: web.Request) -> StatusView:
    return request.app[STATUS_KEY]


def _operations(request: web.Request) -> Operations:
    return request.app[OPERATIONS_KEY]


def _int_query(request: web.Request, name: str, default: int, top: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name}: expected a whole number, got {text!r}"}),
            content_type="application/json",
        ) from None
    return max(1, min(value, top))


async def health(request: web.Request) -> web.Response:
    """Liveness, without a token: the process answers; nothing else is said."""
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness, without a token: ready or not, never which check failed (/api/status)."""
    state = readiness(_status(request))
    return _json({"ready": state["ready"]}, 200 if state["ready"] else 503)


async def calls(request: web.Request) -> web.Response:
    sample = await request.app[SAMPLER_KEY].sample()
    return _json({"calls": call_views(_status(request), sample), "media_error": sample.error})


async def call_ladder(request: web.Request) -> web.Response:
    """One call's SIP ladder, both legs, by the call's key or either leg's Call-ID."""
    ref = request.match_info["ref"]
    found = ladder_view(_status(request), ref)
    if found is None:
        return _error(404, f"no ladder kept for {ref}")
    return _json(found)


async def ladders(request: web.Request) -> web.Response:
    return _json({"calls": ladder_list(_status(request))})


async def registrations(request: web.Request) -> web.Response:
    return _json({"registrations": registration_views(_status(request))})


async def phones(request: web.Request) -> web.Response:
    return _json({"phones": phone_views(_status(request))})


async def bans(request: web.Request) -> web.Response:
    return _json({"bans": ban_views(_status(request))})


async def lift_ban(request: web.Request) -> web.Response:
    address = request.match_info["address"]
    if _operations(request).lift_ban(address).lifted:
        return _json({"lifted": address})
    return _error(404, f"no active ban on {address}")


async def lift_spike_lock(request: web.Request) -> web.Response:
    if _operations(request).lift_spike_lock().lifted:
        return _json({"lifted": True})
    return _error(404, "outbound calling is not locked")


async def events(request: web.Request) -> web.Response:
    q = request.query
    since = None
    if "since" in q:
        try:
            since = float(q["since"])
        except ValueError:
            return _error(400, "since: expected Unix seconds")
    found = request.app[OBSERVATORY_KEY].recent(
        limit=_int_query(request, "limit", 100, 2000),
        since=since,
        side=q.get("side"),
        rule=q.get("rule"),
        action=q.get("action"),
        source=q.get("source"),
    )
    return _json({"events": found})


async def timeline(request: web.Request) -> web.Response:
    return _json({"buckets": request.app[OBSERVATORY_KEY].timeline(time.time())})


async def certificates(request: web.Request) -> web.Response:
    status = _status(request)
    return _json({"certificates": certificate_views(status), "provider": provider_view(status)})


async def reload_certificates(request: web.Request) -> web.Response:
    result = _operations(request).reload_certificates("admin API")
    if result.error is not None:
        return _error(409, result.error)
    return _json({"reloaded": True, "certificates": certificate_views(_status(request))})


async def config_check(request: web.Request) -> web.Response:
    check = await _operations(request).check_configuration()
    return _json(
        {
            "file": check.file,
            "valid": check.valid,
            "problems": list(check.problems),
            "restart_needed": list(check.restart_needed),
        }
    )


async def config_reload(request: web.Request) -> web.Response:
    """Check the file; when valid, apply what can change live (certificates) and say what
    else needs a restart. A bad file changes nothing."""
    result = await _operations(request).reload_configuration()
    if not result.valid:
        return _json({"valid": False, "applied": [], "problems": list(result.problems)}, 422)
    return _json(
        {
            "valid": True,
            "applied": list(result.applied),
            "certificate_error": result.certificate_error,
            "restart_needed": list(result.restart_needed),
            "problems": [],
        },
        200 if result.ok else 409,
    )


async def call_records(request: web.Request) -> web.Response:
    q = request.query
    wanted = {k: q[k] for k in ("caller", "callee", "outcome", "call_id") if k in q}

    def match(record: dict[str, Any]) -> bool:
        return all(str(record.get(k)) == v for k, v in wanted.items())

    view = _status(request)
    record_file = view.call_record_stats().file
    if record_file is None:
        return _json({"records": []})
    found = await asyncio.to_thread(
        view.call_records,
        limit=_int_query(request, "limit", 100, 5000),
        match=match if wanted else None,
    )
    return _json({"records": found, "file": record_file})


async def status_page(request: web.Request) -> web.Response:
    """Everything the status page shows, in one answer."""
    view = _status(request)
    sampler = request.app[SAMPLER_KEY]
    sample = await sampler.sample()
    active = call_views(view, sample)
    rates = sampler.rates()
    seen = request.app[OBSERVATORY_KEY]
    bans = ban_views(view)
    return _json(
        {
            "time": time.time(),
            "ready": readiness(view),
            "provider": provider_view(view),
            "calls": active,
            "counts": {
                "calls": len(active),
                "encrypted": sum(1 for c in active if c["encrypted"]),
                "registrations": len(view.registrations()),
                "bans": len(bans),
                "call_setups": seen.call_setups,
                "call_refusals": sum(seen.call_refusals.values()),
            },
            "load": {
                "packets_per_second": rates["packets_per_second"],
                "workers": rates["workers"],
                "worker_states": media_worker_views(view),
                "media_error": sample.error,
            },
            "certificates": certificate_views(view),
            "ladders": ladder_list(view)[:20],
            "bans": bans,
            "phones": phone_views(view),
            "timeline": seen.timeline(time.time()),
            "events": seen.recent(limit=20),
        }
    )


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    text = await render_metrics(app[STATUS_KEY], app[OBSERVATORY_KEY], app[SAMPLER_KEY])
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The page runs only its own script, in no frame; answers are not cached."""
    response = await handler(request)
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


# --------------------------------------------------------------------------- app


def build_app(
    status: StatusView,
    operations: Operations,
    observatory: Observatory,
    token: str | None,
    sampler: MediaSampler | None = None,
) -> web.Application:
    """The admin application (also what tests drive with aiohttp's test client)."""
    app = web.Application(middlewares=[headers_middleware, access_middleware])
    app[STATUS_KEY] = status
    app[OPERATIONS_KEY] = operations
    app[OBSERVATORY_KEY] = observatory
    app[SAMPLER_KEY] = sampler or MediaSampler(status)
    app[TOKEN_KEY] = token.encode() if token else None
    app[FAILURES_KEY] = {}
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, show_index=False)
    app.router.add_get("/metrics", metrics)
    api = [
        ("GET", "/api/health", health),
        ("GET", "/api/ready", ready),
        ("GET", "/api/status", status_page),
        ("GET", "/api/calls", calls),
        ("GET", "/api/calls/{ref}/ladder", call_ladder),
        ("GET", "/api/ladders", ladders),
        ("GET", "/api/registrations", registrations),
        ("GET", "/api/phones", phones),
        ("GET", "/api/bans", bans),
        ("DELETE", "/api/bans/{address}", lift_ban),
        ("POST", "/api/spike-lock/lift", lift_spike_lock),
        ("GET", "/api/events", events),
        ("GET", "/api/events/timeline", timeline),
        ("GET", "/api/certificates", certificates),
        ("POST", "/api/certificates/reload", reload_certificates),
        ("GET", "/api/config/check", config_check),
        ("POST", "/api/config/reload", config_reload),
        ("GET", "/api/cdr", call_records),
        ("GET", "/api/openapi.json", openapi),
    ]
    for method, path, handler in api:
        app.router.add_route(method, path, handler)
    return app


def build_metrics_app(
    status: StatusView, observatory: Observatory, sampler: MediaSampler
) -> web.Application:
    """The scrape-only application for ``admin.metrics_listen``."""
    app = web.Application()
    app[STATUS_KEY] = status
    app[OBSERVATORY_KEY] = observatory
    app[SAMPLER_KEY] = sampler
    app.router.add_get("/metrics", metrics)
    return app


class AdminServer:
    """Runs the admin application (and the metrics one) on the configured addresses."""

    def __init__(
        self,
        settings: AdminSettings,
        *,
        status: StatusView,
        operations: Operations,
        observatory: Observatory,
        limits: LimitsSettings | None = None,
        limit_counters: LimitCounters | None = None,
        on_security: SecurityHandler | None = None,
    ) -> None:
        self._status = status
        #: [limits] of the listeners (docs/robustness.md "Limits"; gateway/admin/limits.py).
        self._limits = limits or LimitsSettings()
        self._limit_counters = limit_counters or LimitCounters()
        self._on_security = on_security
        self._listeners: list[AdminListener] = []
        self._operations = operations
        self._observatory = observatory
        self._settings = settings
        self._runners: list[web.AppRunner] = []
        self._sampling: asyncio.Task[None] | None = None
        self.sampler = MediaSampler(status)
        #: Bound (address, port) of the admin and the metrics sites, once started.
        self.address: tuple[str, int] | None = None
        self.metrics_address: tuple[str, int] | None = None
        self.scheme = "http"

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self._settings
        if s.tls_certificate is None or s.tls_private_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(s.tls_certificate, s.tls_private_key)
        if s.client_ca is not None:
            context.load_verify_locations(s.client_ca)
            # OPTIONAL: a browser without a certificate may still log in with the token.
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    async def start(self) -> None:
        s = self._settings
        token = os.environ.get(s.token_env) or None
        if token is None and s.client_ca is None:
            raise AdminStartupError(
                f"admin.enabled is true but ${s.token_env} is empty: set a strong token "
                "(`gateway audit` checks it) or configure mutual TLS (admin.client_ca)"
            )
        try:
            context = self._ssl_context()
        except (OSError, ssl.SSLError) as exc:
            raise AdminStartupError(f"admin TLS: {exc}") from None
        self.scheme = "https" if context is not None else "http"
        app = build_app(self._status, self._operations, self._observatory, token, self.sampler)
        self.address = await self._serve("admin", app, s.listen, context)
        log.info("admin surface on %s://%s:%d/", self.scheme, *self.address)
        if s.metrics_listen is not None:
            metrics_app = build_metrics_app(self._status, self._observatory, self.sampler)
            self.metrics_address = await self._serve("metrics", metrics_app, s.metrics_listen)
            log.info("metrics on http://%s:%d/metrics", *self.metrics_address)
        self._sampling = asyncio.get_running_loop().create_task(self._sample_forever())

    async def _serve(
        self,
        name: str,
        app: web.Application,
        listen: str,
        context: ssl.SSLContext | None = None,
    ) -> tuple[str, int]:
        """``app`` on a listener of its own that applies [limits] at accept and per request
        (gateway/admin/limits.py) instead of aiohttp's site, which has no limits."""
        limits = self._limits
        runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=limits.idle_timeout,
            max_line_size=limits.admin_max_header_bytes,
            max_field_size=limits.admin_max_header_bytes,
        )

        def protocol() -> asyncio.Protocol:
            server = runner.server
            assert server is not None, "set up before the first connection"
            return server()

        listener = AdminListener(
            name, limits, self._limit_counters, protocol, context, self._on_security
        )
        app.middlewares.insert(0, limits_middleware(listener))  # first: before the token check
        await runner.setup()
        self._runners.append(runner)
        await listener.start(*parse_listen(listen))
        self._listeners.append(listener)
        return listener.address

    async def _sample_forever(self) -> None:
        """A sample every two seconds, so rates exist even for the first scrape."""
        while True:
            try:
                await self.sampler.sample()
            except Exception:  # never let the page's helper take the gateway down
                log.exception("media sampling failed")
            await asyncio.sleep(2.0)

    async def stop(self) -> None:
        if self._sampling is not None:
            self._sampling.cancel()
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
