"""``gateway ha status`` and ``gateway ha notify {master|backup|fault|stop}``.

The contract keepalived's notify script and the HA drills rely on (keep it stable):

- ``gateway ha notify STATE [--config FILE | --socket PATH]`` asks the running gateway's
  control socket (``POST /ha/notify``, ``{"state": STATE}``) and returns within about a
  second, whatever happens: the gateway acts in the background. Exit status 0 always (keepalived
  must never wait on us, nor log a failing script for a gateway that is down anyway); what went
  wrong is printed on stderr. ``--strict`` exits 1 instead when the gateway did not take it.
- ``gateway ha notify`` also records the word in ``ha-vrrp-state`` in the ``[state]`` folder
  (with ``--config``), for ``gateway ha check``.
- ``gateway ha check [--config FILE]`` is keepalived's ``track_script``: exit 0 while the
  gateway answers as standby, promoting or active; 1 when it does not answer, is starting or
  fenced (keepalived then gives this box's addresses up). A standby on a box keepalived last
  called master (a notify it missed while restarting) is told ``master`` again.
- ``gateway ha status [--json]`` (``GET /ha``): role (starting, standby, promoting, active,
  fenced), node, peer, Redis reachable, the active's node and epoch, last sync, calls held
  (live on the active, the warm copy on the standby), replication lag. Exit 1 when no gateway
  answers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, GatewayConfig, default_config_path, load_config
from gateway.control import ControlError, control_request
from gateway.ha.role import NOTIFY_STATES

__all__ = ["add_ha_commands", "check_decision", "format_ha_status"]

#: Seconds `ha notify` waits for the control socket: keepalived must not wait on us.
NOTIFY_TIMEOUT = 1.0


def _target(args: argparse.Namespace) -> Any:
    if args.socket:
        return args.socket
    try:
        return load_config(args.config or default_config_path())
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


#: keepalived's last word on this box, beside the state it concerns.
VRRP_FILE = "ha-vrrp-state"
#: Roles in which the box may hold the site's addresses (keepalived's track_script passes).
HEALTHY = ("standby", "promoting", "active")


def _vrrp_file(target: Any) -> Path | None:
    if isinstance(target, GatewayConfig):
        return Path(target.state.directory) / VRRP_FILE
    return None


def _record_word(target: Any, state: str) -> None:
    """Keep keepalived's word for ``ha check`` (a gateway restarting meanwhile misses it)."""
    path = _vrrp_file(target)
    if path is None:
        return
    with contextlib.suppress(OSError):
        temporary = path.with_suffix(".tmp")
        temporary.write_text(f"{state} {time.time():.3f}\n")
        os.replace(temporary, path)


def _last_word(target: Any) -> str | None:
    path = _vrrp_file(target)
    if path is None:
        return None
    try:
        return path.read_text().split()[0]
    except (OSError, IndexError):
        return None


def check_decision(role: str | None, word: str | None) -> tuple[int, bool]:
    """``ha check``'s exit status, and whether to tell the gateway ``master`` again."""
    if role not in HEALTHY:
        return 1, False
    return 0, role == "standby" and word == "master"


def cmd_ha_notify(args: argparse.Namespace) -> int:
    failed = 1 if args.strict else 0
    target = _target(args)
    if target is None:
        return failed
    _record_word(target, args.state)
    try:
        answer = control_request(
            target, "POST", "/ha/notify", {"state": args.state}, timeout=NOTIFY_TIMEOUT
        )
    except ControlError as exc:
        print(f"error: ha notify {args.state}: {exc}", file=sys.stderr)
        return failed
    print(f"ha notify {args.state}: node {answer.get('node')} is {answer.get('role')}")
    return 0


