"""The opaque cursor of one IMAP folder, as the use cases store it (they never parse it).

``imap1 <uidvalidity> <last uid> <highestmodseq> <end uid>``: every message of the folder with a UID up to
``last uid`` (and received at or after the watermark) has been returned. ``end uid`` is 0 once the folder
is caught up (a delta link); otherwise (a next link) it is the last UID of the round in progress, so a
round has a fixed end and new mail waits for the next round. ``highestmodseq`` is the folder's HIGHESTMODSEQ
when the round started, never a later one (a later one may count mail past the round's end, which an idle
poll would then take for seen); 0 where the server has no CONDSTORE. A cursor of another UIDVALIDITY is void:
the folder's UIDs were renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "imap1"


@dataclass(frozen=True)
class FolderCursor:
    uidvalidity: int
    last_uid: int
    highestmodseq: int = 0
    end_uid: int = 0

    @property
    def caught_up(self) -> bool:
        return self.end_uid == 0

    def encode(self) -> str:
        return f"{PREFIX} {self.uidvalidity} {self.last_uid} {self.highestmodseq} {self.end_uid}"

    @classmethod
    def decode(cls, link: str) -> FolderCursor | None:
        """None for anything that is not a cursor of this adapter (the folder then restarts)."""
        parts = link.split()
        if len(parts) != 5 or parts[0] != PREFIX or not all(p.isdigit() for p in parts[1:]):
            return None
        uidvalidity, last_uid, modseq, end_uid = (int(p) for p in parts[1:])
        return cls(uidvalidity, last_uid, modseq, end_uid)
