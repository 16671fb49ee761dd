"""What the B2BUA core asks its glue to do: send bytes, drive media workers, record events.

Outputs are small immutable records drained with ``B2bua.actions()``, in the manner of
aioquic's ``datagrams_to_send`` and ``next_event``: the core decides, the glue performs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.media.control import CloseCall, OpenStream, UpdateStream
from gateway.policy.events import SecurityEvent
from gateway.sip.peer import Peer


@dataclass(frozen=True)
class SendMessage:
    """Transmit ``data`` (one serialised SIP message or a keep-alive) to ``peer``."""

    peer: Peer
    data: bytes


@dataclass(frozen=True)
class MediaCommand:
    """Hand a control message to the media worker that owns the call."""

    command: OpenStream | UpdateStream | CloseCall


@dataclass(frozen=True)
class CallEvent:
    """One line of the call log: what happened to a call, with its identity.

    ``kind`` is a short verb ("started", "answered", "refused", "ended", "downgrade" ...);
    ``fields`` never holds keys or credentials.
    """

    kind: str
    call_id: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SecurityNotice:
    """A refusal, ban or lock decided by the policy engine: one structured log line each."""

    event: SecurityEvent


Action = SendMessage | MediaCommand | CallEvent | SecurityNotice