def cmd_ha_check(args: argparse.Namespace) -> int:
    target = _target(args)
    if target is None:
        return 1
    try:
        role = control_request(target, "GET", "/ha", timeout=NOTIFY_TIMEOUT).get("role")
    except ControlError as exc:
        print(f"ha check: no gateway answers: {exc}", file=sys.stderr)
        return 1
    status, repair = check_decision(role, _last_word(target))
    if repair:
        print("ha check: keepalived said master, the gateway is standby: telling it again")
        with contextlib.suppress(ControlError):
            control_request(target, "POST", "/ha/notify", {"state": "master"}, timeout=1.0)
    elif status:
        print(f"ha check: the gateway is {role}", file=sys.stderr)
    return status


def cmd_ha_status(args: argparse.Namespace) -> int:
    target = _target(args)
    if target is None:
        return 2
    try:
        data = control_request(target, "GET", "/ha")
    except ControlError as exc:
        if exc.status == 404:
            print("error: this gateway is not one of an HA pair ([ha] enabled)", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else format_ha_status(data, time.time()))
    return 0


def _ago(value: Any, now: float) -> str:
    if not isinstance(value, (int, float)):
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))
    return f"{stamp} UTC ({max(0.0, now - value):.1f}s ago)"


def format_ha_status(data: dict[str, Any], now: float) -> str:
    """The table ``gateway ha status`` prints."""
    redis = data.get("redis") or {}
    reachable = "yes" if redis.get("reachable") else f"NO ({redis.get('error')})"
    active = data.get("active")
    active_text = (
        f"{active['node']} (epoch {active['epoch']}, since {_ago(active.get('since'), now)})"
        if active
        else "none known"
    )
    lag = data.get("replication_lag_seconds")
    lines = [
        f"role:         {data.get('role')} (since {_ago(data.get('since'), now)})",
        f"node:         {data.get('node')}",
        f"peer:         {data.get('peer') or 'not named'}",
        f"site:         {data.get('site')}",
        f"redis:        reachable {reachable}",
        f"active:       {active_text}",
        f"last sync:    {_ago(data.get('last_sync'), now)}",
        f"calls held:   {data.get('calls_held')}",
        f"lag:          {'unknown' if lag is None else f'{lag:.3f} s'}",
    ]
    notify = data.get("last_notify")
    if notify:
        lines.append(f"last notify:  {notify['state']} at {_ago(notify.get('at'), now)}")
    takeover = data.get("takeover")
    if takeover:
        lines.append(
            f"takeover:     {takeover.get('restored')} of {takeover.get('replicated')} call(s), "
            f"media re-opened for {takeover.get('media')}, in {takeover.get('seconds')} s"
        )
    fifo = data.get("keepalived_fifo")
    if fifo:  # [ha] keepalived_fifo: what the gateway read of keepalived's notify FIFO
        lines.append(
            f"keepalived:   {fifo['path']}: last {fifo['last'] or 'none'}, {fifo['acted']} "
            f"word(s) acted on, {fifo['unknown']} unknown line(s), reopened {fifo['reopened']}"
        )
    if data.get("fence_reason"):
        lines.append(f"fenced:       {data['fence_reason']}")
    return "\n".join(lines)


def add_ha_commands(sub: Any) -> None:
    """``gateway ha ...`` under the top-level parser's sub-commands."""
    ha = sub.add_parser("ha", help="active/standby pair: role, keepalived's notify")
    ha_sub = ha.add_subparsers(dest="ha_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="configuration (its [control] socket)")
        p.add_argument("--socket", metavar="PATH", help="the gateway's control socket")

    p = ha_sub.add_parser("status", help="role, node, peer, Redis, last sync, calls held, lag")
    common(p)
    p.add_argument("--json", action="store_true", help="the gateway's answer as JSON")
    p.set_defaults(func=cmd_ha_status)
    p = ha_sub.add_parser(
        "check", help="keepalived's track_script: exit 0 while the gateway can hold the addresses"
    )
    common(p)
    p.set_defaults(func=cmd_ha_check)
    p = ha_sub.add_parser(
        "notify", help="keepalived's notify: tell the gateway its VRRP state (returns at once)"
    )
    p.add_argument("state", choices=NOTIFY_STATES, type=str.lower)
    common(p)
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when the gateway did not take the word"
    )
    p.set_defaults(func=cmd_ha_notify)
