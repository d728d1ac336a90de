"""Who may send and how much: Mail.Send (scope or app role), Mail.Send.Shared with Exchange mailbox rights,
Exchange Online's sending limits, and injected send faults (before, or after the message went out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from emulator.client import EmulatorClient, EmulatorTenant
from emulator.server import EmulatorServer
from tests.emulator.test_mail_send import SEND_SCOPES, draft_body, inbox_of, post
from tools.azurite import free_port


@pytest.fixture
def sender(tenant: EmulatorTenant) -> str:
    return tenant.delegated_token("adele", scopes=SEND_SCOPES)


def send_mail(tenant: EmulatorTenant, token: str, user: str = "me", **message: Any) -> requests.Response:
    path = "/me/sendMail" if user == "me" else f"/users/{tenant.users[user].upn}/sendMail"
    return post(tenant, token, path, {"message": {**draft_body(tenant), **message}})


def addresses(count: int) -> list[dict[str, Any]]:
    return [{"emailAddress": {"address": f"r{n}@fabrikam.example"}} for n in range(count)]


# -- permissions -----------------------------------------------------------------------------------


def test_sending_needs_mail_send_and_drafts_need_mail_read_write(tenant: EmulatorTenant) -> None:
    writer = tenant.delegated_token("adele", scopes=["Mail.ReadWrite"])
    draft = post(tenant, writer, "/me/messages", draft_body(tenant))

    refused_send = post(tenant, writer, f"/me/messages/{draft.json()['id']}/send")
    refused_send_mail = send_mail(tenant, writer)

    assert draft.status_code == 201
    assert refused_send.status_code == 403
    assert refused_send_mail.status_code == 403
    assert refused_send_mail.json()["error"]["code"] == "ErrorAccessDenied"
    assert inbox_of(tenant, "megan") == []


def test_an_application_sends_with_the_mail_send_role_only_once_consented(tenant: EmulatorTenant) -> None:
    without = tenant.app_token()  # the registration asks for Mail.Read and User.Read.All
    refused = send_mail(tenant, without, "adele")
    tenant.client.set_app_roles(tenant.app.client_id, ["Mail.Read", "Mail.Send", "User.Read.All"])
    still_refused = send_mail(tenant, without, "adele")
    granted = tenant.app_token()  # admin consent again grants the new role

    accepted = send_mail(tenant, granted, "adele")

    assert (refused.status_code, still_refused.status_code, accepted.status_code) == (403, 403, 202)
    assert len(tenant.client.sent_items(tenant.users["adele"].id)) == 1


def test_an_application_sends_from_a_shared_mailbox_as_itself(tenant: EmulatorTenant) -> None:
    tenant.client.set_app_roles(tenant.app.client_id, ["Mail.Send", "User.Read.All"])
    token = tenant.app_token()

    assert send_mail(tenant, token, "sales").status_code == 202

    [sent] = tenant.client.sent_items(tenant.users["sales"].id)
    [copy] = inbox_of(tenant, "megan")
    assert sent["from"]["emailAddress"]["address"] == tenant.users["sales"].mail
    assert copy["sender"] == copy["from"] == sent["from"]


def test_a_delegate_sends_as_a_shared_mailbox_only_with_mail_send_shared_and_send_as(
    tenant: EmulatorTenant,
) -> None:
    token = tenant.delegated_token("adele", scopes=["Mail.Send", "Mail.Send.Shared"])
    sales, adele = tenant.users["sales"].id, tenant.users["adele"].id

    no_access = send_mail(tenant, token, "sales")
    tenant.client.set_mailbox_rights(sales, adele, ["FullAccess"])
    no_send_as = send_mail(tenant, token, "sales")
    tenant.client.set_mailbox_rights(sales, adele, ["FullAccess", "SendAs"])
    allowed = send_mail(tenant, token, "sales")

    assert no_access.status_code == 403
    assert no_access.json()["error"]["code"] == "ErrorAccessDenied"
    assert no_send_as.status_code == 403
    assert no_send_as.json()["error"]["code"] == "ErrorSendAsDenied"
    assert allowed.status_code == 202
    assert len(tenant.client.sent_items(sales)) == 1
    assert tenant.client.sent_items(adele) == []


def test_a_delegate_reads_a_shared_mailbox_with_mail_read_shared_and_full_access(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele", scopes=["Mail.Read", "Mail.Read.Shared"])
    path = f"/users/{tenant.users['sales'].upn}/mailFolders/inbox/messages"

    before = tenant.graph("GET", path, token)
    tenant.client.set_mailbox_rights(tenant.users["sales"].id, tenant.users["adele"].id, ["FullAccess"])
    after = tenant.graph("GET", path, token)

    assert (before.status_code, after.status_code) == (403, 200)


def test_from_another_mailbox_through_ones_own_needs_a_send_right_and_shows_on_behalf(
    tenant: EmulatorTenant,
) -> None:
    token = tenant.delegated_token("adele", scopes=["Mail.Send", "Mail.Send.Shared"])
    shared_from = {"emailAddress": {"address": tenant.users["sales"].mail}}

    denied = send_mail(tenant, token, **{"from": shared_from})
    tenant.client.set_mailbox_rights(tenant.users["sales"].id, tenant.users["adele"].id, ["SendOnBehalf"])
    allowed = send_mail(tenant, token, **{"from": shared_from})

    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "ErrorSendAsDenied"
    assert allowed.status_code == 202
    [copy] = inbox_of(tenant, "megan")
    assert copy["from"]["emailAddress"]["address"] == tenant.users["sales"].mail
    assert copy["sender"]["emailAddress"]["address"] == tenant.users["adele"].mail


# -- limits ----------------------------------------------------------------------------------------


def test_thirty_messages_a_minute_then_submission_quota_exceeded_with_retry_after(
    tenant: EmulatorTenant, sender: str
) -> None:
    answers = [send_mail(tenant, sender, subject=f"n{n}").status_code for n in range(30)]

    over = send_mail(tenant, sender, subject="n31")

    assert answers == [202] * 30
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "ErrorSubmissionQuotaExceeded"
    assert 1 <= int(over.headers["Retry-After"]) <= 61
    assert len(inbox_of(tenant, "megan")) == 30
    megan = tenant.delegated_token("megan", scopes=SEND_SCOPES)
    assert send_mail(tenant, megan, toRecipients=addresses(1)).status_code == 202  # per mailbox


def test_the_daily_recipient_limit_counts_every_recipient_of_the_last_24_hours(
    tenant: EmulatorTenant, sender: str
) -> None:
    tenant.client.configure(send_recipients_per_day=5)

    first = send_mail(tenant, sender, toRecipients=addresses(3))
    over = send_mail(tenant, sender, toRecipients=addresses(3))
    fits = send_mail(tenant, sender, toRecipients=addresses(2))

    assert (first.status_code, over.status_code, fits.status_code) == (202, 429, 202)
    assert int(over.headers["Retry-After"]) > 86_000


def test_more_than_500_recipients_on_one_message_is_refused_whole(tenant: EmulatorTenant, sender: str) -> None:
    refused = send_mail(tenant, sender, toRecipients=addresses(500), bccRecipients=addresses(1))

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "ErrorExceededMaxRecipientLimit"
    assert [e for e in tenant.client.outbox() if e["sender"] == tenant.users["adele"].id] == []
    assert send_mail(tenant, sender, toRecipients=addresses(500)).status_code == 202


# -- faults ----------------------------------------------------------------------------------------


def test_a_send_fault_fails_the_next_sends_before_anything_is_sent(tenant: EmulatorTenant, sender: str) -> None:
    tenant.client.fail_sends(2, status=503, mailbox=tenant.users["adele"].id)
    draft = post(tenant, sender, "/me/messages", draft_body(tenant)).json()

    failed = [post(tenant, sender, f"/me/messages/{draft['id']}/send"), send_mail(tenant, sender)]
    then = post(tenant, sender, f"/me/messages/{draft['id']}/send")

    assert [answer.status_code for answer in failed] == [503, 503]
    assert then.status_code == 202
    assert len(inbox_of(tenant, "megan")) == 1


def test_a_lost_answer_fault_sends_the_message_exactly_once_and_drops_the_connection(
    tenant: EmulatorTenant, sender: str
) -> None:
    draft = post(tenant, sender, "/me/messages", draft_body(tenant)).json()
    tenant.client.fail_sends(lost=True, mailbox=tenant.users["adele"].id)

    with pytest.raises(requests.ConnectionError):
        post(tenant, sender, f"/me/messages/{draft['id']}/send")

    [sent] = tenant.client.sent_items(tenant.users["adele"].id)
    assert sent["immutableId"] == draft["id"]
    assert [m["internetMessageId"] for m in inbox_of(tenant, "megan")] == [draft["internetMessageId"]]
    retry = post(tenant, sender, f"/me/messages/{draft['id']}/send")
    assert retry.status_code == 400  # no longer a draft: a careful client looks before it resends
    assert len(inbox_of(tenant, "megan")) == 1


def test_a_lost_answer_fault_with_a_status_answers_it_after_sending(tenant: EmulatorTenant, sender: str) -> None:
    tenant.client.fail_sends(lost=True, status=504)

    answer = send_mail(tenant, sender)

    assert answer.status_code == 504
    assert len(inbox_of(tenant, "megan")) == 1


def test_send_mail_works_inside_a_batch(tenant: EmulatorTenant, sender: str) -> None:
    item = {
        "id": "1",
        "method": "POST",
        "url": "/me/sendMail",
        "headers": {"Content-Type": "application/json"},
        "body": {"message": draft_body(tenant)},
    }

    answer = tenant.graph("POST", "/$batch", sender, json={"requests": [item]})

    assert answer.json()["responses"][0]["status"] == 202
    assert len(inbox_of(tenant, "megan")) == 1


# -- persistence -----------------------------------------------------------------------------------


def test_drafts_rights_limits_outbox_and_upload_sessions_survive_a_restart(tmp_path: Path) -> None:
    port = free_port()
    with EmulatorServer(port=port, state_dir=tmp_path, persist=True) as first:
        client = EmulatorClient(first.url, first.ca_bundle_path)
        client.configure(send_messages_per_minute=1)
        tenant = client.provision_tenant("persist-send")
        token = tenant.delegated_token("adele", scopes=SEND_SCOPES)
        client.set_mailbox_rights(tenant.users["sales"].id, tenant.users["adele"].id, ["FullAccess"])
        draft = post(tenant, token, "/me/messages", draft_body(tenant)).json()
        item = {"attachmentType": "file", "name": "big.bin", "size": 3 * 1024 * 1024}
        session = post(tenant, token, f"/me/messages/{draft['id']}/attachments/createUploadSession", {
            "AttachmentItem": item
        }).json()  # fmt: skip
        assert send_mail(tenant, token, toRecipients=addresses(1)).status_code == 202

    with EmulatorServer(port=port, state_dir=tmp_path, persist=True) as second:
        assert second.restored is True
        client = EmulatorClient(second.url, second.ca_bundle_path)
        assert len(client.outbox()) == 1
        assert client.folder_messages(tenant.users["adele"].id, "drafts")[0]["immutableId"] == draft["id"]
        assert send_mail(tenant, token).status_code == 429  # the minute's window survived
        upload = tenant.session.put(
            session["uploadUrl"],
            data=b"x" * 1024,
            headers={"Content-Range": f"bytes 0-1023/{3 * 1024 * 1024}"},
            timeout=30,
        )
        assert upload.json()["nextExpectedRanges"] == ["1024"]
        shared = tenant.graph("GET", f"/users/{tenant.users['sales'].upn}/messages", token)
        assert shared.status_code == 403  # FullAccess kept, but this token has no Mail.Read.Shared
