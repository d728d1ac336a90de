"""Bodies and previews of the Graph emulator, over HTTPS: ``bodyPreview`` is the first 255 characters of the
text body with whitespace collapsed, however long the body and wherever a whitespace run falls, and a
message changed after it was rendered shows its new body and preview."""

from __future__ import annotations

from typing import Any

from emulator.client import EmulatorClient, EmulatorTenant
from tests.emulator.graph_get import get

TEXT = 'outlook.body-content-type="text"'
INBOX_DELTA = "/me/mailFolders('inbox')/messages/delta"


def message(tenant: EmulatorTenant, token: str, message_id: str, prefer: str | None = None) -> dict[str, Any]:
    answer = get(tenant, token, f"/me/messages/{message_id}", prefer, **{"$select": "subject,body,bodyPreview"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def delta_items(tenant: EmulatorTenant, token: str, url: str, **params: Any) -> tuple[list[dict[str, Any]], str]:
    """Every item of one delta round (text bodies, 1000 a page) and its deltaLink."""
    prefer = f"odata.maxpagesize=1000, {TEXT}"
    items: list[dict[str, Any]] = []
    answer = get(tenant, token, url, prefer, **params)
    while True:
        assert answer.status_code == 200, answer.text
        page = answer.json()
        items += page["value"]
        if "@odata.deltaLink" in page:
            return items, str(page["@odata.deltaLink"])
        answer = get(tenant, token, page["@odata.nextLink"], prefer)


# Subject -> (text body, the preview Graph shows for it). The bodies are long (several times the 255
# characters of a preview) and put whitespace runs where a preview computed from a slice of the body
# could go wrong: across the 255th character, across 512 and 1024 characters of the raw text, first.
WORDS_50 = "word " * 50  # 250 characters
LONG_BODIES = {
    "run across the cut": (
        WORDS_50 + "end" + " \t\r\n" * 300 + "tail " + "x" * 3000,
        WORDS_50 + "end t",
    ),
    "cut on the collapsed run": (
        "x" * 254 + " " * 700 + "y" * 2000,
        "x" * 254 + " ",
    ),
    "whitespace first": (
        "\r\n \t\u00a0" * 600 + "First words. " + "z" * 400,
        "First words. " + "z" * 242,
    ),
    "sparse words": (
        "".join(f"w{n}" + " \r\n" * 20 for n in range(200)),
        " ".join(f"w{n}" for n in range(200))[:255],
    ),
    "unicode spaces": (
        "Grüße\u2003\u3000\u00a0aus  Köln." + ("\u2028 ä" * 2000),
        ("Grüße aus Köln." + " ä" * 200)[:255],
    ),
    "exactly 255 then spaces": (
        "q" * 255 + " \r\n" * 400,
        "q" * 255,
    ),
}


def test_the_preview_of_a_long_text_body_collapses_every_whitespace_run_wherever_it_falls(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    ids = {
        subject: emulator_client.deliver(adele, subject=subject, body=body, body_type="text")["id"]
        for subject, (body, _) in LONG_BODIES.items()
    }

    items, _ = delta_items(tenant, token, INBOX_DELTA, **{"$select": "subject,bodyPreview,body"})

    by_subject = {item["subject"]: item for item in items}
    for subject, (body, preview) in LONG_BODIES.items():
        assert by_subject[subject]["bodyPreview"] == preview, subject
        assert by_subject[subject]["body"] == {"contentType": "text", "content": body}, subject
        assert message(tenant, token, ids[subject])["bodyPreview"] == preview, subject


HTML_BODY = (
    "<html><head><title>Ignored title</title><style>p { margin: 0 }</style></head><body>"
    "<div>Hi&nbsp;Adele,</div>\r\n\r\n<p>  The   <b>contract</b>\r\n   is &amp; stays   "
    + "signed. " * 40
    + "</p><p>Regards,<br>Bob</p></body></html>"
)
HTML_TEXT = "Hi\xa0Adele,\r\n\r\nThe contract is & stays " + ("signed. " * 40).strip() + "\r\n\r\nRegards,\r\nBob"
HTML_PREVIEW = ("Hi Adele, The contract is & stays " + "signed. " * 40)[:255]


def test_an_html_body_gives_the_same_text_and_preview_on_every_request_and_route(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    ids = emulator_client.deliver(adele, subject="html", body=HTML_BODY, body_type="html")

    first = message(tenant, token, ids["id"], TEXT)
    again = message(tenant, token, ids["id"], TEXT)
    items, _ = delta_items(tenant, token, INBOX_DELTA, **{"$select": "subject,body,bodyPreview"})
    as_html = message(tenant, token, ids["id"])

    for rendered in (first, again, items[0]):
        assert rendered["body"] == {"contentType": "text", "content": HTML_TEXT}
        assert rendered["bodyPreview"] == HTML_PREVIEW
    assert as_html["body"] == {"contentType": "html", "content": HTML_BODY}
    assert as_html["bodyPreview"] == HTML_PREVIEW


def test_a_message_whose_body_changes_after_it_was_rendered_shows_the_new_body_and_preview(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    ids = emulator_client.deliver(adele, subject="changing", body="Old   text " + "o" * 300, body_type="text")
    _, delta_link = delta_items(tenant, token, INBOX_DELTA, **{"$select": "subject,body,bodyPreview"})
    assert message(tenant, token, ids["id"], TEXT)["bodyPreview"] == ("Old text " + "o" * 300)[:255]

    emulator_client.update(adele, ids["id"], body={"contentType": "html", "content": "<p>New</p><p>body</p>"})
    updated = message(tenant, token, ids["id"], TEXT)
    changes, _ = delta_items(tenant, token, delta_link)

    assert updated["body"] == {"contentType": "text", "content": "New\r\n\r\nbody"}
    assert updated["bodyPreview"] == "New body"
    assert changes[0]["body"] == {"contentType": "text", "content": "New\r\n\r\nbody"}
    assert changes[0]["bodyPreview"] == "New body"


def test_the_same_content_read_again_as_another_body_type_is_rendered_anew(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    markup = "<p>Kept <b>as</b> is</p>"
    ids = emulator_client.deliver(adele, subject="type", body=markup, body_type="text")
    assert message(tenant, token, ids["id"], TEXT)["body"]["content"] == markup

    emulator_client.update(adele, ids["id"], body=markup, body_type="html")
    as_html = message(tenant, token, ids["id"], TEXT)
    emulator_client.update(adele, ids["id"], body=markup, body_type="text")
    as_text_again = message(tenant, token, ids["id"], TEXT)

    assert as_html["body"]["content"] == "Kept as is"
    assert as_html["bodyPreview"] == "Kept as is"
    assert as_text_again["body"]["content"] == markup
    assert as_text_again["bodyPreview"] == markup
