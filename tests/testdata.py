"""Where the tests' fixed data lives: tests/data, inside the checkout, so a clone of the
repository with nothing beside it runs every test."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"

#: The RFC 4475 torture messages, byte-exact (README.md there says where they come from,
#: INDEX.md gives each one's verdict, SHA256SUMS their digests).
RFC4475_DIR = DATA_DIR / "rfc4475"
