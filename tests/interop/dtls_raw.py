"""Hand-built DTLS 1.2 hellos for a far end no TLS library will play: one that offers or
selects only the NULL SRTP protection profiles of RFC 5764 §4.1.2 (SRTP_NULL_HMAC_SHA1_80
0x0005, SRTP_NULL_HMAC_SHA1_32 0x0006). OpenSSL has no name for them
(``set_tlsext_use_srtp(b"SRTP_NULL_SHA1_80")`` fails with "srtp unknown protection profile"),
so neither pyOpenSSL nor aiortc can offer them; these bytes can.

Only the first flight is built: a ClientHello (RFC 6347 §4.2.1, RFC 5246 §7.4.1.2) or a
ServerHello (§7.4.1.3) answering the gateway's ClientHello, in one record of epoch 0 (RFC 6347
§4.1) holding one unfragmented handshake message (§4.2.2). Received datagrams are read back
into their hellos and extensions (the use_srtp extension, type 14, RFC 5764 §4.1.1).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

DTLS_1_2 = b"\xfe\xfd"
HANDSHAKE = 22
CLIENT_HELLO = 1
SERVER_HELLO = 2
USE_SRTP = 0x000E
NULL_HMAC_SHA1_80 = 0x0005
NULL_HMAC_SHA1_32 = 0x0006
#: ECDHE-ECDSA with AES-GCM and AES-CBC: the gateway's certificate is ECDSA P-256.
CIPHERS = (0xC02B, 0xC02C, 0xC009, 0xC00A)


def _extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def use_srtp(profiles: tuple[int, ...]) -> bytes:
    """The use_srtp extension's body: the profiles and an empty MKI (RFC 5764 §4.1.1)."""
    listed = b"".join(struct.pack("!H", p) for p in profiles)
    return struct.pack("!H", len(listed)) + listed + b"\x00"


def datagram(msg_type: int, body: bytes, message_seq: int = 0, record_seq: int = 0) -> bytes:
    """One record (epoch 0) holding one whole handshake message."""
    length = len(body).to_bytes(3, "big")
    message = bytes([msg_type]) + length + struct.pack("!H", message_seq) + b"\x00" * 3 + length
    fragment = message + body
    header = bytes([HANDSHAKE]) + DTLS_1_2 + b"\x00\x00" + record_seq.to_bytes(6, "big")
    return header + struct.pack("!H", len(fragment)) + fragment


def client_hello(profiles: tuple[int, ...]) -> bytes:
    """A ClientHello offering ``profiles`` as its only SRTP protection profiles."""
    ciphers = b"".join(struct.pack("!H", c) for c in CIPHERS)
    extensions = b"".join(
        [
            _extension(0x000A, b"\x00\x04\x00\x17\x00\x1d"),  # secp256r1, x25519
            _extension(0x000B, b"\x01\x00"),  # uncompressed points
            _extension(0x000D, b"\x00\x06\x04\x03\x08\x04\x04\x01"),  # signature algorithms
            _extension(USE_SRTP, use_srtp(profiles)),
            _extension(0x0017, b""),  # extended master secret
            _extension(0xFF01, b"\x00"),  # renegotiation_info (RFC 5746)
        ]
    )
    body = (
        DTLS_1_2
        + secrets.token_bytes(32)
        + b"\x00"  # no session id
        + b"\x00"  # no cookie
        + struct.pack("!H", len(ciphers))
        + ciphers
        + b"\x01\x00"  # null compression
        + struct.pack("!H", len(extensions))
        + extensions
    )
    return datagram(CLIENT_HELLO, body)


def server_hello(cipher: int, profile: int) -> bytes:
    """A ServerHello choosing ``cipher`` and the SRTP protection profile ``profile``."""
    extensions = b"".join(
        [
            _extension(0xFF01, b"\x00"),
            _extension(0x0017, b""),
            _extension(USE_SRTP, use_srtp((profile,))),
        ]
    )
    body = (
        DTLS_1_2
        + secrets.token_bytes(32)
        + b"\x00"
        + struct.pack("!HB", cipher, 0)
        + struct.pack("!H", len(extensions))
        + extensions
    )
    return datagram(SERVER_HELLO, body)


@dataclass(frozen=True)
class Hello:
    """A ClientHello or ServerHello read back: its cipher suites and extensions by type."""

    msg_type: int
    ciphers: tuple[int, ...]
    extensions: dict[int, bytes]

    def srtp_profiles(self) -> tuple[int, ...] | None:
        """The use_srtp extension's profiles, None without the extension."""
        data = self.extensions.get(USE_SRTP)
        if data is None:
            return None
        (length,) = struct.unpack_from("!H", data)
        return tuple(struct.unpack_from(f"!{length // 2}H", data, 2))


def hellos(data: bytes) -> list[Hello]:
    """The hellos in one datagram (whole epoch-0 handshake messages only)."""
    found = []
    offset = 0
    while offset + 13 <= len(data):
        kind, epoch, length = (
            data[offset],
            data[offset + 3 : offset + 5],
            data[offset + 11 : offset + 13],
        )
        size = struct.unpack("!H", length)[0]
        fragment = data[offset + 13 : offset + 13 + size]
        offset += 13 + size
        if kind != HANDSHAKE or epoch != b"\x00\x00":
            continue
        at = 0
        while at + 12 <= len(fragment):
            msg_type = fragment[at]
            total = int.from_bytes(fragment[at + 1 : at + 4], "big")
            frag_offset = int.from_bytes(fragment[at + 6 : at + 9], "big")
            frag_length = int.from_bytes(fragment[at + 9 : at + 12], "big")
            body = fragment[at + 12 : at + 12 + frag_length]
            at += 12 + frag_length
            if (
                msg_type in (CLIENT_HELLO, SERVER_HELLO)
                and frag_offset == 0
                and frag_length == total
            ):
                found.append(_hello(msg_type, body))
    return found


def _hello(msg_type: int, body: bytes) -> Hello:
    at = 2 + 32
    at += 1 + body[at]  # session id
    if msg_type == CLIENT_HELLO:
        at += 1 + body[at]  # cookie
        (size,) = struct.unpack_from("!H", body, at)
        ciphers = struct.unpack_from(f"!{size // 2}H", body, at + 2)
        at += 2 + size
        at += 1 + body[at]  # compression methods
    else:
        ciphers = struct.unpack_from("!H", body, at)
        at += 3
    extensions: dict[int, bytes] = {}
    if at + 2 <= len(body):
        (size,) = struct.unpack_from("!H", body, at)
        end = at + 2 + size
        at += 2
        while at + 4 <= end:
            kind, length = struct.unpack_from("!HH", body, at)
            extensions[kind] = body[at + 4 : at + 4 + length]
            at += 4 + length
    return Hello(msg_type, tuple(ciphers), extensions)
