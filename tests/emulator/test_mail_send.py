"""Sending through the Graph emulator: drafts, send, sendMail (JSON and MIME), createReply, delivery to the
emulator's mailboxes and the outbox (docs/graph-send-facts.md)."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from typing import Any

import pytest
import requests

from emulator.client import EmulatorTenant
from tests.emulator.graph_get import get

SEND_SCOPES = ["Mail.ReadWrite", "Mail.Send", "User.Read"]
IMMUTABLE = 'IdType="ImmutableId"'


@pytest.fixture
def sender(tenant: EmulatorTenant) -> str:
    """A delegated token of adele that may write drafts and send."""
    return tenant.delegated_token("adele", scopes=SEND_SCOPES)


def post(tenant: EmulatorTenant, token: str, path: str, body: Any = None, **headers: str) -> requests.Response:
    return tenant.graph("POST", path, token, json=body, headers={"Prefer": IMMUTABLE, **headers})


def draft_body(tenant: EmulatorTenant, **extra: Any) -> dict[str, Any]:
    return {
        "subject": "Proposal",
        "body": {"contentType": "text", "content": "Here is the proposal."},
        "toRecipients": [{"emailAddress": {"address": tenant.users["megan"].mail}}],
        **extra,
    }


def inbox_of(tenant: EmulatorTenant, user: str) -> list[dict[str, Any]]:
    return tenant.client.folder_messages(tenant.users[user].id, "inbox")


# -- drafts ----------------------------------------------------------------------------------------


def test_a_created_draft_is_in_drafts_with_an_immutable_id_and_its_x_headers(
    tenant: EmulatorTenant, sender: str
) -> None:
    headers = [{"name": "x-crm-send-id", "value": "send-1"}]
    created = post(tenant, sender, "/me/messages", draft_body(tenant, internetMessageHeaders=headers))

    assert created.status_code == 201
    draft = created.json()
    assert draft["isDraft"] is True
    assert draft["id"].startswith("AAkALgAAAAAAHYQDEapmEc2byACqAC")  # the immutable id asked for
    assert draft["internetMessageId"].startswith("<")
    assert draft["from"]["emailAddress"]["address"] == tenant.users["adele"].mail
    read = get(
        tenant, sender, f"/me/messages/{draft['id']}", IMMUTABLE,
        **{"$select": "internetMessageHeaders,isDraft,parentFolderId,internetMessageId"},
    ).json()  # fmt: skip
    drafts = tenant.client.folder_messages(tenant.users["adele"].id, "drafts")
    assert read["parentFolderId"] == drafts[0]["parentFolderId"]
    assert {"name": "x-crm-send-id", "value": "send-1"} in read["internetMessageHeaders"]
    assert read["internetMessageId"] == draft["internetMessageId"]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([{"name": "In-Reply-To", "value": "<a@b>"}], "InvalidInternetMessageHeader"),
        ([{"name": f"x-h{n}", "value": "v"} for n in range(6)], "InvalidInternetMessageHeaderCollection"),
        ([], "InvalidInternetMessageHeaderCollection"),
    ],
)
def test_internet_message_headers_must_be_one_to_five_x_headers(
    tenant: EmulatorTenant, sender: str, headers: list[dict[str, str]], code: str
) -> None:
    refused = post(tenant, sender, "/me/messages", draft_body(tenant, internetMessageHeaders=headers))

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == code
    assert set(refused.json()["error"]) == {"code", "message", "innerError"}
    assert tenant.client.folder_messages(tenant.users["adele"].id, "drafts") == []


def test_a_draft_can_be_edited_and_a_sent_message_cannot_change_its_body(tenant: EmulatorTenant, sender: str) -> None:
    draft = post(tenant, sender, "/me/messages", draft_body(tenant)).json()

    edited = tenant.graph("PATCH", f"/me/messages/{draft['id']}", sender, json={"subject": "Proposal v2"})
    assert edited.status_code == 200
    assert edited.json()["subject"] == "Proposal v2"
    assert post(tenant, sender, f"/me/messages/{draft['id']}/send").status_code == 202

    refused = tenant.graph("PATCH", f"/me/messages/{draft['id']}", sender, json={"subject": "changed"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "ErrorInvalidPropertyUpdateSentMessage"
    read = tenant.graph("PATCH", f"/me/messages/{draft['id']}", sender, json={"isRead": False})
    assert read.status_code == 200


def test_deleting_a_draft_moves_it_to_deleted_items(tenant: EmulatorTenant, sender: str) -> None:
    draft = post(tenant, sender, "/me/messages", draft_body(tenant)).json()

    assert tenant.graph("DELETE", f"/me/messages/{draft['id']}", sender).status_code == 204

    assert tenant.client.folder_messages(tenant.users["adele"].id, "drafts") == []
    deleted = tenant.client.folder_messages(tenant.users["adele"].id, "deleteditems")
    assert [m["immutableId"] for m in deleted] == [draft["id"]]


# -- send ------------------------------------------------------------------------------------------


def test_sending_a_draft_keeps_its_immutable_id_in_sent_items_and_delivers_one_copy(
    tenant: EmulatorTenant, sender: str
) -> None:
    draft = post(tenant, sender, "/me/messages", draft_body(tenant, internetMessageHeaders=[
        {"name": "x-crm-send-id", "value": "send-7"}
    ])).json()  # fmt: skip

    sent = post(tenant, sender, f"/me/messages/{draft['id']}/send")

    assert sent.status_code == 202
    assert sent.content == b""
    copy = get(tenant, sender, f"/me/messages/{draft['id']}", IMMUTABLE, **{
        "$select": "isDraft,parentFolderId,internetMessageId,sentDateTime,internetMessageHeaders"
    }).json()  # fmt: skip
    sent_items = tenant.client.sent_items(tenant.users["adele"].id)
    assert [m["immutableId"] for m in sent_items] == [draft["id"]]
    assert copy["isDraft"] is False
    assert copy["parentFolderId"] == sent_items[0]["parentFolderId"]
    assert copy["internetMessageId"] == draft["internetMessageId"]
    assert copy["sentDateTime"] >= draft["createdDateTime"]
    assert not [h for h in copy["internetMessageHeaders"] if h["name"].lower() == "x-crm-send-id"]
    delivered = inbox_of(tenant, "megan")
    assert [m["internetMessageId"] for m in delivered] == [draft["internetMessageId"]]
    assert delivered[0]["immutableId"] != draft["id"]
    assert {"name": "x-crm-send-id", "value": "send-7"} in delivered[0]["internetMessageHeaders"]
    assert tenant.client.outbox(draft["internetMessageId"]) == []


def test_a_sent_draft_cannot_be_sent_again(tenant: EmulatorTenant, sender: str) -> None:
    draft = post(tenant, sender, "/me/messages", draft_body(tenant)).json()
    assert post(tenant, sender, f"/me/messages/{draft['id']}/send").status_code == 202

    again = post(tenant, sender, f"/me/messages/{draft['id']}/send")

    assert again.status_code == 400
    assert len(inbox_of(tenant, "megan")) == 1


def test_a_draft_without_recipients_is_not_sent(tenant: EmulatorTenant, sender: str) -> None:
    draft = post(tenant, sender, "/me/messages", {"subject": "nobody"}).json()

    refused = post(tenant, sender, f"/me/messages/{draft['id']}/send")

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "ErrorInvalidRecipients"
    assert tenant.client.sent_items(tenant.users["adele"].id) == []


def test_bcc_reaches_its_recipient_but_no_copy_shows_it_and_outside_addresses_go_to_the_outbox(
    tenant: EmulatorTenant, sender: str
) -> None:
    body = draft_body(
        tenant,
        ccRecipients=[{"emailAddress": {"address": "carol@fabrikam.example"}}],
        bccRecipients=[
            {"emailAddress": {"address": tenant.users["sales"].mail}},
            {"emailAddress": {"address": "dan@talent.example"}},
        ],
    )
    draft = post(tenant, sender, "/me/messages", body).json()

    assert post(tenant, sender, f"/me/messages/{draft['id']}/send").status_code == 202

    for user in ("megan", "sales"):
        [copy] = inbox_of(tenant, user)
        assert copy["bccRecipients"] == []
        assert not [h for h in copy["internetMessageHeaders"] if h["name"].lower() == "bcc"]
    sent = tenant.client.sent_items(tenant.users["adele"].id)
    assert len(sent[0]["bccRecipients"]) == 2
    [entry] = tenant.client.outbox(draft["internetMessageId"])
    assert entry["cc"] == ["carol@fabrikam.example"]
    assert entry["to"] == []
    assert sorted(entry["envelope"]) == ["carol@fabrikam.example", "dan@talent.example"]


def test_delivery_shows_in_the_recipients_delta_like_any_delivered_mail(tenant: EmulatorTenant, sender: str) -> None:
    megan = tenant.delegated_token("megan")
    first = get(tenant, megan, "/me/mailFolders/inbox/messages/delta").json()
    draft = post(tenant, sender, "/me/messages", draft_body(tenant)).json()
    assert post(tenant, sender, f"/me/messages/{draft['id']}/send").status_code == 202

    changes = get(tenant, megan, first["@odata.deltaLink"]).json()

    assert [m["internetMessageId"] for m in changes["value"]] == [draft["internetMessageId"]]


# -- sendMail --------------------------------------------------------------------------------------


def test_send_mail_answers_202_without_a_body_and_saves_to_sent_items_by_default(
    tenant: EmulatorTenant, sender: str
) -> None:
    answer = post(tenant, sender, "/me/sendMail", {"message": draft_body(tenant)})

    assert answer.status_code == 202
    assert answer.content == b""
    [sent] = tenant.client.sent_items(tenant.users["adele"].id)
    [delivered] = inbox_of(tenant, "megan")
    assert sent["isDraft"] is False
    assert delivered["internetMessageId"] == sent["internetMessageId"]
    assert delivered["subject"] == "Proposal"


def test_send_mail_with_save_to_sent_items_false_keeps_no_copy(tenant: EmulatorTenant, sender: str) -> None:
    answer = post(tenant, sender, f"/users/{tenant.users['adele'].id}/sendMail", {
        "message": draft_body(tenant), "saveToSentItems": False
    })  # fmt: skip

    assert answer.status_code == 202
    assert tenant.client.sent_items(tenant.users["adele"].id) == []
    assert len(inbox_of(tenant, "megan")) == 1


def test_send_mail_as_mime_keeps_the_message_id_and_threading_headers(tenant: EmulatorTenant, sender: str) -> None:
    mime = EmailMessage()
    mime["From"] = tenant.users["adele"].mail
    mime["To"] = tenant.users["megan"].mail
    mime["Bcc"] = "hidden@fabrikam.example"
    mime["Subject"] = "RE: Proposal"
    mime["Message-ID"] = "<crm-send-42@contoso.example>"
    mime["In-Reply-To"] = "<original@contoso.example>"
    mime["References"] = "<original@contoso.example>"
    mime.set_content("Agreed.")
    encoded = base64.b64encode(mime.as_bytes())

    answer = tenant.graph("POST", "/me/sendMail", sender, data=encoded, headers={"Content-Type": "text/plain"})

    assert answer.status_code == 202
    [sent] = tenant.client.sent_items(tenant.users["adele"].id)
    assert sent["internetMessageId"] == "<crm-send-42@contoso.example>"
    [copy] = inbox_of(tenant, "megan")
    names = {h["name"].lower(): h["value"] for h in copy["internetMessageHeaders"]}
    assert names["in-reply-to"] == "<original@contoso.example>"
    assert "bcc" not in names
    raw = get(tenant, tenant.delegated_token("megan"), f"/me/messages/{copy['id']}/$value").content
    assert b"hidden@fabrikam.example" not in raw
    assert [e["envelope"] for e in tenant.client.outbox("<crm-send-42@contoso.example>")] == [
        ["hidden@fabrikam.example"]
    ]


def test_send_mail_with_malformed_mime_is_400(tenant: EmulatorTenant, sender: str) -> None:
    answer = tenant.graph("POST", "/me/sendMail", sender, data=b"not base64 at all!", headers={
        "Content-Type": "text/plain"
    })  # fmt: skip

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "ErrorMimeContentInvalidBase64String"


# -- createReply -----------------------------------------------------------------------------------


def test_a_reply_draft_threads_on_the_original_and_arrives_threaded(tenant: EmulatorTenant, sender: str) -> None:
    megan = tenant.delegated_token("megan", scopes=SEND_SCOPES)
    original = post(tenant, megan, "/me/messages", {
        "subject": "Question", "toRecipients": [{"emailAddress": {"address": tenant.users["adele"].mail}}]
    }).json()  # fmt: skip
    assert post(tenant, megan, f"/me/messages/{original['id']}/send").status_code == 202
    [received] = inbox_of(tenant, "adele")

    reply = post(tenant, sender, f"/me/messages/{received['immutableId']}/createReply", {"comment": "Yes."})

    assert reply.status_code == 201
    draft = reply.json()
    assert draft["isDraft"] is True
    assert draft["subject"] == "RE: Question"
    assert draft["conversationId"] == received["conversationId"]
    assert draft["toRecipients"][0]["emailAddress"]["address"] == tenant.users["megan"].mail
    headers = get(tenant, sender, f"/me/messages/{draft['id']}", IMMUTABLE, **{
        "$select": "internetMessageHeaders"
    }).json()["internetMessageHeaders"]  # fmt: skip
    names = {h["name"]: h["value"] for h in headers}
    assert names["In-Reply-To"] == original["internetMessageId"]
    assert original["internetMessageId"] in names["References"]
    assert post(tenant, sender, f"/me/messages/{draft['id']}/send").status_code == 202
    thread = inbox_of(tenant, "megan")
    [answer] = [m for m in thread if m["internetMessageId"] == draft["internetMessageId"]]
    megan_sent = tenant.client.sent_items(tenant.users["megan"].id)
    assert answer["conversationId"] == megan_sent[0]["conversationId"]


# -- submission held in the Outbox -----------------------------------------------------------------


def test_a_held_submission_waits_in_the_outbox_until_released(tenant: EmulatorTenant, sender: str) -> None:
    adele = tenant.users["adele"].id
    draft = post(tenant, sender, "/me/messages", draft_body(tenant)).json()
    tenant.client.hold_submissions(adele)

    assert post(tenant, sender, f"/me/messages/{draft['id']}/send").status_code == 202
    assert post(tenant, sender, "/me/sendMail", {"message": draft_body(tenant, subject="second")}).status_code == 202

    waiting = get(tenant, sender, f"/me/messages/{draft['id']}", IMMUTABLE, **{"$select": "isDraft,parentFolderId"})
    outbox = tenant.client.folder_messages(adele, "outbox")
    assert waiting.json()["isDraft"] is False
    assert waiting.json()["parentFolderId"] == outbox[0]["parentFolderId"]
    assert len(outbox) == 2
    assert tenant.client.sent_items(adele) == []
    assert inbox_of(tenant, "megan") == []

    assert tenant.client.release_submissions(adele) == 2

    assert sorted(m["subject"] for m in tenant.client.sent_items(adele)) == ["Proposal", "second"]
    assert draft["id"] in {m["immutableId"] for m in tenant.client.sent_items(adele)}
    assert sorted(m["subject"] for m in inbox_of(tenant, "megan")) == ["Proposal", "second"]
    assert tenant.client.folder_messages(adele, "outbox") == []


# -- shapes and paths ------------------------------------------------------------------------------


def test_an_unknown_property_or_a_malformed_id_is_a_400(tenant: EmulatorTenant, sender: str) -> None:
    unknown = post(tenant, sender, "/me/messages", draft_body(tenant, colour="blue"))
    malformed = post(tenant, sender, "/me/messages/not-an-id/send")

    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "RequestBodyRead"
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "ErrorInvalidIdMalformed"


def test_an_application_drafts_and_sends_on_the_users_path(tenant: EmulatorTenant) -> None:
    tenant.client.set_app_roles(tenant.app.client_id, ["Mail.ReadWrite", "Mail.Send", "User.Read.All"])
    app = tenant.app_token()
    adele = tenant.users["adele"]
    attachment = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": "terms.txt",
        "contentBytes": base64.b64encode(b"terms").decode(),
    }

    draft = post(tenant, app, f"/users/{adele.upn}/messages", draft_body(tenant, attachments=[attachment])).json()
    sent = post(tenant, app, f"/users/{adele.id}/messages/{draft['id']}/send")

    assert sent.status_code == 202
    [copy] = inbox_of(tenant, "megan")
    assert copy["hasAttachments"] is True
    assert copy["from"]["emailAddress"]["address"] == adele.mail


def test_create_reply_all_answers_everyone_but_oneself(tenant: EmulatorTenant, sender: str) -> None:
    adele, megan = tenant.users["adele"], tenant.users["megan"]
    received = tenant.client.deliver(
        adele.id,
        subject="Plan",
        to=[adele.mail, "erin@fabrikam.example"],
        cc=[megan.mail],
        **{"from": "dan@talent.example"},
    )

    draft = post(tenant, sender, f"/me/messages/{received['immutableId']}/createReplyAll").json()

    to = [r["emailAddress"]["address"] for r in draft["toRecipients"]]
    cc = [r["emailAddress"]["address"] for r in draft["ccRecipients"]]
    assert to == ["dan@talent.example", "erin@fabrikam.example"]
    assert cc == [megan.mail]
    assert draft["conversationId"] == received["conversationId"]


@pytest.mark.parametrize(
    "change",
    [{"categories": "not-a-list"}, {"isRead": "yes"}, {"importance": "urgent"}, {"subject": 5}, {"flag": "x"}],
)
def test_a_property_of_the_wrong_shape_is_a_400_not_a_crash(
    tenant: EmulatorTenant, sender: str, change: dict[str, Any]
) -> None:
    draft = post(tenant, sender, "/me/messages", draft_body(tenant)).json()

    created = post(tenant, sender, "/me/messages", draft_body(tenant, **change))
    patched = tenant.graph("PATCH", f"/me/messages/{draft['id']}", sender, json=change)

    assert (created.status_code, patched.status_code) == (400, 400)


def test_without_the_immutable_id_preference_the_draft_id_is_gone_after_sending(
    tenant: EmulatorTenant, sender: str
) -> None:
    draft = tenant.graph("POST", "/me/messages", sender, json=draft_body(tenant)).json()
    state = tenant.client.message(tenant.users["adele"].id, draft["id"])

    assert tenant.graph("POST", f"/me/messages/{draft['id']}/send", sender).status_code == 202

    assert get(tenant, sender, f"/me/messages/{draft['id']}").status_code == 404  # a REST id changes on a move
    by_immutable = get(tenant, sender, f"/me/messages/{state['immutableId']}", IMMUTABLE)
    assert by_immutable.json()["isDraft"] is False
