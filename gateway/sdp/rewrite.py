"""Rewriting one leg's SDP for the other: the gateway's own origin, addresses and ports, and
nothing that names the other leg (RFC 8866 §5, RFC 3264 §5, §6, §8, RFC 3605, RFC 4568 §6.3).

These are the pieces of ``gateway.sdp.negotiation`` that touch a body's lines rather than the
offer/answer state: what to strip, how to anchor an m-line on the gateway, how to disable one,
what a peer signalled for its transport, and which crypto lines are usable at all.
"""

from __future__ import annotations

import hashlib
import secrets

from gateway.sdp.crypto import CryptoAttribute
from gateway.sdp.errors import SdpError
from gateway.sdp.model import Connection, MediaDescription, Origin, SessionDescription

# Attributes that describe one leg's transport or keys, or may carry its addresses: they are
# never copied to the other leg (the gateway writes its own where needed).
LEG_LOCAL_ATTRIBUTES = frozenset(
    {
        "crypto",
        "rtcp",
        "rtcp-mux",
        "rtcp-mux-only",
        "candidate",
        "remote-candidates",
        "end-of-candidates",
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "ice-lite",
        "ice-mismatch",
        "fingerprint",
        "setup",
        "connection",
        "tls-id",
        "zrtp-hash",
        "key-mgmt",
        "group",
        "ssrc",  # cname:user@<LAN address> is common
        "ssrc-group",
        "tool",  # names the phone's software (RFC 8866 §6.3): the other leg learns nothing
    }
)

_SENDS = frozenset({"sendrecv", "sendonly"})
_RECEIVES = frozenset({"sendrecv", "recvonly"})
_UNSPECIFIED = frozenset({"0.0.0.0", "::"})


class OriginKeeper:
    """The gateway's own o= toward one leg (RFC 8866 §5.2, RFC 3264 §5 and §8).

    One session id per leg and call; the version rises whenever the body we send changes.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        # Random, not clock-derived: this module has no clock, and it leaks nothing.
        self.sess_id = str(secrets.randbelow(9 * 10**11) + 10**11)
        self.version = 1
        # A digest of the last body's shape, not the body: only "did it change" is ever asked,
        # and a call holds two keepers for as long as it lasts.
        self._last: bytes | None = None

    def _origin(self, version: int) -> Origin:
        addrtype = "IP6" if ":" in self.address else "IP4"
        return Origin("-", self.sess_id, version, "IN", addrtype, self.address)

    def stamp(self, sd: SessionDescription) -> bytes:
        sd.origin = self._origin(0)
        shape = hashlib.blake2b(bytes(sd), digest_size=16).digest()
        if self._last is not None and shape != self._last:
            self.version += 1
        self._last = shape
        sd.origin = self._origin(self.version)
        return bytes(sd)


def mirror(md: MediaDescription) -> tuple[str, str, list[str]]:
    return (md.media, md.proto, list(md.formats) or ["0"])


def disable(md: MediaDescription, mirror: tuple[str, str, list[str]] | None = None) -> None:
    """Port 0 (RFC 3264 §6, §8.2), nothing that could name the other leg's transport."""
    if mirror is not None:
        md.media, md.proto, md.formats = mirror[0], mirror[1], list(mirror[2])
    md.port = 0
    md.port_count = None
    md.connection = None
    md.attributes.clear()


def strip_leg_local(attributes: list[tuple[str, str | None]]) -> None:
    attributes[:] = [a for a in attributes if a[0] not in LEG_LOCAL_ATTRIBUTES]


#: AVPF feedback (RFC 4585 §4.2) and reduced-size RTCP (RFC 5506 §5): nothing a phone
#: offered RTP/AVP may be told about.
FEEDBACK_ATTRIBUTES = frozenset({"rtcp-fb", "rtcp-rsize"})


def strip_feedback(attributes: list[tuple[str, str | None]]) -> None:
    attributes[:] = [a for a in attributes if a[0] not in FEEDBACK_ATTRIBUTES]


def anchor(md: MediaDescription, port: int, proto: str, address: str) -> None:
    md.port = port
    md.port_count = None
    md.proto = proto
    if md.connection is not None:
        md.connection = Connection(address)
    strip_leg_local(md.attributes)


def anchor_session(sd: SessionDescription, address: str) -> None:
    strip_leg_local(sd.attributes)
    # s=, i=, u=, e= and p= can name the phone, its model or its owner (RFC 8866 §5.3-5.6):
    # the other leg gets a blank session name and none of the rest.
    sd.replace_session_line("s", "s=-")
    for kind in ("i", "u", "e", "p"):
        sd.replace_session_line(kind, None)
    # A session-level c= is needed only as the default for m-lines without their own.
    if sd.connection is not None or any(md.connection is None for md in sd.media):
        sd.connection = Connection(address)


def peer_transport(
    md: MediaDescription, who: str
) -> tuple[tuple[str, int] | None, tuple[str, int] | None, str]:
    """(RTP address, RTCP address, direction) a peer signalled for one m-line."""
    conn = md.effective_connection
    if conn is None:
        raise SdpError(f"{who} m={md.media} has no c= line", status_hint=400)
    direction = md.direction
    host = conn.host
    if host in _UNSPECIFIED:
        # RFC 3264 §8.4: the old hold, "do not send to me"; same as withdrawing receive.
        direction = {"sendrecv": "sendonly", "recvonly": "inactive"}.get(direction, direction)
        return None, None, direction
    addr = (host, md.port)
    rtcp = md.rtcp
    # RFC 3605 a=rtcp when present, else the next port up (RFC 3550 §11).
    rtcp_addr = (rtcp.address or host, rtcp.port) if rtcp is not None else (host, md.port + 1)
    return addr, rtcp_addr, direction


def crypto_problem(crypto: CryptoAttribute) -> str | None:
    """Why a well-formed crypto line still cannot be used here, or None."""
    if crypto.mki is not None:
        return f"tag {crypto.tag}: MKI is not supported"
    for param in crypto.session_params:
        name = param.split("=", 1)[0]
        if name.startswith("-") or name == "WSH":
            continue  # optional (RFC 4568 §6.3.7) or a mere hint (§6.3.6)
        if name in ("UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP"):
            return f"tag {crypto.tag}: {name} turns protection off"
        return f"tag {crypto.tag}: unsupported session parameter {name}"
    return None


def phone_direction(phone: str, provider: str) -> str:
    """The stream's direction from the phone's point of view, given both SDPs' attributes."""
    sends = phone in _SENDS and provider in _RECEIVES
    receives = phone in _RECEIVES and provider in _SENDS
    if sends and receives:
        return "sendrecv"
    if sends:
        return "sendonly"
    if receives:
        return "recvonly"
    return "inactive"
