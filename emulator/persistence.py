"""``--persist``: the emulator's whole state kept in ``{state_dir}/state.pickle`` across restarts.

The local stack (``make run``) keeps the app's state in a persistent Azurite; without this, a restarted
emulator would forget the tenants, grants, refresh tokens, mail, delta tokens and subscriptions the
app's stored state refers to, and every connected mailbox would go ``needs_reauth``.

Invariants:

* The file is only ever replaced whole (temp file in the same folder, fsync, ``os.replace``), so a
  crash or SIGKILL leaves the previous snapshot or the new one, never a torn file.
* A snapshot is written at most ``interval`` seconds after a change (every request the server
  answers counts as one; saves are coalesced) and once more on a clean stop, so a SIGKILL loses at
  most the last ``interval``.
* A snapshot is loaded only if it was written by code with the same shape of persisted classes
  (``SCHEMA``); otherwise, or if it cannot be read, the emulator starts fresh (plus its seed), says so
  on stderr and moves the old file aside as ``state.pickle.unreadable``.
* The file is a pickle: it is read only from the emulator's own local state folder, which holds its TLS
  private keys too; never point ``--state-dir`` at files from elsewhere.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import threading
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Protocol

from emulator.core import Principal
from emulator.directory import App, Grant, Tenant, User
from emulator.identity import AccessTokenRecord, AuthCode, PendingRequest
from emulator.mail_delta import Behaviour, DeltaQuery, DeltaRound, DeltaState, RoundEntry, SkipState
from emulator.mail_model import Attachment, ChangeEntry, Folder, Mailbox, Message, TextRendering
from emulator.mail_send_model import HeldSubmission, OutboxEntry, SendingState, UploadSession
from emulator.mail_subscriptions import Subscription
from emulator.state import EmulatorConfig, EmulatorState, FaultRule

log = logging.getLogger("emulator.persistence")

STATE_FILE = "state.pickle"
_PERSISTED = (
    EmulatorConfig, FaultRule, Tenant, User, App, Grant, PendingRequest, AuthCode, AccessTokenRecord, Principal,
    Folder, Attachment, Message, TextRendering, ChangeEntry, Mailbox, DeltaQuery, Behaviour, RoundEntry,
    DeltaRound, SkipState, DeltaState, Subscription, SendingState, OutboxEntry, UploadSession,
    HeldSubmission,
)
# The field names of every persisted class: a snapshot from code with other shapes is not loaded.
SCHEMA = tuple(
    (cls.__qualname__, tuple(f.name for f in fields(cls))) for cls in _PERSISTED if is_dataclass(cls)
)


class Snapshotting(Protocol):
    """What a StateFile keeps: the Graph emulator's state, or the Google emulator's."""

    def snapshot(self) -> dict[str, bytes]: ...

    def restore(self, parts: dict[str, bytes]) -> None: ...


class StateFile:
    """Loads ``state`` from, and saves it to, ``{folder}/{file_name}`` (``state.pickle`` for the Graph
    emulator's :class:`EmulatorState`); see the module invariants. ``schema`` is what a snapshot must
    have been written with to be loaded."""

    def __init__(
        self,
        state: EmulatorState | Snapshotting,
        folder: Path,
        interval: float = 0.5,
        *,
        file_name: str = STATE_FILE,
        schema: tuple[object, ...] = SCHEMA,
    ) -> None:
        self.state = state
        self.path = Path(folder) / file_name
        self.schema = schema
        self.interval = interval
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._save_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def load(self) -> bool:
        """Restore the state from the file; True if it did. A missing file is a first start (False)."""
        if not self.path.exists():
            return False
        try:
            data = pickle.loads(self.path.read_bytes())  # noqa: S301 (see the module docstring)
            if not isinstance(data, dict) or data.get("schema") != self.schema:
                raise ValueError("it was written by a version of the emulator with other state classes")
            self.state.restore(data["parts"])
        except Exception as exc:  # any unreadable snapshot means "start fresh", never "fail to start"
            aside = self.path.with_name(self.path.name + ".unreadable")
            os.replace(self.path, aside)
            log.warning("emulator state in %s not restored (%s); starting fresh, old file kept as %s",
                        self.path, type(exc).__name__ if not isinstance(exc, ValueError) else exc, aside.name)
            return False
        return True

    def save(self) -> None:
        """Write the current state: a temp file in the same folder, fsynced, then renamed over the file."""
        with self._save_lock:
            blob = pickle.dumps({"schema": self.schema, "parts": self.state.snapshot()})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(blob)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, self.path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise

    def changed(self) -> None:
        """Note a change; the saver thread writes it within ``interval`` seconds."""
        self._dirty.set()

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="emulator-state-saver", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the saver and write a last snapshot (a clean shutdown loses nothing). Idempotent."""
        if self._thread is None:
            return
        self._stopping.set()
        self._dirty.set()
        self._thread.join()
        self._thread = None
        self.save()

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            if self._stopping.wait(self.interval):  # coalesce the changes of the next interval into one save
                return
            self._dirty.clear()
            try:
                self.save()
            except Exception:  # a full disk must not kill the saver; the next change tries again
                log.exception("could not save the emulator state to %s", self.path)
