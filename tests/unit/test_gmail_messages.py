"""The Gmail adapter's reading of Gmail's JSON and batch answers (pure functions, no HTTP)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from sync_core.adapters.google.http import BatchItem, _retryable, classify, parse_batch_response
from sync_core.adapters.google.mail import (
    GmailMailSource,
    _parse_link,
    attachment_summaries,
    body_text,
    folder_of_labels,
    gmail_label,
    message_from_gmail,
)
from sync_core.domain.model import AttachmentSummary, EmailAddress, Mailbox
from sync_core.errors import DeltaTokenExpired, GoogleError, MailboxAccessDenied, MessageNotFound
from sync_core.ports import ReportsUsage, RequestUsage


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def headers(**values: str) -> list[dict[str, str]]:
    return [{"name": name.replace("_", "-"), "value": value} for name, value in values.items()]


METADATA = {
    "id": "18c1",
    "threadId": "18c0",
    "labelIds": ["SENT"],
    "snippet": "Hi Carol &amp; team",
    "internalDate": "1793523600000",
    "payload": {
        "mimeType": "multipart/mixed",
        "headers": headers(
            From="Adele <adele@acme.example>",
            To="Carol <Carol@Client.example>, dan@talent.example",
            Cc="erin@prospect.example",
            Bcc="secret@hidden.example",
            Subject="Offer",
            Date="Mon, 1 Nov 2026 09:00:00 +0000",
            Message_ID="<m1@acme.example>",
            In_Reply_To="<m0@client.example>",
            References="<root@client.example> <m0@client.example>",
        ),
    },
}


def test_a_metadata_message_becomes_a_mail_message_without_its_bcc() -> None:
    message = message_from_gmail(METADATA, "sentitems")

    assert message is not None
    assert message.source_id == "18c1"
    assert message.internet_message_id == "<m1@acme.example>"
    assert message.conversation_id == "18c0"
    assert message.sender == EmailAddress("adele@acme.example", "Adele")
    assert [a.address for a in message.to] == ["carol@client.example", "dan@talent.example"]
    assert [a.address for a in message.cc] == ["erin@prospect.example"]
    assert message.received_at == datetime.fromtimestamp(1793523600, UTC)
    assert message.sent_at == datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    assert message.in_reply_to == "<m0@client.example>"
    assert message.references == ("<root@client.example>", "<m0@client.example>")
    assert message.body_preview == "Hi Carol & team"
    assert message.body_text == ""
    assert message.header("bcc") is None
    assert "secret@hidden.example" not in repr(message)


def test_a_message_without_a_message_id_is_not_turned_into_a_message() -> None:
    item = {**METADATA, "payload": {"headers": headers(From="a@b.example", Subject="x")}}
    assert message_from_gmail(item, "inbox") is None


def test_a_draft_label_marks_the_message_a_draft() -> None:
    message = message_from_gmail({**METADATA, "labelIds": ["DRAFT"]}, "inbox")
    assert message is not None and message.is_draft


FULL = {
    "mimeType": "multipart/mixed",
    "parts": [
        {
            "mimeType": "multipart/alternative",
            "parts": [
                {"mimeType": "text/plain", "headers": headers(Content_Type='text/plain; charset="UTF-8"'),
                 "body": {"size": 12, "data": b64("Plain words\r\nsecond line")}},
                {"mimeType": "text/html", "body": {"size": 20, "data": b64("<p>Html words</p>")}},
            ],
        },
        {"mimeType": "image/png", "filename": "logo.png",
         "headers": headers(Content_ID="<logo>", Content_Disposition="inline"),
         "body": {"attachmentId": "a0", "size": 10}},
        {"mimeType": "application/pdf", "filename": "cv.pdf",
         "headers": headers(Content_Disposition='attachment; filename="cv.pdf"'),
         "body": {"attachmentId": "a1", "size": 1234}},
    ],
}  # fmt: skip


def test_the_body_is_the_plain_text_alternative_and_attachments_exclude_inline_images() -> None:
    assert body_text(FULL) == ("Plain words\nsecond line", False)
    assert attachment_summaries(FULL) == [AttachmentSummary("cv.pdf", 1234, "application/pdf")]


def test_an_html_only_body_is_converted_to_text() -> None:
    text, _ = body_text({"mimeType": "text/html", "body": {"data": b64("<div>Hello <b>there</b></div>")}})
    assert text == "Hello there"


def test_a_batch_answer_is_read_item_by_item_whatever_its_order() -> None:
    body = (
        b"--batch_x\r\nContent-Type: application/http\r\nContent-ID: <response-item-1>\r\n\r\n"
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
        b'{"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}\r\n'
        b"--batch_x\r\nContent-Type: application/http\r\nContent-ID: <response-item-0>\r\n\r\n"
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{"id": "18c1"}\r\n'
        b"--batch_x--\r\n"
    )
    items = parse_batch_response("multipart/mixed; boundary=batch_x", body)

    assert items["item-0"] == BatchItem(200, {"id": "18c1"})
    assert items["item-1"].status == 404


def rate_limited(reason: str) -> dict[str, object]:
    return {"error": {"code": 403, "message": "Rate limit", "errors": [{"domain": "usageLimits", "reason": reason}]}}


def test_quota_errors_are_retried_and_other_refusals_are_classified() -> None:
    assert _retryable(429, None)
    assert _retryable(403, rate_limited("userRateLimitExceeded"))
    assert _retryable(403, rate_limited("rateLimitExceeded"))
    assert not _retryable(403, rate_limited("insufficientPermissions"))
    assert isinstance(classify(403, rate_limited("insufficientPermissions")), MailboxAccessDenied)
    assert isinstance(classify(404, None), MessageNotFound)
    assert isinstance(classify(400, {"error": {"status": "FAILED_PRECONDITION"}}), GoogleError)


def test_folders_map_to_labels_and_back() -> None:
    assert gmail_label("inbox") == "INBOX"
    assert gmail_label("sentitems") == "SENT"
    assert gmail_label("Label_7") == "Label_7"
    assert folder_of_labels(["INBOX", "UNREAD"]) == "inbox"
    assert folder_of_labels(["SPAM"]) == "junkemail"


@pytest.mark.parametrize("link", ["link-1", "gmail:history:", "gmail:other:12", "https://graph.example/delta"])
def test_a_cursor_this_adapter_did_not_write_is_a_lost_state(link: str) -> None:
    with pytest.raises(DeltaTokenExpired):
        _parse_link(link)


def test_cursors_carry_the_history_id_and_page_token() -> None:
    assert _parse_link("gmail:history:123") == ("history", "123", "")
    assert _parse_link("gmail:history:123:tok") == ("history", "123", "tok")
    assert _parse_link("gmail:list:123:1793523599:tok") == ("list", "123", "1793523599:tok")


def test_the_gmail_source_reports_its_throttling_like_the_graph_one_and_nothing_for_an_unread_mailbox() -> None:
    source = GmailMailSource(lambda _m: None)  # type: ignore[arg-type, return-value]
    mailbox = Mailbox("org", "mb-1", "a@b.example", ("a@b.example",), datetime(2026, 1, 1, tzinfo=UTC))

    assert isinstance(source, ReportsUsage)
    assert source.usage_for(mailbox) == RequestUsage()
