"""Sealing the credentials in saved state: AES-256-GCM with a key from the environment.

Every field of saved state that carries a credential or a digest response (a phone's
Authorization headers; later SRTP keys) is sealed before it leaves the process: AES-GCM
(NIST SP 800-38D) with a 96-bit random nonce and a 256-bit key read from an environment
variable (``[state] key_env``, by default ``GATEWAY_STATE_KEY``: 64 hex digits or the base64
of 32 bytes). The associated data binds the field to its record (kind and id) and to the site,
so a sealed value moved to another record or another site's state does not open.

Without a key nothing sealed is written: the field is left out, never stored in clear. A field
that does not open (no key, a wrong key, altered bytes) is dropped and counted; the record it
belonged to is kept without it. During a key rotation the previous key
(``GATEWAY_STATE_KEY_OLD``) is tried for reading; everything is written with the new one.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Prefix of a sealed value: the format's version, so a later one can be told apart.
_PREFIX = "v1:"
_NONCE = 12
_CONTEXT = b"sip-media-gateway/state/v1"
#: Sealed fields remembered (one per binding; [limits] max_registrations is 10000 by default).
_CACHE_LIMIT = 50_000


class StateKeyError(ValueError):
    """The key in the environment is not a 256-bit key; the message names the variable."""


def parse_key(text: str, name: str) -> bytes:
    """A 256-bit key from 64 hex digits or base64 (standard or URL-safe alphabet)."""
    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        key = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise StateKeyError(
            f"{name} is not a 256-bit key: give 64 hex digits "
            "(python -c 'import secrets; print(secrets.token_hex(32))') or the base64 of 32 bytes"
        )
    return key


class Sealer:
    """Seals and opens fields of one site's saved state."""

    def __init__(self, key: bytes | None, site: str, *, old_key: bytes | None = None) -> None:
        self._aead = AESGCM(key) if key is not None else None
        self._old = AESGCM(old_key) if old_key is not None else None
        self._site = site.encode()
        #: Sealed fields that did not open (each dropped with its record kept).
        self.failures = 0
        #: Fields opened with the previous key (rewritten with the new one at the next save).
        self.opened_with_old_key = 0
        # kind -> (plaintext, sealed): an unchanged field keeps its sealed text, so unchanged
        # state exports to the same bytes and is not written again (and costs no encryption).
        self._sealed: dict[str, tuple[bytes, str]] = {}

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str], key_env: str, old_key_env: str, site: str
    ) -> Sealer:
        """The sealer of ``[state]``: keys from the environment (a malformed one is an error,
        so a typo never silently means "credentials not saved")."""
        key_text = environ.get(key_env)
        old_text = environ.get(old_key_env)
        key = parse_key(key_text, key_env) if key_text else None
        old = parse_key(old_text, old_key_env) if old_text else None
        return cls(key, site, old_key=old)

    @classmethod
    def from_os_environment(cls, key_env: str, old_key_env: str, site: str) -> Sealer:
        return cls.from_environment(os.environ, key_env, old_key_env, site)

    @property
    def enabled(self) -> bool:
        """Whether credentials can be saved (a key is configured)."""
        return self._aead is not None

    def _aad(self, kind: str) -> bytes:
        return b"|".join((_CONTEXT, kind.encode(), self._site))

    def seal(self, kind: str, plaintext: bytes) -> str | None:
        """The sealed text of ``plaintext``, or None without a key (then it is not saved)."""
        if self._aead is None:
            return None
        cached = self._sealed.get(kind)
        if cached is not None and cached[0] == plaintext:
            return cached[1]
        nonce = os.urandom(_NONCE)
        raw = nonce + self._aead.encrypt(nonce, plaintext, self._aad(kind))
        sealed = _PREFIX + base64.urlsafe_b64encode(raw).decode()
        if len(self._sealed) >= _CACHE_LIMIT:
            self._sealed.clear()
        self._sealed[kind] = (plaintext, sealed)
        return sealed

    def open(self, kind: str, sealed: str) -> bytes | None:
        """The plaintext, or None (counted) if it does not open with either key."""
        if not sealed.startswith(_PREFIX):
            self.failures += 1
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_PREFIX) :])
        except (binascii.Error, ValueError):
            self.failures += 1
            return None
        nonce, body = raw[:_NONCE], raw[_NONCE:]
        for aead, old in ((self._aead, False), (self._old, True)):
            if aead is None or len(nonce) != _NONCE:
                continue
            try:
                plain = aead.decrypt(nonce, body, self._aad(kind))
            except InvalidTag:
                continue
            if old:
                self.opened_with_old_key += 1
            return plain
        self.failures += 1
        return None
