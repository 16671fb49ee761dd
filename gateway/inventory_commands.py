"""``gateway phones`` and the audit's ``phone-firmware`` finding: the running gateway's phone
inventory (gateway/inventory.py) read over its local control socket (gateway/control.py).

The audit runs offline, from the configuration file; the inventory lives in the running
gateway. So the finding asks the control socket for ``/phones`` and holds what it answers
against the file's ``[inventory] minimum_firmware``; when no gateway answers it says n/a rather
than claiming anything about phones it has not seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.config import GatewayConfig
from gateway.control import ControlError, control_request
from gateway.inventory import MinimumFirmware, outdated_lines
from gateway.policy.audit import PhoneFirmwareFacts

__all__ = ["format_phones", "phone_firmware_facts"]

#: The audit waits this long for the running gateway's answer.
AUDIT_TIMEOUT = 5.0


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def format_phones(phones: Sequence[Mapping[str, Any]], now: float) -> str:
    """``gateway phones``: a row per phone; FIRMWARE is marked when below the minimum."""
    if not phones:
        return "no phones seen (a phone enters when it registers or calls)"
    header = ["PHONE", "ADDRESS", "TRANSPORT", "VENDOR", "MODEL", "FIRMWARE", "REGISTERED"]
    header += ["LAST SEEN", "USER AGENT"]
    rows = []
    for p in phones:
        firmware = str(p.get("firmware") or "-")
        if p.get("outdated"):
            firmware += f" (below {p.get('minimum_firmware')})"
        rows.append(
            [
                str(p.get("phone")),
                str(p.get("address")),
                str(p.get("transport")),
                str(p.get("vendor")),
                str(p.get("model") or "-"),
                firmware,
                "yes" if p.get("registered") else "no",
                _ago(now - float(p.get("last_seen_unix") or now)),
                str(p.get("user_agent") or "-"),
            ]
        )
    widths = [max(len(v) for v in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    outdated = sum(1 for p in phones if p.get("outdated"))
    lines.append(f"{len(phones)} phone(s), {outdated} below the minimum firmware")
    return "\n".join(lines)


def phone_firmware_facts(config: GatewayConfig) -> PhoneFirmwareFacts:
    """The running gateway's inventory against the file's minimum firmware versions."""
    minimums = config.inventory.minimum_firmware
    if not minimums:
        return PhoneFirmwareFacts(0)
    try:
        answer = control_request(config, "GET", "/phones", timeout=AUDIT_TIMEOUT)
    except ControlError as exc:
        return PhoneFirmwareFacts(len(minimums), unavailable=str(exc))
    phones = answer.get("phones") or []
    checked, below = outdated_lines(
        (
            (str(p.get("phone")), str(p.get("vendor")), p.get("model"), p.get("firmware"))
            for p in phones
        ),
        MinimumFirmware(minimums),
    )
    return PhoneFirmwareFacts(len(minimums), len(phones), checked, tuple(below))
