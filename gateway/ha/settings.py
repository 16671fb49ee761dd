"""The ``[ha]`` table: one gateway of an active/standby pair, and the checks it needs.

A pair needs a shared store (``[state] redis_url``) and the state key in the environment (the
calls' SRTP keys and the phones' credentials travel sealed with it; without it the standby
could take over no call and no registration upstream). ``check-config`` and ``gateway run``
say so before anything opens.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

__all__ = ["HaSettings", "check_ha", "check_ha_environment"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class HaSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[ha]``: off by default (a single box)."""

    enabled: bool = False
    #: This box's name (in ``smg:<site>:ha:active`` and ``gateway ha status``); "" = host name.
    node: str = ""
    #: The other box's name, for status only.
    peer: str = ""
    #: Seconds between the active's writes of changed calls to Redis.
    replicate_interval: Annotated[float, msgspec.Meta(gt=0, le=5)] = 0.2
    #: keepalived's notify FIFO (``vrrp_notify_fifo``), read by the gateway itself: the words
    #: arrive in order, with no process start (gateway/ha/keepalived.py). "" = none (the notify
    #: script's ``gateway ha notify`` only).
    keepalived_fifo: str = ""
    #: The ``vrrp_sync_group`` whose lines the gateway acts on; "" = any group's.
    keepalived_group: str = ""


def check_ha(config: Any) -> list[tuple[str, str]]:
    """Cross-field checks of ``[ha]`` (the text only: no environment, no network)."""
    ha: HaSettings = config.ha
    if not ha.enabled:
        return []
    problems: list[tuple[str, str]] = []
    if config.state.redis_url is None:
        problems.append(
            (
                "ha.enabled",
                "an active/standby pair shares its state in Redis: set [state] redis_url",
            )
        )
    for field in ("node", "peer"):
        value = getattr(ha, field)
        if value and not _NAME.match(value):
            problems.append((f"ha.{field}", f"expected a host-like name, got {value!r}"))
    if ha.keepalived_fifo and not ha.keepalived_fifo.startswith("/"):
        problems.append(("ha.keepalived_fifo", "expected an absolute path"))
    if ha.node and ha.node == ha.peer:
        problems.append(("ha.peer", "the peer is this node: give each box its own name"))
    return problems


def check_ha_environment(config: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """What ``[ha]`` needs from the environment (checked by check-config and at start)."""
    if not config.ha.enabled:
        return []
    environ = os.environ if environ is None else environ
    key_env = config.state.key_env
    if environ.get(key_env):
        return []
    return [
        f"[ha] enabled needs the state key in ${key_env} (the same on both boxes): calls' SRTP "
        "keys and phones' credentials are replicated sealed with it, and without it the "
        "standby could take over none of them"
    ]
