"""The Gmail API v1 on the emulator: profile, labels, messages.list/get (formats, q, paging),
attachments, history (with the 404 for an expired start id), send, drafts and the scope/user checks."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default

from tests.emulator.google.world import READONLY, SEND, World


def raw_message(sender: str, to: str, subject: str, body: str = "Hello", **headers: str) -> str:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return base64.urlsafe_b64encode(message.as_bytes()).decode()


def test_get_profile_answers_the_address_counts_and_current_history_id(world: World) -> None:
    token = world.token_for(world.ada)
    before = world.gmail("GET", token, "me/profile").json()
    world.deliver(world.ada, subject="One", body="first")
    after = world.gmail("GET", token, f"{world.ada}/profile").json()
    assert after["emailAddress"] == world.ada
    assert after["messagesTotal"] == before["messagesTotal"] + 1
    assert int(after["historyId"]) > int(before["historyId"])


def test_another_users_mailbox_is_delegation_denied(world: World) -> None:
    answer = world.gmail("GET", world.token_for(world.ada), f"{world.bob}/profile")
    assert answer.status_code == 403
    assert answer.json()["error"]["message"] == f"Delegation denied for {world.ada}"


def test_a_token_without_gmail_scopes_gets_insufficient_permissions(world: World) -> None:
    token = world.connect(world.ada, "openid email")["access_token"]
    answer = world.gmail("GET", token, "me/profile")
    assert answer.status_code == 403
    assert answer.json()["error"]["errors"][0]["reason"] == "insufficientPermissions"


def test_labels_list_has_the_system_labels_and_user_labels(world: World) -> None:
    world.deliver(world.ada, subject="Tagged", labels=["INBOX", "Clients"])
    labels = world.gmail("GET", world.token_for(world.ada), "me/labels").json()["labels"]
    ids = {label["id"] for label in labels}
    assert {"INBOX", "SENT", "SPAM", "TRASH", "DRAFT", "IMPORTANT", "UNREAD", "CATEGORY_PROMOTIONS"} <= ids
    user_labels = [label for label in labels if label["type"] == "user"]
    assert [label["name"] for label in user_labels] == ["Clients"]


def test_messages_list_is_newest_first_and_pages_without_repeats(world: World) -> None:
    for day in range(1, 6):
        world.deliver(world.ada, subject=f"Day {day}", received_at=f"2026-03-0{day}T12:00:00+00:00")
    token = world.token_for(world.ada)
    first = world.gmail("GET", token, "me/messages", params={"maxResults": 2}).json()
    assert first["resultSizeEstimate"] == 5 and len(first["messages"]) == 2
    world.deliver(world.ada, subject="Arrived between pages", received_at="2026-03-09T12:00:00+00:00")
    seen = [m["id"] for m in first["messages"]]
    token_ = first["nextPageToken"]
    while token_:
        page = world.gmail("GET", token, "me/messages", params={"maxResults": 2, "pageToken": token_}).json()
        seen += [m["id"] for m in page["messages"]]
        token_ = page.get("nextPageToken")
    assert len(seen) == len(set(seen)) == 5
    subjects = [world.gmail("GET", token, f"me/messages/{i}", params={"format": "metadata",
                                                                       "metadataHeaders": "Subject"}).json()
                ["payload"]["headers"][0]["value"] for i in seen]
    assert subjects == ["Day 5", "Day 4", "Day 3", "Day 2", "Day 1"]


def test_messages_list_filters_by_q_and_label_ids(world: World) -> None:
    world.deliver(world.ada, subject="Old", received_at="2026-01-10T12:00:00+00:00", **{"from": "dan@talent.example"})
    world.deliver(world.ada, subject="New", received_at="2026-02-10T12:00:00+00:00", **{"from": "erin@fab.example"},
                  cc=["carl@fab.example"])
    world.deliver(world.ada, subject="Sent one", received_at="2026-02-11T12:00:00+00:00", to=["zoe@x.example"],
                  labels=["SENT"])
    world.deliver(world.ada, subject="Junk", received_at="2026-02-12T12:00:00+00:00", labels=["SPAM"])
    token = world.token_for(world.ada)

    def count(**params: str) -> int:
        return int(world.gmail("GET", token, "me/messages", params=params).json()["resultSizeEstimate"])

    assert count(q="after:2026/02/01") == 2  # SPAM is left out unless includeSpamTrash
    assert count(q="after:2026/02/01", includeSpamTrash="true") == 3
    assert count(q="before:2026/02/01") == 1
    assert count(q="from:dan@talent.example") == 1
    assert count(q="cc:carl@fab.example") == 1
    assert count(q="to:zoe@x.example") == 1
    assert count(labelIds="SENT") == 1
    assert count(labelIds="INBOX", q="after:1767225600") == 2  # 2026-01-01T00:00Z as epoch seconds
    assert count(q="-from:dan@talent.example") == 2
    assert count(q="label:clients") == 0


def test_max_results_above_500_is_capped_and_a_bad_page_token_is_400(world: World) -> None:
    token = world.token_for(world.ada)
    assert world.gmail("GET", token, "me/messages", params={"maxResults": 100000}).status_code == 200
    bad = world.gmail("GET", token, "me/messages", params={"pageToken": "garbage"})
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_messages_get_formats(world: World) -> None:
    delivered = world.deliver(world.ada, subject="Formats", body="Body text here", html="<p>Body html</p>",
                              attachments=[{"filename": "a.pdf", "content_type": "application/pdf",
                                            "data": base64.b64encode(b"%PDF-1.4 tiny").decode()}])
    token = world.token_for(world.ada)
    path = f"me/messages/{delivered['id']}"
    minimal = world.gmail("GET", token, path, params={"format": "minimal"}).json()
    assert set(minimal) == {"id", "threadId", "labelIds", "snippet", "sizeEstimate", "historyId", "internalDate"}
    metadata = world.gmail("GET", token, path, params={"format": "metadata", "metadataHeaders": ["From", "Subject"]})
    assert [h["name"] for h in metadata.json()["payload"]["headers"]] == ["From", "Subject"]
    assert "parts" not in metadata.json()["payload"]
    full = world.gmail("GET", token, path).json()
    assert full["snippet"].startswith("Body text here")
    payload = full["payload"]
    assert payload["mimeType"] == "multipart/mixed" and payload["partId"] == ""
    alternative, attachment = payload["parts"]
    assert [p["partId"] for p in alternative["parts"]] == ["0.0", "0.1"]
    text = base64.urlsafe_b64decode(alternative["parts"][0]["body"]["data"]).decode()
    assert text.startswith("Body text here")
    assert attachment["filename"] == "a.pdf" and "data" not in attachment["body"]
    fetched = world.gmail("GET", token, f"{path}/attachments/{attachment['body']['attachmentId']}").json()
    assert base64.urlsafe_b64decode(fetched["data"]) == b"%PDF-1.4 tiny"
    assert fetched["size"] == attachment["body"]["size"] == 13
    raw = world.gmail("GET", token, path, params={"format": "raw"}).json()
    parsed = BytesParser(policy=default).parsebytes(base64.urlsafe_b64decode(raw["raw"]))
    assert parsed["Subject"] == "Formats" and "payload" not in raw


def test_unknown_and_malformed_message_ids(world: World) -> None:
    token = world.token_for(world.ada)
    missing = world.gmail("GET", token, "me/messages/0123456789abcdef")
    assert missing.status_code == 404 and missing.json()["error"]["errors"][0]["reason"] == "notFound"
    assert world.gmail("GET", token, "me/messages/not-an-id").status_code == 400


def test_history_list_returns_messages_added_after_the_start_id_paged(world: World) -> None:
    token = world.token_for(world.ada)
    start = world.gmail("GET", token, "me/profile").json()["historyId"]
    ids = [world.deliver(world.ada, subject=f"M{i}")["id"] for i in range(3)]
    world.deliver(world.ada, subject="Sent", labels=["SENT"])
    first = world.gmail("GET", token, "me/history", params={
        "startHistoryId": start, "historyTypes": "messageAdded", "labelId": "INBOX", "maxResults": 2}).json()
    assert len(first["history"]) == 2 and "nextPageToken" in first
    second = world.gmail("GET", token, "me/history", params={
        "startHistoryId": start, "historyTypes": "messageAdded", "labelId": "INBOX", "maxResults": 2,
        "pageToken": first["nextPageToken"]}).json()
    added = [r["messagesAdded"][0]["message"]["id"] for r in first["history"] + second["history"]]
    assert added == ids
    assert "nextPageToken" not in second
    current = world.gmail("GET", token, "me/profile").json()["historyId"]
    assert second["historyId"] == current
    nothing = world.gmail("GET", token, "me/history", params={"startHistoryId": current}).json()
    assert nothing == {"historyId": current}


def test_history_list_is_404_for_a_start_id_older_than_the_kept_history(world: World) -> None:
    token = world.token_for(world.ada)
    start = world.gmail("GET", token, "me/profile").json()["historyId"]
    world.deliver(world.ada, subject="Before expiry")
    floor = world.control("POST", f"users/{world.ada}/history/expire").json()["history_floor"]
    answer = world.gmail("GET", token, "me/history", params={"startHistoryId": start})
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "Requested entity was not found."
    assert world.gmail("GET", token, "me/history", params={"startHistoryId": floor}).status_code == 200
    assert world.gmail("GET", token, "me/history").status_code == 400


def test_send_puts_a_sent_copy_delivers_to_emulated_users_and_external_ones_to_the_outbox(world: World) -> None:
    token = world.token_for(world.ada)
    raw = raw_message(world.ada, f"{world.bob}, outsider@elsewhere.example", "Proposal", Bcc="hidden@else.example")
    sent = world.gmail("POST", token, "me/messages/send", json={"raw": raw})
    assert sent.status_code == 200, sent.text
    assert sent.json()["labelIds"] == ["SENT"]
    bob_token = world.token_for(world.bob)
    inbox = world.gmail("GET", bob_token, "me/messages", params={"labelIds": "INBOX"}).json()["messages"]
    copy = world.gmail("GET", bob_token, f"me/messages/{inbox[0]['id']}", params={"format": "raw"}).json()
    parsed = BytesParser(policy=default).parsebytes(base64.urlsafe_b64decode(copy["raw"]))
    assert parsed["Subject"] == "Proposal" and parsed["Bcc"] is None and parsed["Message-ID"]
    outbox = world.control("GET", "outbox").json()["messages"]
    mine = [m for m in outbox if m["sender"] == world.ada]
    assert mine[-1]["recipients"] == ["outsider@elsewhere.example", "hidden@else.example"]
    assert mine[-1]["message_id"] == parsed["Message-ID"]


def test_send_needs_a_send_scope_and_a_recipient(world: World) -> None:
    readonly = world.connect(world.ada, f"openid email {READONLY}")["access_token"]
    refused = world.gmail("POST", readonly, "me/messages/send", json={"raw": raw_message(world.ada, world.bob, "x")})
    assert refused.status_code == 403
    token = world.token_for(world.ada)
    nobody = world.gmail("POST", token, "me/messages/send", json={"raw": raw_message(world.ada, "", "x")})
    assert nobody.status_code == 400
    missing = world.gmail("POST", token, "me/messages/send", json={})
    assert missing.status_code == 400 and "'raw' RFC822 payload" in missing.json()["error"]["message"]


def test_a_reply_sent_with_thread_id_and_matching_subject_joins_the_thread(world: World) -> None:
    token = world.connect(world.ada, f"openid email {READONLY} {SEND}")["access_token"]
    original = world.deliver(world.ada, subject="Contract", message_id="<c-1@fab.example>",
                             **{"from": "erin@fab.example"})
    reply = raw_message(world.ada, "erin@fab.example", "Re: Contract", In_Reply_To="<c-1@fab.example>",
                        References="<c-1@fab.example>")
    sent = world.gmail("POST", token, "me/messages/send", json={"raw": reply, "threadId": original["threadId"]}).json()
    assert sent["threadId"] == original["threadId"]
    other = world.gmail("POST", token, "me/messages/send",
                        json={"raw": raw_message(world.ada, "erin@fab.example", "Unrelated"),
                              "threadId": original["threadId"]}).json()
    assert other["threadId"] != original["threadId"]


def test_a_delivered_reply_joins_the_thread_its_in_reply_to_names(world: World) -> None:
    first = world.deliver(world.ada, subject="Q", message_id="<q-1@fab.example>")
    second = world.deliver(world.ada, subject="Re: Q", in_reply_to="<q-1@fab.example>")
    assert second["threadId"] == first["threadId"]


def test_the_media_upload_of_send_takes_the_rfc822_bytes(world: World) -> None:
    token = world.token_for(world.ada)
    body = base64.urlsafe_b64decode(raw_message(world.ada, world.bob, "Uploaded"))
    answer = world.http.post(f"{world.url}/upload/gmail/v1/users/me/messages/send", params={"uploadType": "media"},
                             data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "message/rfc822"})
    assert answer.status_code == 200 and answer.json()["labelIds"] == ["SENT"]


def test_drafts_create_list_and_send(world: World) -> None:
    token = world.connect(world.ada, f"openid email {READONLY} https://www.googleapis.com/auth/gmail.compose")[
        "access_token"]
    created = world.gmail("POST", token, "me/drafts",
                          json={"message": {"raw": raw_message(world.ada, world.bob, "Draft")}}).json()
    assert created["message"]["labelIds"] == ["DRAFT"]
    listed = world.gmail("GET", token, "me/drafts").json()
    assert [d["id"] for d in listed["drafts"]] == [created["id"]]
    sent = world.gmail("POST", token, "me/drafts/send", json={"id": created["id"]}).json()
    assert sent["labelIds"] == ["SENT"]
    assert world.gmail("GET", token, "me/drafts").json() == {"resultSizeEstimate": 0}
    assert world.gmail("GET", token, f"me/drafts/{created['id']}").status_code == 404


def test_bulk_delivery_gives_count_messages_stepping_back_in_time(world: World) -> None:
    answer = world.control("POST", f"users/{world.ada}/messages/bulk", {
        "count": 30, "interval_seconds": 3600, "start": "2026-04-02T00:00:00", "subject": "Bulk",
        "from": "news@northwind.example"})
    assert answer.status_code == 201, answer.text
    token = world.token_for(world.ada)
    newest = world.gmail("GET", token, "me/messages", params={"maxResults": 1}).json()["messages"][0]
    assert newest["id"] == answer.json()["first"]
    count = world.gmail("GET", token, "me/messages", params={"q": "after:2026/04/01 from:news@northwind.example"})
    # 2026/04/01 is midnight PDT, 07:00 UTC: the messages from Apr 2 00:00 back to Apr 1 07:00 UTC
    assert count.json()["resultSizeEstimate"] == 18
    assert world.control("POST", f"users/{world.ada}/messages/bulk", {"count": 0}).status_code == 400


def test_a_reply_naming_the_original_in_references_only_joins_its_thread(world: World) -> None:
    first = world.deliver(world.ada, subject="Topic", message_id="<t-1@fab.example>")
    reply = world.deliver(world.ada, subject="Re: Topic", references="<t-0@x.example> <t-1@fab.example>")
    assert reply["threadId"] == first["threadId"]


def test_filing_a_message_under_a_label_is_a_label_added_history_record(world: World) -> None:
    token = world.token_for(world.ada)
    message = world.deliver(world.ada, subject="To file")
    start = world.gmail("GET", token, "me/profile").json()["historyId"]
    filed = world.control("POST", f"users/{world.ada}/messages/{message['id']}/labels",
                          {"add": ["Clients"], "remove": ["INBOX"]})
    assert filed.status_code == 200, filed.text
    label_id = next(label for label in filed.json()["labelIds"] if label.startswith("Label_"))
    history = world.gmail("GET", token, "me/history", params={"startHistoryId": start}).json()["history"]
    assert [list(set(record) - {"id", "messages"}) for record in history] == [["labelsAdded"], ["labelsRemoved"]]
    assert history[0]["labelsAdded"][0]["labelIds"] == [label_id]
    assert history[1]["labelsRemoved"][0]["labelIds"] == ["INBOX"]
    only_added = world.gmail("GET", token, "me/history", params={
        "startHistoryId": start, "historyTypes": "messageAdded"}).json()
    assert "history" not in only_added


def test_messages_modify_needs_the_modify_scope_and_known_labels(world: World) -> None:
    message = world.deliver(world.ada, subject="Modify")
    readonly = world.token_for(world.ada)
    path = f"me/messages/{message['id']}/modify"
    assert world.gmail("POST", readonly, path, json={"removeLabelIds": ["UNREAD"]}).status_code == 403
    modify = world.connect(world.ada, "openid email https://www.googleapis.com/auth/gmail.modify")["access_token"]
    answer = world.gmail("POST", modify, path, json={"removeLabelIds": ["UNREAD"]})
    assert answer.status_code == 200 and "UNREAD" not in answer.json()["labelIds"]
    assert world.gmail("POST", modify, path, json={"addLabelIds": ["Label_999"]}).status_code == 400
