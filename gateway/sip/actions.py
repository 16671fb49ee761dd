"""What the B2BUA core asks its glue to do: send bytes, drive media workers, record events.

Outputs are small immutable records (call events are typed, one class per kind, in
``gateway.sip.call_events``) drained with ``B2bua.actions()``, in the manner of
aioquic's ``datagrams_to_send`` and ``next_event``: the core decides, the glue performs.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.media.control import CloseCall, OpenStream, UpdateStream
from gateway.policy.events import SecurityEvent
from gateway.sip.call_events import CallEvent
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
class SecurityNotice:
    """A refusal, ban or lock decided by the policy engine: one structured log line each."""

    event: SecurityEvent


Action = SendMessage | MediaCommand | CallEvent | SecurityNotice
