"""Attachments on drafts: one POST under 3 MB, upload sessions of 3 to 150 MB in ordered chunks of at most
4 MB through a pre-authenticated upload URL (learn.microsoft.com/graph/outlook-large-attachments)."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from emulator.client import EmulatorTenant
from tests.emulator.graph_get import get
from tests.emulator.test_mail_send import IMMUTABLE, SEND_SCOPES, draft_body, inbox_of, post

MB = 1024 * 1024


@pytest.fixture
def sender(tenant: EmulatorTenant) -> str:
    return tenant.delegated_token("adele", scopes=SEND_SCOPES)


@pytest.fixture
def draft(tenant: EmulatorTenant, sender: str) -> dict[str, Any]:
    return dict(post(tenant, sender, "/me/messages", draft_body(tenant)).json())


def session_for(tenant: EmulatorTenant, token: str, draft_id: str, size: int) -> requests.Response:
    item = {"attachmentType": "file", "name": "deck.pdf", "size": size, "contentType": "application/pdf"}
    return post(tenant, token, f"/me/messages/{draft_id}/attachments/createUploadSession", {"AttachmentItem": item})


def put(tenant: EmulatorTenant, url: str, data: bytes, start: int, total: int, **headers: str) -> requests.Response:
    """One fragment, without any Authorization header (the URL is pre-authenticated)."""
    range_ = f"bytes {start}-{start + len(data) - 1}/{total}"
    return tenant.session.put(
        url,
        data=data,
        headers={"Content-Range": range_, "Content-Type": "application/octet-stream", **headers},
        timeout=30,
    )


def test_a_small_attachment_is_added_in_one_post(tenant: EmulatorTenant, sender: str, draft: dict[str, Any]) -> None:
    body = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": "terms.txt",
        "contentType": "text/plain",
        "contentBytes": base64.b64encode(b"the terms").decode(),
    }

    added = post(tenant, sender, f"/me/messages/{draft['id']}/attachments", body)

    assert added.status_code == 201
    assert added.json()["size"] == 9
    listed = get(tenant, sender, f"/me/messages/{draft['id']}/attachments", IMMUTABLE).json()["value"]
    assert [a["name"] for a in listed] == ["terms.txt"]


def test_an_attachment_of_3_mb_or_more_is_refused_in_one_post(
    tenant: EmulatorTenant, sender: str, draft: dict[str, Any]
) -> None:
    body = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": "big.bin",
        "contentBytes": base64.b64encode(b"x" * (3 * MB - 1024)).decode(),
    }
    almost = post(tenant, sender, f"/me/messages/{draft['id']}/attachments", body)
    body["contentBytes"] = base64.b64encode(b"x" * (3 * MB)).decode()

    refused = post(tenant, sender, f"/me/messages/{draft['id']}/attachments", body)

    assert almost.status_code == 201
    assert refused.status_code in (400, 413)
    assert refused.json()["error"]["message"] == "Maximum request length exceeded."


def test_a_5_mb_attachment_goes_through_an_upload_session_in_ordered_chunks(
    tenant: EmulatorTenant, sender: str, draft: dict[str, Any]
) -> None:
    content = bytes(range(256)) * (5 * MB // 256)
    created = session_for(tenant, sender, draft["id"], len(content))
    assert created.status_code == 201
    session = created.json()
    assert session["nextExpectedRanges"] == ["0-"]
    url = session["uploadUrl"]
    assert "authtoken=" in urlsplit(url).query

    first = put(tenant, url, content[: 2 * MB], 0, len(content))
    out_of_order = put(tenant, url, content[3 * MB : 4 * MB], 3 * MB, len(content))
    second = put(tenant, url, content[2 * MB : 4 * MB], 2 * MB, len(content))
    last = put(tenant, url, content[4 * MB :], 4 * MB, len(content))

    assert (first.status_code, first.json()["nextExpectedRanges"]) == (200, [str(2 * MB)])
    assert first.json()["expirationDateTime"] == session["expirationDateTime"]
    assert out_of_order.status_code == 416
    assert (second.status_code, second.json()["nextExpectedRanges"]) == (200, [str(4 * MB)])
    assert last.status_code == 201
    assert last.content == b""
    attachment_id = last.headers["Location"].rsplit("('", 1)[1].rstrip("')")
    raw = get(tenant, sender, f"/me/messages/{draft['id']}/attachments/{attachment_id}/$value", IMMUTABLE)
    assert raw.content == content
    assert post(tenant, sender, f"/me/messages/{draft['id']}/send").status_code == 202
    [copy] = inbox_of(tenant, "megan")
    assert copy["hasAttachments"] is True


def test_upload_fragments_over_4_mb_or_not_matching_their_range_are_refused(
    tenant: EmulatorTenant, sender: str, draft: dict[str, Any]
) -> None:
    total = 6 * MB
    url = session_for(tenant, sender, draft["id"], total).json()["uploadUrl"]

    too_big = put(tenant, url, b"x" * (4 * MB + 1), 0, total)
    mismatched = tenant.session.put(url, data=b"abc", headers={"Content-Range": f"bytes 0-9/{total}"}, timeout=30)
    no_range = tenant.session.put(url, data=b"abc", timeout=30)

    assert too_big.status_code == 413
    assert mismatched.status_code == 400
    assert no_range.status_code == 400
    assert tenant.session.get(url, timeout=30).json()["nextExpectedRanges"] == ["0"]


def test_an_upload_url_needs_its_authtoken_and_ends_with_the_session(
    tenant: EmulatorTenant, sender: str, draft: dict[str, Any]
) -> None:
    url = session_for(tenant, sender, draft["id"], 3 * MB).json()["uploadUrl"]
    forged = url.split("authtoken=")[0] + "authtoken=guess"

    assert put(tenant, forged, b"x" * MB, 0, 3 * MB).status_code == 401
    assert tenant.session.delete(url, timeout=30).status_code == 204
    assert put(tenant, url, b"x" * MB, 0, 3 * MB).status_code == 404


def test_upload_sessions_are_for_3_mb_up_to_the_message_size_limit(
    tenant: EmulatorTenant, sender: str, draft: dict[str, Any]
) -> None:
    small = session_for(tenant, sender, draft["id"], 3 * MB - 1)
    too_big = session_for(tenant, sender, draft["id"], 36 * MB)
    tenant.client.configure(max_message_size_bytes=150 * MB)
    allowed = session_for(tenant, sender, draft["id"], 36 * MB)

    assert small.status_code == 400
    assert small.json()["error"]["code"] == "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "ErrorMessageSizeExceeded"
    assert allowed.status_code == 201


def test_attachments_and_upload_sessions_need_mail_read_write(tenant: EmulatorTenant, draft: dict[str, Any]) -> None:
    tenant.client.revoke_grant(tenant.users["adele"].id, tenant.app.client_id, reason="consent_removed")
    send_only = tenant.delegated_token("adele", scopes=["Mail.Read", "Mail.Send"])  # consent anew, no ReadWrite

    refused = session_for(tenant, send_only, draft["id"], 4 * MB)

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "ErrorAccessDenied"


def test_send_mail_over_graphs_4_mb_request_limit_is_413_and_sends_nothing(tenant: EmulatorTenant, sender: str) -> None:
    attachment = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": "big.bin",
        "contentBytes": base64.b64encode(b"x" * (3 * MB + MB // 2)).decode(),
    }

    answer = post(tenant, sender, "/me/sendMail", {"message": draft_body(tenant, attachments=[attachment])})

    assert answer.status_code == 413
    assert inbox_of(tenant, "megan") == []
