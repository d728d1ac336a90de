"""Folders, messages, attachments, MIME and threading of the Graph emulator, over HTTPS (facts §4)."""

from __future__ import annotations

import base64
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from emulator.client import EmulatorClient, EmulatorTenant
from tests.emulator.graph_get import get

DEFAULT_FIELDS = {
    "@odata.context", "@odata.etag", "id", "createdDateTime", "lastModifiedDateTime", "changeKey", "categories",
    "receivedDateTime", "sentDateTime", "hasAttachments", "internetMessageId", "subject", "bodyPreview",
    "importance", "parentFolderId", "conversationId", "conversationIndex", "isDeliveryReceiptRequested",
    "isReadReceiptRequested", "isRead", "isDraft", "webLink", "inferenceClassification", "body", "sender", "from",
    "toRecipients", "ccRecipients", "bccRecipients", "replyTo", "flag",
}  # fmt: skip


def a_mime_message() -> bytes:
    """HTML with a text alternative, an inline image in multipart/related and a PDF attachment."""
    mime = EmailMessage()
    mime["From"] = "Bob Smith <bob@fabrikam.example>"
    mime["To"] = "Adele Vance <adele@contoso.example>"
    mime["Cc"] = "carol@fabrikam.example"
    mime["Subject"] = "Quarterly report"
    mime["Date"] = "Tue, 03 Mar 2026 10:00:00 +0100"
    mime["Message-ID"] = "<report-42@fabrikam.example>"
    mime["List-Unsubscribe"] = "<mailto:unsubscribe@fabrikam.example>"
    mime.set_content("See the report.")
    mime.add_alternative("<html><body><p>See the <b>report</b>.<img src='cid:logo'></p></body></html>", subtype="html")
    mime.get_payload()[1].add_related(
        b"\x89PNG-logo", maintype="image", subtype="png", cid="<logo>", filename="logo.png"
    )
    mime.add_attachment(b"%PDF-1.4 report", maintype="application", subtype="pdf", filename="report.pdf")
    return mime.as_bytes()


# -- messages --------------------------------------------------------------------------------------


