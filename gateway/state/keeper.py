"""The glue between the cores and the state store: restore at start, save on change and at stop.

At start (before any listener opens) the keeper reads the saved documents and hands them to the
cores: registration bindings whose expiry is still ahead (the provider still routes their
calls to the gateway; when the provider link comes up, the registrar registers them again with
the phone's last credentials, as after any reconnect) and the caps' running totals. Bans keep
their own file (``gateway.ban_file``). While the gateway runs, ``save`` is called every
``[state] save_interval`` seconds and writes a kind only when its document changed, so a
burst of registrations is one write and a kill -9 loses at most that interval of changes; at
stop everything is written once more.

The monotonic core clock is tied to Unix time once per process (``wall_offset``): documents
exported twice without a change are then identical bytes and are not written again.

Problems with the store are logged (once per kind until it works again) and never raised: the
state in memory stays in force, and the gateway keeps serving.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from gateway.config import StateSettings
from gateway.policy import PolicyEngine
from gateway.sip.registrations import RegistrationTable
from gateway.state.local import LocalStateStore, StateStore, StateStoreError
from gateway.state.model import (
    CAPS,
    REGISTRATIONS,
    VERSION,
    CapsDocument,
    RegistrationsDocument,
    load_bindings,
    store_bindings,
)
from gateway.state.seal import Sealer

log = logging.getLogger("gateway.state")


class StateKeeper:
    """Restores and saves the site's state for one running gateway."""

    def __init__(
        self,
        settings: StateSettings,
        *,
        store: StateStore | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self.settings = settings
        self.store: StateStore = store or LocalStateStore(Path(settings.directory))
        # A malformed key raises here (StateKeyError): the gateway does not start on a typo.
        self.sealer = sealer or Sealer.from_os_environment(
            settings.key_env, settings.old_key_env, settings.site
        )
        #: Unix time minus the core clock, fixed at restore.
        self.wall_offset = 0.0
        self._written: dict[str, bytes] = {}
        self._failing: set[str] = set()
        #: Documents written and write failures, for tests and status.
        self.saves = 0
        self.save_errors = 0

    # ------------------------------------------------------------- start

    def restore(
        self,
        registrations: RegistrationTable,
        policy: PolicyEngine | None,
        now: float,
        wall: float,
    ) -> None:
        self.wall_offset = wall - now
        if not self.sealer.enabled:
            log.warning(
                "state: %s is not set, so phones' credentials are not saved: after a restart "
                "each registration is sent upstream again only when its phone refreshes it",
                self.settings.key_env,
            )
        bindings = 0
        document = self._load(REGISTRATIONS, RegistrationsDocument)
        if isinstance(document, RegistrationsDocument):
            if document.site != self.settings.site:
                log.warning(
                    "state: registrations saved for site %r, not %r: not restored",
                    document.site,
                    self.settings.site,
                )
            else:
                records = load_bindings(document, self.sealer)
                bindings = registrations.restore(records, now, wall)
        caps = self._load(CAPS, CapsDocument)
        if isinstance(caps, CapsDocument) and policy is not None:
            policy.import_caps(caps, now, wall)
        if self.sealer.failures:
            log.warning(
                "state: %d saved credential(s) did not open with %s (wrong or changed key?): "
                "those phones are registered again upstream when they refresh",
                self.sealer.failures,
                self.settings.key_env,
            )
        if self.sealer.opened_with_old_key:
            log.info(
                "state: %d credential(s) opened with %s; they are sealed with %s from now on",
                self.sealer.opened_with_old_key,
                self.settings.old_key_env,
                self.settings.key_env,
            )
        log.info(
            "state restored from %s: %d registration(s) still active, caps totals %s",
            self.settings.directory,
            bindings,
            "restored" if isinstance(caps, CapsDocument) else "none saved",
        )

    def _load(
        self, kind: str, kind_type: type[RegistrationsDocument] | type[CapsDocument]
    ) -> RegistrationsDocument | CapsDocument | None:
        try:
            data = self.store.load(kind)
        except StateStoreError as exc:
            log.error("state: %s not restored: %s", kind, exc)
            return None
        if data is None:
            return None
        try:
            document = msgspec.json.decode(data, type=kind_type)
        except msgspec.DecodeError as exc:
            log.error("state: %s not restored, the saved document is not valid: %s", kind, exc)
            return None
        if document.version != VERSION:
            log.error("state: %s not restored: unsupported version %d", kind, document.version)
            return None
        self._written[kind] = data  # unchanged state is not written again
        return document

    # ------------------------------------------------------------- running

    def save(
        self, registrations: RegistrationTable, policy: PolicyEngine | None, now: float
    ) -> None:
        """Write each kind whose document changed since it was last written."""
        wall = now + self.wall_offset
        bindings = store_bindings(registrations.export(now, wall), self.sealer, self.settings.site)
        self._save_kind(REGISTRATIONS, msgspec.json.encode(bindings))
        if policy is not None:
            self._save_kind(CAPS, msgspec.json.encode(policy.export_caps(now, wall)))

    def _save_kind(self, kind: str, data: bytes) -> None:
        if self._written.get(kind) == data:
            return
        try:
            self.store.save(kind, data)
        except StateStoreError as exc:
            self.save_errors += 1
            if kind not in self._failing:
                self._failing.add(kind)
                log.error("state: %s not saved (kept in memory): %s", kind, exc)
            return
        if kind in self._failing:
            self._failing.discard(kind)
            log.info("state: %s saved again", kind)
        self._written[kind] = data
        self.saves += 1
