"""Pure policy decisions: allowlists, flood and scan defence, bans, dial plan, caps, audit.

The signalling core asks :class:`PolicyEngine` and obeys its :class:`Verdict`; see
``engine.py`` for the hooks and when to call them. Nothing here does I/O except
``bans_store`` (the ban file) and ``audit.weak_words`` (a packaged word list).
"""

from gateway.policy.audit import AuditFinding, AuditView, audit, format_report
from gateway.policy.bans import BanRecord, PersistedBan
from gateway.policy.engine import ALLOWED, PolicyEngine, Verdict
from gateway.policy.events import SecurityEvent, encode_line
from gateway.policy.numbering import DialledNumber
from gateway.policy.settings import PolicySettings

__all__ = [
    "ALLOWED",
    "AuditFinding",
    "AuditView",
    "BanRecord",
    "DialledNumber",
    "PersistedBan",
    "PolicyEngine",
    "PolicySettings",
    "SecurityEvent",
    "Verdict",
    "audit",
    "encode_line",
    "format_report",
]
