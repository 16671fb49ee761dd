"""Expiry watch: one warning per certificate per threshold (30, 14, 7, 1 days by default).

Sans-IO: the caller passes the certificates it uses and the current time, on whatever period it
likes (hourly is plenty), and logs what comes back. Expired certificates are not this module's
business at start-up (``material.load_identity`` refuses them); at run time an expiry shows up
here as a warning with ``days_left < 0``, every check, because it needs action now.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.certs.inspect import common_name, days_left


@dataclass(frozen=True)
class ExpiryWarning:
    """A certificate that crossed a warning threshold."""

    #: File the certificate was loaded from.
    file: str
    #: Its subject common name (or full subject when it has none).
    subject: str
    not_after: dt.datetime
    #: Whole days left; negative once expired.
    days_left: int
    #: The smallest threshold crossed (None once expired).
    threshold: int | None

    def message(self) -> str:
        if self.days_left < 0:
            return f"{self.file}: certificate {self.subject!r} EXPIRED {self.not_after:%Y-%m-%d}"
        return (
            f"{self.file}: certificate {self.subject!r} expires {self.not_after:%Y-%m-%d}"
            f" ({self.days_left} days left)"
        )


class ExpiryWatch:
    """Remembers which thresholds were already reported for which certificate."""

    def __init__(self, warn_days: Iterable[int] = (30, 14, 7, 1)) -> None:
        self._thresholds = sorted({d for d in warn_days if d >= 0})
        # (file, fingerprint) -> smallest threshold already reported; a renewed certificate
        # has a new fingerprint and so starts afresh.
        self._reported: dict[tuple[str, bytes], int] = {}

    @property
    def window(self) -> int:
        """The largest threshold: anything expiring within it is worth a warning."""
        return self._thresholds[-1] if self._thresholds else 0

    def check(self, file: str, cert: x509.Certificate, now: dt.datetime) -> ExpiryWarning | None:
        left = days_left(cert, now)
        subject = common_name(cert.subject)
        if left < 0:
            return ExpiryWarning(file, subject, cert.not_valid_after_utc, left, None)
        crossed = [t for t in self._thresholds if left <= t]
        if not crossed:
            return None
        smallest = crossed[0]
        key = (file, cert.fingerprint(hashes.SHA256()))
        previous = self._reported.get(key)
        if previous is not None and previous <= smallest:
            return None
        self._reported[key] = smallest
        return ExpiryWarning(file, subject, cert.not_valid_after_utc, left, smallest)
