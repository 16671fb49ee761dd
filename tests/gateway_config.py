"""Gateway configurations for tests: one builder with the defaults the tests share, one writer.

Every test that runs the gateway (a child ``gateway run`` in the interop tests, the in-process
site of the admin tests, the benchmark's gateway) describes it with keyword arguments to
:func:`gateway_settings`; what a single test needs beyond those (policy limits, the admin
surface, a state directory) is a nested mapping in ``extra``, merged over the result. The
result is written as TOML by :func:`gateway_toml`, so no test edits configuration text.

The shared defaults: one media worker, a quick reconnect to the provider (tests start and stop
providers), the LAN open to 127.0.0.0/8, and the production defaults for everything else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Settings = dict[str, Any]


def merge(base: Mapping[str, Any], *overrides: Mapping[str, Any] | None) -> Settings:
    """``base`` with each override merged in, tables recursively; a None value removes a key."""
    out: Settings = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for override in overrides:
        for key, value in (override or {}).items():
            if value is None:
                out.pop(key, None)
            elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge(out[key], value)
            else:
                out[key] = merge({}, value) if isinstance(value, Mapping) else value
    return out


def gateway_settings(
    *,
    lan_port: int,
    lan_media: tuple[int, int],
    wan_media: tuple[int, int],
    provider_port: int,
    certificate: str | Path,
    private_key: str | Path,
    ca_bundle: str | Path,
    lan_address: str = "127.0.0.20",
    wan_address: str = "127.0.0.21",
    provider_host: str = "127.0.0.1",
    domain: str = "127.0.0.1",
    transports: Sequence[str] | None = None,
    listen_port: int | None = None,
    server_name: str | None = None,
    srtp_suites: Sequence[str] = (),
    lan_allow: Sequence[str] = ("127.0.0.0/8",),
    reconnect_max: float = 2.0,
    extra: Mapping[str, Any] | None = None,
) -> Settings:
    """The configuration of a gateway on ``lan_address``/``wan_address`` in front of the
    provider at ``provider_host:provider_port``, as nested tables (see gateway/config.py).

    Optional arguments left at None are left out, so the gateway's own default applies.
    """
    lan: Settings = {
        "sip_address": lan_address,
        "sip_port": lan_port,
        "transports": list(transports) if transports is not None else None,
        "media_address": lan_address,
        "media_ports": list(lan_media),
    }
    wan: Settings = {
        "provider_host": provider_host,
        "provider_port": provider_port,
        "domain": domain,
        "sip_address": wan_address,
        "media_address": wan_address,
        "media_ports": list(wan_media),
        "listen_port": listen_port,
        "reconnect_min": 0.2,
        "reconnect_max": reconnect_max,
        "srtp_suites": list(srtp_suites) or None,
        "identity": {"certificate": str(certificate), "private_key": str(private_key)},
        "trust": {"ca_bundle": str(ca_bundle), "server_name": server_name},
    }
    base: Settings = {
        "lan": lan,
        "wan": wan,
        "media": {"workers": 1},
        "policy": {"allowlist": {"lan": list(lan_allow)}},
    }
    # Nones stand for "not set" in the arguments above as in ``extra``.
    return merge({}, base, extra)


def gateway_toml(settings: Mapping[str, Any]) -> str:
    """``settings`` as TOML: keys of a table first, then its sub-tables as [a.b] sections."""
    lines: list[str] = []
    _table(lines, (), settings)
    return "\n".join(lines).lstrip("\n") + "\n"


def write_gateway_config(path: Path, settings: Mapping[str, Any]) -> Path:
    """Write ``settings`` to ``path`` (``gateway run --config`` reads it) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if "control" not in settings:
        # Each test gateway its own control socket beside its file: the default one belongs
        # to a gateway service, and tests run side by side.
        settings = {**settings, "control": {"socket": "control.sock"}}
    path.write_text(gateway_toml(settings))
    return path


def _table(lines: list[str], name: tuple[str, ...], table: Mapping[str, Any]) -> None:
    subtables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    values = {k: v for k, v in table.items() if not isinstance(v, Mapping) and v is not None}
    if name and (values or not subtables):
        lines += ["", "[" + ".".join(_key(part) for part in name) + "]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in values.items()]
    for key, sub in subtables.items():
        _table(lines, (*name, key), sub)


def _key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "_-" for c in key)
    return key if bare else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no place in a gateway configuration")
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string is a valid TOML basic string (same escapes, \uXXXX for the rest).
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inline = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + inline + " }" if inline else "{}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