def test_a_message_has_every_default_field_and_no_headers_unless_selected(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    ids = emulator_client.deliver(
        adele,
        subject="Hello",
        body="<p>" + "word " * 100 + "</p>",
        to=["adele@contoso.example"],
        cc=[{"address": "carol@fabrikam.example", "name": "Carol"}],
        **{"from": "Bob <bob@fabrikam.example>"},
        received="2026-03-02T12:00:00Z",
        attachments=[{"name": "logo.png", "content_type": "image/png", "size": 120, "is_inline": True}],
    )

    answer = get(tenant, token, f"/me/messages/{ids['id']}")

    message = answer.json()
    assert set(message) == DEFAULT_FIELDS
    assert message["id"] == ids["id"]
    assert message["internetMessageId"] == ids["internetMessageId"]
    assert message["@odata.etag"] == f'W/"{message["changeKey"]}"'
    assert message["receivedDateTime"] == "2026-03-02T12:00:00Z"
    assert message["from"] == {"emailAddress": {"name": "Bob", "address": "bob@fabrikam.example"}}
    assert message["sender"] == message["from"]
    assert message["ccRecipients"] == [{"emailAddress": {"name": "Carol", "address": "carol@fabrikam.example"}}]
    assert message["body"]["contentType"] == "html"
    assert len(message["bodyPreview"]) == 255
    assert message["bodyPreview"].startswith("word word")
    assert message["hasAttachments"] is False  # inline-only
    assert message["isRead"] is False
    assert message["flag"] == {"flagStatus": "notFlagged"}
    assert message["inferenceClassification"] == "focused"


def test_select_projects_properties_and_reveals_internet_message_headers(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    ids = emulator_client.deliver(
        adele,
        subject="Re: Plans",
        in_reply_to="<root@fabrikam.example>",
        references=["<root@fabrikam.example>"],
        headers=[{"name": "List-Id", "value": "<news.fabrikam.example>"}],
    )

    message = get(tenant, token, f"/me/messages/{ids['id']}", **{"$select": "subject,internetMessageHeaders"}).json()

    assert set(message) == {"@odata.context", "@odata.etag", "id", "subject", "internetMessageHeaders"}
    headers = {h["name"]: h["value"] for h in message["internetMessageHeaders"]}
    assert headers["In-Reply-To"] == "<root@fabrikam.example>"
    assert headers["References"] == "<root@fabrikam.example>"
    assert headers["Message-ID"] == ids["internetMessageId"]
    assert headers["List-Id"] == "<news.fabrikam.example>"
    bad = get(tenant, token, f"/me/messages/{ids['id']}", **{"$select": "subject,colour"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "RequestBroker--ParseUri"


def test_text_body_preference_converts_html_and_is_acknowledged(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    ids = emulator_client.deliver(
        adele,
        body="<html><head><style>p{}</style></head><body><p>Hi&nbsp;Adele,</p><p>See <b>this</b>.</p></body></html>",
    )

    answer = get(tenant, token, f"/me/messages/{ids['id']}", prefer='outlook.body-content-type="text"')

    assert answer.headers["Preference-Applied"] == 'outlook.body-content-type="text"'
    assert answer.json()["body"] == {"contentType": "text", "content": "Hi\xa0Adele,\r\n\r\nSee this."}


def test_html_is_the_default_body_format_even_for_plain_text_mail(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    ids = emulator_client.deliver(adele, body="Line one\nLine <two>", body_type="text")

    html = get(tenant, token, f"/me/messages/{ids['id']}").json()["body"]
    text = get(tenant, token, f"/me/messages/{ids['id']}", prefer='outlook.body-content-type="text"').json()["body"]

    assert html["contentType"] == "html"
    assert "Line one<br>" in html["content"]
    assert "Line &lt;two&gt;" in html["content"]
    assert text == {"contentType": "text", "content": "Line one\nLine <two>"}


def test_immutable_ids_survive_moves_while_rest_ids_change(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    ids = emulator_client.deliver(adele, subject="Keep me")
    immutable = 'IdType="ImmutableId"'

    shown = get(tenant, token, f"/me/messages/{ids['id']}", prefer=immutable)
    moved = emulator_client.move(adele, ids["immutableId"], "archive")

    assert shown.headers["Preference-Applied"] == 'IdType="ImmutableId"'
    assert shown.json()["id"] == ids["immutableId"]
    assert get(tenant, token, f"/me/messages/{ids['immutableId']}").json()["id"] == moved["id"]
    assert get(tenant, token, f"/me/messages/{ids['id']}").status_code == 404
    after = get(tenant, token, f"/me/messages/{ids['immutableId']}", prefer=immutable).json()
    assert after["id"] == ids["immutableId"]
    assert after["parentFolderId"] == moved["parentFolderId"] != ids["parentFolderId"]


def test_unknown_and_malformed_ids_get_exchange_errors(tenant: EmulatorTenant, token: str) -> None:
    unknown = get(tenant, token, "/me/messages/AAMkADAwATM0MDAAMS1hBGAAAunknownunknownAAA=")
    malformed = get(tenant, token, "/me/messages/not-an-id")
    no_folder = get(tenant, token, "/me/mailFolders('nonsense')")

    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "ErrorItemNotFound")
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, "ErrorInvalidIdMalformed")
    assert (no_folder.status_code, no_folder.json()["error"]["code"]) == (400, "ErrorInvalidIdMalformed")


def test_an_application_token_reads_any_mailbox_by_upn(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, adele: str
) -> None:
    ids = emulator_client.deliver(adele, subject="For the app")
    app_token = tenant.app_token()

    answer = get(
        tenant, app_token, f"/users/{tenant.users['adele'].upn}/messages/{ids['id']}", **{"$select": "subject"}
    )

    assert answer.json()["subject"] == "For the app"


# -- attachments and MIME --------------------------------------------------------------------------


def test_attachments_are_listed_with_select_and_paging(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    files = [{"name": f"file{n}.txt", "content_type": "text/plain", "size": 100 + n} for n in range(11)]
    content = base64.b64encode(b"hello world").decode()
    files.append({"name": "hello.txt", "content_type": "text/plain", "content_base64": content})
    ids = emulator_client.deliver(adele, subject="Files", attachments=files)

    first = get(tenant, token, f"/me/messages/{ids['id']}/attachments").json()
    second = get(tenant, token, first["@odata.nextLink"]).json()
    slim = get(
        tenant, token, f"/me/messages/{ids['id']}/attachments", **{"$select": "name,size,isInline", "$top": "20"}
    ).json()

    assert len(first["value"]) == 10
    assert len(second["value"]) == 2
    assert "@odata.nextLink" not in second
    hello = second["value"][1]
    assert hello["@odata.type"] == "#microsoft.graph.fileAttachment"
    assert hello["name"] == "hello.txt"
    assert hello["size"] == 11
    assert base64.b64decode(hello["contentBytes"]) == b"hello world"
    assert {"id", "lastModifiedDateTime", "contentType", "isInline"} <= set(hello)
    assert len(slim["value"]) == 12
    assert all("contentBytes" not in item for item in slim["value"])
    assert slim["value"][0]["size"] == 100
    assert get(tenant, token, f"/me/messages/{ids['id']}").json()["hasAttachments"] is True


def test_mime_delivery_is_parsed_and_value_returns_the_same_bytes(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    raw = a_mime_message()
    ids = emulator_client.deliver_mime(adele, raw)

    message = get(
        tenant,
        token,
        f"/me/messages/{ids['id']}",
        **{"$select": "subject,from,ccRecipients,sentDateTime,hasAttachments,body,internetMessageHeaders"},
    ).json()
    attachments = get(tenant, token, f"/me/messages/{ids['id']}/attachments", **{"$select": "name,size,isInline"})
    value = get(tenant, token, f"/me/messages/{ids['id']}/$value")

    assert ids["internetMessageId"] == "<report-42@fabrikam.example>"
    assert message["subject"] == "Quarterly report"
    assert message["from"]["emailAddress"] == {"name": "Bob Smith", "address": "bob@fabrikam.example"}
    assert message["ccRecipients"][0]["emailAddress"]["address"] == "carol@fabrikam.example"
    assert message["sentDateTime"] == "2026-03-03T09:00:00Z"
    assert "<b>report</b>" in message["body"]["content"]
    assert message["hasAttachments"] is True
    assert {"name": "List-Unsubscribe", "value": "<mailto:unsubscribe@fabrikam.example>"} in message[
        "internetMessageHeaders"
    ]
    listed = {(a["name"], a["size"], a["isInline"]) for a in attachments.json()["value"]}
    assert listed == {("logo.png", 9, True), ("report.pdf", 15, False)}
    assert value.headers["Content-Type"] == "message/rfc822"
    assert value.content == raw


def test_value_generates_mime_for_messages_delivered_as_fields(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    pdf = base64.b64encode(b"%PDF-1.4 tiny").decode()
    ids = emulator_client.deliver(
        adele,
        subject="Contract",
        body="<p>Signed copy attached.</p>",
        to=["adele@contoso.example"],
        attachments=[{"name": "contract.pdf", "content_type": "application/pdf", "content_base64": pdf}],
        **{"from": "Bob <bob@fabrikam.example>"},
    )

    raw = get(tenant, token, f"/me/messages/{ids['id']}/$value").content
    parsed = BytesParser(policy=policy.default).parsebytes(raw)

    assert parsed["Subject"] == "Contract"
    assert parsed["Message-ID"] == ids["internetMessageId"]
    assert parsed["From"] == "Bob <bob@fabrikam.example>"
    body = parsed.get_body(preferencelist=("html",))
    assert body is not None
    assert "Signed copy attached." in body.get_content()
    attachment = next(parsed.iter_attachments())
    assert attachment.get_filename() == "contract.pdf"
    assert attachment.get_content() == b"%PDF-1.4 tiny"


# -- threading and sending -------------------------------------------------------------------------


def test_send_files_a_copy_in_sent_items_and_in_each_recipient_inbox_without_bcc(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    megan = tenant.users["megan"]

    result = emulator_client.send(
        adele,
        subject="Lunch?",
        body="Noon?",
        to=[megan.mail],
        bcc=["adele.vance@" + tenant.domain, "boss@fabrikam.example"],
    )

    sent = get(tenant, token, f"/me/messages/{result['sent']['id']}").json()
    delivered = {d["user"]: d for d in result["delivered"]}
    assert set(delivered) == {megan.id, adele}  # the bcc alias reaches adele's own inbox
    megan_copy = emulator_client.message(megan.id, delivered[megan.id]["id"])
    assert sent["parentFolderId"] != delivered[adele]["parentFolderId"]
    assert sent["isRead"] is True
    assert [r["emailAddress"]["address"] for r in sent["bccRecipients"]] == [
        "adele.vance@" + tenant.domain,
        "boss@fabrikam.example",
    ]
    assert megan_copy["bccRecipients"] == []
    assert megan_copy["internetMessageId"] == sent["internetMessageId"]
    assert megan_copy["from"]["emailAddress"]["address"] == tenant.users["adele"].mail


def test_conversation_ids_follow_replies_within_a_mailbox_but_differ_across_mailboxes(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, adele: str
) -> None:
    megan = tenant.users["megan"].id
    question = emulator_client.send(adele, subject="Budget", to=[tenant.users["megan"].mail])
    asked_id = question["sent"]["internetMessageId"]
    answer = emulator_client.send(
        megan, subject="Re: Budget", to=[tenant.users["adele"].mail], in_reply_to=asked_id, references=[asked_id]
    )
    unrelated = emulator_client.deliver(adele, subject="Budget")

    adele_thread = {question["sent"]["conversationId"], answer["delivered"][0]["conversationId"]}
    megan_thread = {question["delivered"][0]["conversationId"], answer["sent"]["conversationId"]}

    assert len(adele_thread) == 1
    assert len(megan_thread) == 1
    assert adele_thread != megan_thread
    assert unrelated["conversationId"] not in adele_thread
    headers = emulator_client.message(adele, answer["delivered"][0]["id"])
    assert headers["internetMessageId"] == answer["sent"]["internetMessageId"]


def test_conversation_topic_groups_messages_without_reply_headers(emulator_client: EmulatorClient, adele: str) -> None:
    first = emulator_client.deliver(adele, subject="Weekly", conversation_topic="weekly-sync")
    second = emulator_client.deliver(adele, subject="Weekly (2)", conversation_topic="weekly-sync")

    assert first["conversationId"] == second["conversationId"]


# -- folders ---------------------------------------------------------------------------------------


def test_mail_folders_lists_top_level_folders_with_counts_and_pages(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    projects = emulator_client.create_folder(adele, "Projects")
    emulator_client.create_folder(adele, "Alpha", parent=projects["id"])
    for name in ("Receipts", "Travel"):
        emulator_client.create_folder(adele, name)
    emulator_client.deliver(adele, subject="unread")
    emulator_client.deliver(adele, subject="read", is_read=True)

    first = get(tenant, token, "/me/mailFolders").json()
    second = get(tenant, token, first["@odata.nextLink"]).json()
    children = get(tenant, token, f"/me/mailFolders/{projects['id']}/childFolders").json()["value"]

    folders = {f["displayName"]: f for f in first["value"] + second["value"]}
    assert len(first["value"]) == 10
    assert set(folders) == {
        "Archive",
        "Conversation History",
        "Deleted Items",
        "Drafts",
        "Inbox",
        "Junk Email",
        "Outbox",
        "Sent Items",
        "Sync Issues",
        "Projects",
        "Receipts",
        "Travel",
    }
    inbox = folders["Inbox"]
    assert (inbox["totalItemCount"], inbox["unreadItemCount"], inbox["isHidden"]) == (2, 1, False)
    assert folders["Projects"]["childFolderCount"] == 1
    assert folders["Sync Issues"]["childFolderCount"] == 3
    assert [c["displayName"] for c in children] == ["Alpha"]
    assert children[0]["parentFolderId"] == projects["id"]


@pytest.mark.parametrize(
    "path",
    ["mailFolders('inbox')", "mailfolders/Inbox", "mailFolders('INBOX')", "mailFolders/{id}", "mailFolders('{id}')"],
)
def test_folders_are_addressable_by_well_known_name_in_any_case_or_by_id(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str, path: str
) -> None:
    inbox_id = emulator_client.deliver(adele, subject="x")["parentFolderId"]

    folder = get(tenant, token, "/me/" + path.format(id=inbox_id)).json()

    assert (folder["id"], folder["displayName"], folder["totalItemCount"]) == (inbox_id, "Inbox", 1)


def test_messages_of_a_folder_are_listed_newest_first_and_filterable_by_internet_message_id(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    older = emulator_client.deliver(adele, subject="older", received="2026-03-01T08:00:00Z")
    newer = emulator_client.deliver(adele, subject="newer", received="2026-03-02T08:00:00Z")

    listed = get(tenant, token, "/me/mailFolders('inbox')/messages", **{"$select": "subject"}).json()["value"]
    found = get(
        tenant, token, "/me/messages", **{"$filter": f"internetMessageId eq '{older['internetMessageId']}'"}
    ).json()["value"]

    assert [m["id"] for m in listed] == [newer["id"], older["id"]]
    assert [m["id"] for m in found] == [older["id"]]
