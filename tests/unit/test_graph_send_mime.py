"""The Graph sender's MIME path (a reply whose original is gone from the mailbox): the threading headers
must reach the provider verbatim, or the reply does not thread on any side."""

from __future__ import annotations

from email import message_from_bytes, policy

from sync_core.adapters.graph.send import _mime
from sync_core.domain.model import EmailAddress
from sync_core.ports.send import OutgoingMessage, ReplyTarget

# Exchange's Message-IDs are long: folded at 78 columns, they used to come out as RFC 2047 encoded words.
ORIGINAL = "<AM0PR01MB1234A5B6C7D8E9F0A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6E7F8@AM0PR01MB1234.eurprd01.prod.outlook.com>"
EARLIER = "<thread-start-0123456789abcdef0123456789abcdef@mail.customer.example>"


def test_a_reply_by_mime_carries_long_threading_headers_verbatim() -> None:
    message = OutgoingMessage(
        send_id="s1", sender=EmailAddress("adele@contoso.example", "Adele"), to=(EmailAddress("pat@customer.example"),),
        cc=(), bcc=(), subject="RE: Question", content_type="text", content="Thanks",
        reply_to=ReplyTarget(ORIGINAL, references=(EARLIER, ORIGINAL)),
    )  # fmt: skip

    raw = _mime(message)

    parsed = message_from_bytes(raw, policy=policy.compat32)
    assert b"=?utf-8?" not in raw
    assert parsed["In-Reply-To"] == ORIGINAL
    assert parsed["References"].split() == [EARLIER, ORIGINAL]
