"""The limits the SIP core enforces itself ([limits] in the configuration, docs/robustness.md).

The core reads no configuration file: the composition root builds a ``SipLimits`` from
``[limits]`` and hands it over in ``EdgeSettings``. Each limit has one counter, named here, that
the core increments in its counters (and so on /metrics) every time the limit is hit:

- ``max_headers`` / ``max_header_bytes``: a message with more header fields, or a longer header
  section, is not parsed further; a request is answered 513 (RFC 3261 §21.5.14), a response
  dropped;
- ``max_calls``: a new INVITE while that many calls (INVITE dialog pairs) exist is answered 503
  with Retry-After (§21.5.4); an INVITE to an emergency number is admitted whatever the count
  (docs/design.md §3.5);
- ``max_dialogs``: the same for a new SUBSCRIBE or REFER while that many dialog pairs of other
  methods exist (subscriptions, transfers): they never take a call's place;
- ``max_registrations``: a REGISTER that would create a new binding while that many exist is
  answered 503 with Retry-After; a refresh of a binding the gateway holds always passes.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Counter names (the glue's limits are in ``gateway.limits``).
MAX_MESSAGE_BYTES = "limit_max_message_bytes"
MAX_HEADER_BYTES = "limit_max_header_bytes"
MAX_HEADERS = "limit_max_headers"
MAX_CALLS = "limit_max_calls"
MAX_DIALOGS = "limit_max_dialogs"
MAX_REGISTRATIONS = "limit_max_registrations"

#: Seconds a phone is asked to wait (Retry-After) when a count limit is full.
RETRY_AFTER = 30


@dataclass(frozen=True, slots=True)
class SipLimits:
    """Limits of the SIP core; the defaults are [limits]'s."""

    #: Largest message (start line, headers and body) parsed, in bytes.
    max_message_bytes: int = 65535
    #: Largest header section (start line and headers, up to the empty line), in bytes.
    max_header_bytes: int = 16384
    #: Most header fields in one message (each Via, Contact ... line counts once).
    max_headers: int = 256
    #: Most calls (INVITE dialog pairs) at once.
    max_calls: int = 10000
    #: Most dialog pairs of other methods (SUBSCRIBE, REFER) at once.
    max_dialogs: int = 10000
    #: Most registration bindings at once.
    max_registrations: int = 10000
