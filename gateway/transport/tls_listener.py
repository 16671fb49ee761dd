"""A TLS listener whose certificate can change while it runs (RFC 5246/8446 server side).

asyncio fixes a server's SSL context when the server is created. The listener is therefore
created with a small context of its own whose servername callback runs for every ClientHello
(with or without SNI, before OpenSSL picks a certificate) and switches that connection to the
context that is current at that moment: a rotated certificate is presented by the very next
connection while the established ones keep theirs. Without a current context the handshake is
refused. A client that never finishes its handshake is cut off by the server's
``ssl_handshake_timeout``.

(Upgrading accepted plain TCP with ``loop.start_tls`` instead loses the ClientHello under
uvloop, which starts reading right after ``connection_made`` and hands the first bytes to the
plain protocol: the handshake then never completes.)
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

log = logging.getLogger("gateway.transport")

ContextSource = Callable[[], ssl.SSLContext | None]


def rotating_server_context(contexts: ContextSource) -> ssl.SSLContext:
    """The listening context: each handshake is switched to ``contexts()`` as it starts.

    Only certificate and key come from the switched-to context (``SSL_set_SSL_CTX``); protocol
    limits and verification come from this one, so it has the same TLS 1.2+ floor and, like the
    gateway's server contexts, requests no client certificate.
    """
    base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    base.minimum_version = ssl.TLSVersion.TLSv1_2

    def switch(
        connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _base: ssl.SSLContext
    ) -> int | None:
        current = contexts()
        if current is None:
            log.warning("TLS handshake on the WAN listener refused: no server certificate loaded")
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        connection.context = current
        return None

    base.sni_callback = switch
    return base
