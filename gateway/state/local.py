"""Where saved state lives: the ``StateStore`` interface and the local state folder.

A store keeps one document (bytes) per kind of state. The local store writes each as
``site-<kind>.json`` in the ``[state]`` folder, atomically: a temporary file in the same folder,
written, flushed and fsynced, then renamed over the old one (and the folder fsynced), so a
crash leaves the old document or the new one, never half of each. Files are mode 0600: saved
state names phones and addresses even where its credentials are sealed.

A shared store (Redis, for two gateways of one site) implements the same two methods; the
cores and the keeper do not change.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Protocol


class StateStoreError(Exception):
    """A document cannot be read or written; the message names where."""


class StateStore(Protocol):
    """One document per kind of state."""

    def load(self, kind: str) -> bytes | None:
        """The saved document of ``kind``, None if there is none."""
        ...

    def save(self, kind: str, data: bytes) -> None:
        """Replace the document of ``kind`` as a whole."""
        ...


class LocalStateStore:
    """Documents as files in the state folder."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, kind: str) -> Path:
        return self.directory / f"site-{kind}.json"

    def load(self, kind: str) -> bytes | None:
        path = self.path(kind)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateStoreError(f"{path}: cannot read: {exc.strerror}") from exc

    def save(self, kind: str, data: bytes) -> None:
        path = self.path(kind)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # mkstemp creates the file 0600, before a byte is written.
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            # The rename itself survives a power cut once the folder is synced.
            with contextlib.suppress(OSError):
                folder = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        except OSError as exc:
            raise StateStoreError(f"{path}: cannot write: {exc.strerror}") from exc
