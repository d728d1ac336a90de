"""Adding messages to Gmail mailboxes: ids, threads, history records and push, and delivery of sent
mail to the other emulated users (external recipients go to the control API's outbox).

Invariants:

* Message ids are 16 lower-case hex digits, unique per emulator; a message joins the thread of a
  message of the same mailbox that its ``In-Reply-To``/``References`` name, else starts its own
  thread (thread id = its message id).
* Every added message appends exactly one ``messageAdded`` history record; the watch (if any) is told
  after the state lock is released.
* A message sent to oneself is one message with SENT and INBOX (as Gmail shows it), not two copies.
"""

from __future__ import annotations

import re
import secrets
import time
from email.utils import make_msgid

from emulator.google import mime
from emulator.google.push import PushDeliverer
from emulator.google.state import GmailMessage, GoogleState, GoogleUser, OutboxEntry

DELIVERED_LABELS = ["INBOX", "UNREAD", "CATEGORY_PERSONAL"]
MESSAGE_ID = re.compile(r"<[^<>\s]+>")


def new_message_id() -> str:
    return secrets.token_hex(8)


def _thread_for(user: GoogleUser, raw: bytes) -> str | None:
    """The thread of the first message of the mailbox that ``raw``'s In-Reply-To/References name."""
    parsed = mime.parse(raw)
    for wanted in MESSAGE_ID.findall(f"{parsed.get('In-Reply-To', '')} {parsed.get('References', '')}"):
        thread = user.mailbox.threads_by_message_id.get(wanted)
        if thread is not None:
            return thread
    return None


def add_message(
    state: GoogleState,
    pusher: PushDeliverer,
    user: GoogleUser,
    raw: bytes,
    label_ids: list[str],
    *,
    internal_date_ms: int | None = None,
    thread_id: str | None = None,
) -> GmailMessage:
    """Store ``raw`` in ``user``'s mailbox with ``label_ids``; records history and notifies the watch."""
    with state.lock:
        mailbox = user.mailbox
        message_id = new_message_id()
        mailbox.seq += 1
        message = GmailMessage(
            id=message_id,
            thread_id=thread_id or _thread_for(user, raw) or message_id,
            raw=raw,
            label_ids=list(dict.fromkeys(label_ids)),
            internal_date_ms=internal_date_ms if internal_date_ms is not None else int(time.time() * 1000),
            history_id=0,
            seq=mailbox.seq,
        )
        mailbox.messages[message_id] = message
        rfc822_id = mime.header(mime.parse(raw), "Message-ID").strip()
        if rfc822_id:
            mailbox.threads_by_message_id.setdefault(rfc822_id, message.thread_id)
        message.history_id = state.record(mailbox, "messageAdded", message)
        history_id, labels = message.history_id, list(message.label_ids)
    pusher.mailbox_changed(user.email, history_id, labels)
    return message


def modify_labels(
    state: GoogleState, pusher: PushDeliverer, user: GoogleUser, message: GmailMessage, *, add: list[str],
    remove: list[str],
) -> GmailMessage:
    """Add and remove labels (``messages.modify``, or the person filing mail): one ``labelsAdded`` and/or
    one ``labelsRemoved`` history record for what actually changed; the watch is told of each."""
    changes: list[tuple[int, list[str]]] = []
    with state.lock:
        added = [label for label in dict.fromkeys(add) if label not in message.label_ids]
        removed = [label for label in dict.fromkeys(remove) if label in message.label_ids and label not in added]
        if added:
            message.label_ids.extend(added)
            changes.append((state.record(user.mailbox, "labelsAdded", message, added), list(message.label_ids)))
        if removed:
            message.label_ids[:] = [label for label in message.label_ids if label not in removed]
            changes.append((state.record(user.mailbox, "labelsRemoved", message, removed), removed))
        if changes:
            message.history_id = user.mailbox.history_id
    for history_id, labels in changes:
        pusher.mailbox_changed(user.email, history_id, labels)
    return message


def ensure_message_id(raw: bytes, sender: str) -> bytes:
    """Gmail adds a Message-ID to a sent message that has none, and sets From to the sender."""
    parsed = mime.parse(raw)
    if parsed.get("Message-ID") is None:
        parsed["Message-ID"] = make_msgid(domain=sender.partition("@")[2] or "mail.gmail.local")
    if sender not in mime.addresses(parsed, "From"):
        del parsed["From"]
        parsed["From"] = sender
    return parsed.as_bytes()


def send(
    state: GoogleState, pusher: PushDeliverer, user: GoogleUser, raw: bytes, thread_id: str | None
) -> GmailMessage:
    """``messages.send``: the SENT copy in the sender's mailbox, INBOX copies for emulated recipients
    (without Bcc), one outbox entry for the external ones."""
    raw = ensure_message_id(raw, user.email)
    parsed = mime.parse(raw)
    recipients = list(dict.fromkeys(mime.addresses(parsed, "To", "Cc", "Bcc")))
    labels = ["SENT"] + (["INBOX", "UNREAD"] if user.email in recipients else [])
    sent = add_message(state, pusher, user, raw, labels, thread_id=thread_id)
    visible = mime.parse(raw)
    del visible["Bcc"]
    delivered_raw = visible.as_bytes()
    external = []
    for recipient in recipients:
        if recipient == user.email:
            continue
        with state.lock:
            target = state.users.get(recipient)
        if target is None:
            external.append(recipient)
        else:
            add_message(state, pusher, target, delivered_raw, list(DELIVERED_LABELS))
    if external:
        with state.lock:
            state.outbox.append(OutboxEntry(user.email, external, delivered_raw, mime.header(parsed, "Message-ID")))
    return sent
