"""The OpenAPI 3.1 description of the admin API, served at ``/api/openapi.json``.

Kept next to the routes it describes (``gateway.admin.server.build_app``); a unit test checks
that every route is described and every described path is routed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_OBJ: dict[str, Any] = {"type": "object"}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or _OBJ}},
    }


_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "429": {"$ref": "#/components/responses/Throttled"},
}


def _op(
    summary: str,
    ok: str,
    *,
    params: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    schema: dict[str, Any] | None = None,
    tag: str = "status",
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _ok(ok, schema), **_ERRORS}
    responses.update(extra or {})
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": kind},
    }


_DIRECTION = {
    "type": "object",
    "properties": {
        "packets_in": {"type": "integer"},
        "packets_out": {"type": "integer"},
        "bytes_in": {"type": "integer"},
        "lost": {"type": "integer", "description": "RFC 3550 A.3, measured by the gateway"},
        "jitter_ms": {"type": "number", "description": "RFC 3550 A.8, measured by the gateway"},
        "far_end_reported_lost": {
            "type": "integer",
            "description": "from the receiving end's RTCP RR; -1 = none yet",
        },
        "far_end_reported_jitter_ms": {"type": "number"},
    },
}

_CALL = {
    "type": "object",
    "properties": {
        "call_id": {"type": "string"},
        "pair": {"type": "string"},
        "state": {"type": "string", "enum": ["calling", "early", "confirmed", "ended"]},
        "direction": {"type": "string", "enum": ["outbound", "inbound"]},
        "caller": {"type": ["string", "null"]},
        "callee": {"type": ["string", "null"]},
        "phone": {"type": ["string", "null"]},
        "provider": {"type": ["string", "null"]},
        "started": {"type": "string", "format": "date-time"},
        "answered": {"type": ["string", "null"], "format": "date-time"},
        "duration": {"type": "number"},
        "suite": {"type": ["string", "null"]},
        "keying": {"type": ["string", "null"], "enum": ["sdes", "dtls", None]},
        "encryption": {"type": "string", "enum": ["srtp", "pending", "plaintext-downgrade"]},
        "encrypted": {"type": "boolean"},
        "media": {
            "type": "object",
            "properties": {
                "streams": {"type": "integer"},
                "phone_to_provider": _DIRECTION,
                "provider_to_phone": _DIRECTION,
                "drops": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        },
    },
}


_LADDER_CALL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pair": {"type": ["string", "null"], "description": "null: refused before it started"},
        "call_ids": {
            "type": "object",
            "description": "the gateway's two Call-IDs of the call, by leg",
            "properties": {
                "lan": {"type": ["string", "null"]},
                "wan": {"type": ["string", "null"]},
            },
        },
        "caller_call_id": {"type": "string"},
        "callee_call_id": {"type": ["string", "null"]},
        "direction": {"type": ["string", "null"], "enum": ["outbound", "inbound", None]},
        "method": {"type": ["string", "null"]},
        "caller": {"type": ["string", "null"]},
        "callee": {"type": ["string", "null"]},
        "started": {"type": "string", "format": "date-time"},
        "ended": {"type": ["string", "null"], "format": "date-time"},
        "outcome": {"type": ["string", "null"], "description": "ended, failed, refused ..."},
        "messages": {"type": "integer", "description": "messages kept"},
        "dropped": {"type": "integer", "description": "messages seen over the bounds"},
    },
}

_LADDER_MESSAGE = {
    "type": "object",
    "properties": {
        "time": {"type": "string", "format": "date-time"},
        "time_unix": {"type": "number"},
        "side": {"type": "string", "enum": ["lan", "wan"]},
        "direction": {"type": "string", "enum": ["in", "out"], "description": "as the gateway"},
        "transport": {"type": "string"},
        "peer": {"type": "string", "description": "host:port of the far end"},
        "call_id": {"type": "string"},
        "first_line": {"type": "string"},
        "headers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
            },
        },
        "text": {
            "type": "string",
            "description": "the message with credentials, nonces and SDES keys redacted",
        },
        "truncated": {"type": "boolean"},
    },
}


_OPT_STRING = {"type": ["string", "null"]}
_PHONE = {
    "type": "object",
    "properties": {
        "phone": {"type": "string", "description": "user@ip"},
        "user": {"type": "string"},
        "address": {"type": "string", "description": "ip:port last signalled from"},
        "transport": {"type": "string"},
        "user_agent": {"type": "string"},
        "vendor": {"type": "string", "description": "unknown when no known phone matched"},
        "model": _OPT_STRING,
        "firmware": _OPT_STRING,
        "first_seen": {"type": "string", "format": "date-time"},
        "last_seen": {"type": "string", "format": "date-time"},
        "last_seen_unix": {"type": "number"},
        "registered": {"type": "boolean"},
        "minimum_firmware": _OPT_STRING,
        "outdated": {"type": "boolean"},
    },
}


def openapi_document() -> dict[str, Any]:
    """The document as a dict (serialised by the handler)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SIP/SRTP media encryption gateway: admin API",
            "version": "1",
            "description": "Status, calls, registrations, bans, security events, certificates, "
            "configuration and call records of one gateway. Every request needs the admin "
            "token as a bearer token (or a client certificate under mutual TLS); every request "
            "is logged. /metrics (Prometheus text), /api/health and /api/ready need no token.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "mutualTLS": {"type": "mutualTLS"},
            },
            "responses": {
                "Unauthorized": {"description": "missing or wrong token"},
                "Throttled": {"description": "too many failed attempts from this source"},
            },
        },
        "paths": {
            "/api/health": {
                "get": {
                    **_op("The process answers (no token: says nothing else)", "alive"),
                    "security": [],
                }
            },
            "/api/ready": {
                "get": {
                    **_op(
                        "Taking calls, provider connected over verified TLS, media workers up "
                        "(no token: says only ready or not; /api/status has the checks)",
                        "ready",
                        extra={"503": _ok("not ready")},
                    ),
                    "security": [],
                }
            },
            "/api/status": {"get": _op("Everything the status page shows", "status")},
            "/api/calls": {
                "get": _op(
                    "Active calls with parties, start time, suite and per-direction media counters",
                    "calls",
                    schema={
                        "type": "object",
                        "properties": {"calls": {"type": "array", "items": _CALL}},
                    },
                )
            },
            "/api/calls/{ref}/ladder": {
                "get": {
                    **_op(
                        "Both legs' SIP messages of a call in time order, secrets redacted",
                        "the call's ladder",
                        schema={
                            **_LADDER_CALL,
                            "properties": {
                                **_LADDER_CALL["properties"],
                                "messages": {"type": "array", "items": _LADDER_MESSAGE},
                                "kept": {"type": "integer"},
                            },
                        },
                        extra={"404": _ok("no ladder kept for this call")},
                    ),
                    "parameters": [
                        {
                            "name": "ref",
                            "in": "path",
                            "required": True,
                            "description": "the call's key (pair) or either leg's Call-ID",
                            "schema": {"type": "string"},
                        }
                    ],
                }
            },
            "/api/ladders": {
                "get": _op(
                    "Calls whose SIP ladders are kept: active ones and the last finished",
                    "calls",
                    schema={
                        "type": "object",
                        "properties": {"calls": {"type": "array", "items": _LADDER_CALL}},
                    },
                )
            },
            "/api/registrations": {
                "get": _op("Phones registered through the gateway", "registrations")
            },
            "/api/phones": {
                "get": _op(
                    "The phone inventory: every phone that registered or called, with vendor, "
                    "model and firmware from its User-Agent, address, transport, last seen, and "
                    "whether its firmware is below [inventory] minimum_firmware",
                    "phones",
                    schema={
                        "type": "object",
                        "properties": {"phones": {"type": "array", "items": _PHONE}},
                    },
                )
            },
            "/api/bans": {"get": _op("Active source bans", "bans", tag="security")},
            "/api/bans/{address}": {
                "delete": {
                    **_op(
                        "Lift the ban on an address",
                        "lifted",
                        tag="security",
                        extra={"404": _ok("no active ban on this address")},
                    ),
                    "parameters": [
                        {
                            "name": "address",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                }
            },
            "/api/spike-lock/lift": {
                "post": _op(
                    "Lift the lock on outbound calls set off by a call spike",
                    "lifted",
                    tag="security",
                    extra={"404": _ok("outbound calling is not locked")},
                )
            },
            "/api/events": {
                "get": _op(
                    "Recent security events, newest first",
                    "events",
                    tag="security",
                    params=[
                        _q("limit", "at most this many (1..2000, default 100)", "integer"),
                        _q("since", "only events at or after this Unix time", "number"),
                        _q("side", "lan or wan"),
                        _q("rule", "a rule or rule prefix, e.g. dialplan"),
                        _q("action", "drop, reject, ban, lift, expire, lock, unlock, emergency"),
                        _q("source", "source address"),
                    ],
                )
            },
            "/api/events/timeline": {
                "get": _op(
                    "Refusals, bans and calls per minute over the last hour",
                    "timeline",
                    tag="security",
                )
            },
            "/api/certificates": {
                "get": _op(
                    "Certificates in service and trust anchors, with time left; provider TLS",
                    "certificates",
                    tag="certificates",
                )
            },
            "/api/certificates/reload": {
                "post": _op(
                    "Reload the gateway certificate from its files (validated before the swap)",
                    "reloaded",
                    tag="certificates",
                    extra={"409": _ok("refused; the old certificate stays in service")},
                )
            },
            "/api/config/check": {
                "get": _op(
                    "Check the configuration file on disk; list problems and what would need a "
                    "restart",
                    "check result",
                    tag="configuration",
                )
            },
            "/api/config/reload": {
                "post": _op(
                    "Check the file and apply what can change live (certificates)",
                    "applied",
                    tag="configuration",
                    extra={
                        "422": _ok("the file has problems; nothing changed"),
                        "409": _ok("the certificate reload was refused"),
                    },
                )
            },
            "/api/cdr": {
                "get": _op(
                    "Call detail records, newest first",
                    "records",
                    tag="records",
                    params=[
                        _q("limit", "at most this many (1..5000, default 100)", "integer"),
                        _q("caller", "exact caller"),
                        _q("callee", "exact callee"),
                        _q("outcome", "completed, unanswered, failed, refused, cancelled"),
                        _q("call_id", "exact Call-ID"),
                    ],
                )
            },
            "/api/openapi.json": {"get": _op("This document", "OpenAPI 3.1")},
        },
    }
