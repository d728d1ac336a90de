"""Folders by role: the provider-neutral names of the folders every mailbox has.

A role's value is the key the use cases store a folder's cursor and subscription under (and the
``folder`` of a message read from it); it must never change, or stored cursors stop matching. Its
values predate the roles (they were Graph's well-known names), which is why ``SENT`` is ``sentitems``.
Each provider adapter maps roles to its own folder names (Graph: ``adapters.graph.mail.GRAPH_FOLDERS``).
A folder without a role (an org that syncs every folder) is named by the provider's folder id.
"""

from __future__ import annotations

from enum import StrEnum


class FolderRole(StrEnum):
    INBOX = "inbox"
    SENT = "sentitems"


DEFAULT_FOLDERS: tuple[str, ...] = (FolderRole.INBOX.value, FolderRole.SENT.value)
"""The folders an org that does not sync every folder syncs (and subscribes to): Inbox and Sent Items."""
