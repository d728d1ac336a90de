"""COMPARISON HARNESS, NOT PRODUCT CODE: the mail side of the sync written with the official Microsoft Graph
SDK for Python (``msgraph-sdk``), the way its documentation shows it, so the side-by-side benchmark can run
the product's own ``sync_mailbox`` with this ``MailSource`` in place of ``GraphMailSource``.

Following the SDK docs:
- the client is a ``GraphServiceClient`` over a ``GraphRequestAdapter``, with the SDK's default middleware
  (``GraphClientFactory.create_with_default_middleware``) on an ``httpx.AsyncClient`` whose base URL is the
  emulator's Graph root (the documented way to point the SDK at a national cloud or a proxy) and which
  trusts the emulator's CA; auth is ``AzureIdentityAuthenticationProvider`` over an async token credential
  (here a client-credentials credential against the emulator's identity platform) with the emulator host
  allowed;
- message delta is ``users.by_user_id(..).mail_folders.by_mail_folder_id(..).messages.delta.get()`` with
  ``DeltaRequestBuilderGetQueryParameters(select=..., filter=...)`` and ``Prefer`` headers on a
  ``RequestConfiguration``, and later pages through ``.delta.with_url(next_link).get()``;
- attachment names come from ``messages.by_message_id(..).attachments.get()``, one request per message, at
  most 4 at a time (Graph's per-mailbox concurrency). The SDK's JSON batching (``BatchRequestContent``,
  ``client.batch.post``) cannot be used for this in the pinned versions: a sub-response whose body is a
  JSON object comes back with ``body = None`` (``BatchResponseItem`` reads it with ``get_bytes_value``;
  microsoft/kiota-python#737), so ``get_response_by_id(id, AttachmentCollectionResponse)`` raises.

Requests carry exactly what ``GraphMailSource`` asks for (same ``$select``, ``$filter``, page size,
immutable ids, text bodies), and the SDK's ``Message`` objects become the same ``MailMessage`` values
through the product's own normalisation helpers, so the two runs do the same work. The SDK is async; this
adapter drives it from the synchronous use case on one event loop, as a sync caller of the SDK would.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from azure.core.credentials import AccessToken
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.message import Message
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.users.item.mail_folders.item.messages.delta.delta_request_builder import DeltaRequestBuilder
from msgraph.generated.users.item.messages.item.attachments.attachments_request_builder import (
    AttachmentsRequestBuilder,
)
from msgraph_core import GraphClientFactory

from sync_core.adapters.graph.mail import MESSAGE_FIELDS, _message_ids, graph_time
from sync_core.domain.addresses import normalize_address
from sync_core.domain.model import AttachmentSummary, EmailAddress, Mailbox, MailMessage
from sync_core.domain.text import html_to_text, preview
from sync_core.ports import DeltaPage

GRAPH_MAILBOX_CONCURRENCY = 4
GRAPH_SCOPES = ["https://graph.microsoft.com/.default"]


class EmulatorClientCredential:
    """An ``azure.core`` async token credential: client credentials against the emulator's identity
    platform (``{authority}/{tenant}/oauth2/v2.0/token``), cached until shortly before expiry."""

    def __init__(self, authority: str, tenant_id: str, client_id: str, secret: str, ca_bundle: str) -> None:
        self._url = f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
        self._form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        self._verify = ssl.create_default_context(cafile=ca_bundle)
        self._token: AccessToken | None = None

    async def get_token(self, *scopes: str, **_kwargs: Any) -> AccessToken:
        if self._token is None or self._token.expires_on - 300 < time.time():
            async with httpx.AsyncClient(verify=self._verify) as client:
                response = await client.post(self._url, data={**self._form, "scope": " ".join(scopes)})
                response.raise_for_status()
                body = response.json()
            self._token = AccessToken(body["access_token"], int(time.time()) + int(body["expires_in"]))
        return self._token

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> EmulatorClientCredential:
        return self

    async def __aexit__(self, *_args: object) -> None:
        return None


class MsgraphSdkMailSource:
    """The ``MailSource`` port on ``msgraph-sdk`` (see the module docstring)."""

    def __init__(self, graph_url: str, credential: EmulatorClientCredential, ca_bundle: str, page_size: int = 1000):
        self.requests_made = 0
        self._loop = asyncio.new_event_loop()
        self._prefer = f'odata.maxpagesize={page_size}, IdType="ImmutableId", outlook.body-content-type="text"'

        async def count(_request: httpx.Request) -> None:
            self.requests_made += 1

        http_client = httpx.AsyncClient(
            base_url=graph_url,
            verify=ssl.create_default_context(cafile=ca_bundle),
            http2=True,  # as the SDK's default client (KiotaClientFactory.get_default_client)
            timeout=httpx.Timeout(100, connect=30),
            event_hooks={"request": [count]},
        )
        http_client = GraphClientFactory.create_with_default_middleware(client=http_client)
        auth = AzureIdentityAuthenticationProvider(
            credential, scopes=GRAPH_SCOPES, allowed_hosts=[urlsplit(graph_url).hostname or ""]
        )
        self.client = GraphServiceClient(request_adapter=GraphRequestAdapter(auth, http_client))
        self._credential = credential

    def warm_up(self) -> None:
        """Acquire the token before anything is measured (our adapter gets a token beforehand too)."""
        self._loop.run_until_complete(self._credential.get_token(*GRAPH_SCOPES))

    def close(self) -> None:
        self._loop.close()

    # -- MailSource --------------------------------------------------------------------------------

    def requests_for(self, mailbox: Mailbox) -> int:
        """Every request (the bench syncs one mailbox per source)."""
        return self.requests_made

    def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        return self._loop.run_until_complete(self._delta(mailbox, folder, link, since))

    def delta_many(self, mailbox: Mailbox, links: Mapping[str, str]) -> Mapping[str, DeltaPage]:
        return {folder: self.delta(mailbox, folder, link, datetime.now(UTC)) for folder, link in links.items()}

    def attachments(self, mailbox: Mailbox, source_ids: Sequence[str]) -> Mapping[str, tuple[AttachmentSummary, ...]]:
        return self._loop.run_until_complete(self._attachments(mailbox, source_ids))

    def complete(self, mailbox: Mailbox, messages: Sequence[MailMessage]) -> Sequence[MailMessage]:
        return messages  # delta pages carry the bodies

    def folders(self, mailbox: Mailbox) -> tuple[str, ...]:
        raise NotImplementedError("the comparison syncs Inbox and Sent Items only")

    # -- the SDK calls ---------------------------------------------------------------------------

    async def _delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        user = self.client.users.by_user_id(mailbox.graph_user_id)
        delta = user.mail_folders.by_mail_folder_id(folder).messages.delta
        if link:
            configuration: RequestConfiguration[Any] = RequestConfiguration()
            configuration.headers.add("Prefer", self._prefer)
            result = await delta.with_url(link).get(request_configuration=configuration)
        else:
            query = DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(
                select=MESSAGE_FIELDS.split(","), filter=f"receivedDateTime ge {graph_time(since)}"
            )
            configuration = RequestConfiguration(query_parameters=query)
            configuration.headers.add("Prefer", self._prefer)
            result = await delta.get(request_configuration=configuration)
        assert result is not None
        messages, skipped = [], 0
        for item in result.value or []:
            message = _mail_message(item, folder)
            if message is None:
                skipped += 1
            else:
                messages.append(message)
        return DeltaPage(folder, tuple(messages), result.odata_next_link, result.odata_delta_link, skipped)

    async def _attachments(
        self, mailbox: Mailbox, source_ids: Sequence[str]
    ) -> dict[str, tuple[AttachmentSummary, ...]]:
        messages = self.client.users.by_user_id(mailbox.graph_user_id).messages
        slots = asyncio.Semaphore(GRAPH_MAILBOX_CONCURRENCY)

        async def listing(message_id: str) -> tuple[AttachmentSummary, ...]:
            query = AttachmentsRequestBuilder.AttachmentsRequestBuilderGetQueryParameters(
                select=["name", "size", "contentType", "isInline"]
            )
            configuration = RequestConfiguration(query_parameters=query)
            configuration.headers.add("Prefer", 'IdType="ImmutableId"')
            async with slots:
                result = await messages.by_message_id(message_id).attachments.get(request_configuration=configuration)
            return tuple(
                AttachmentSummary(a.name or "", int(a.size or 0), a.content_type or "")
                for a in (result.value if result else None) or []
                if not a.is_inline
            )

        found = await asyncio.gather(*(listing(message_id) for message_id in source_ids))
        return dict(zip(source_ids, found, strict=True))


def _mail_message(item: Message, folder: str) -> MailMessage | None:
    """The SDK's ``Message`` -> ``MailMessage``, field for field as ``graph_mail.message_from_graph``."""
    if "@removed" in (item.additional_data or {}) or not item.internet_message_id or not item.received_date_time:
        return None
    headers = tuple((str(h.name or "").lower(), str(h.value or "")) for h in item.internet_message_headers or ())
    body = item.body
    content = str(body.content or "") if body else ""
    is_html = body is not None and body.content_type is not None and body.content_type.value.lower() == "html"
    text = html_to_text(content) if is_html else content
    header_map = dict(headers)
    return MailMessage(
        source_id=str(item.id),
        internet_message_id=item.internet_message_id.strip(),
        subject=item.subject or "",
        sender=_address(item.from_),
        to=_addresses(item.to_recipients),
        cc=_addresses(item.cc_recipients),
        received_at=item.received_date_time.astimezone(UTC),
        sent_at=item.sent_date_time.astimezone(UTC) if item.sent_date_time else None,
        body_text=text,
        body_preview=preview(item.body_preview or text),
        conversation_id=item.conversation_id,
        folder=folder,
        is_draft=bool(item.is_draft),
        has_attachments=bool(item.has_attachments),
        headers=headers,
        in_reply_to=next(iter(_message_ids(header_map.get("in-reply-to", ""))), None),
        references=_message_ids(header_map.get("references", "")),
    )


def _address(recipient: Recipient | None) -> EmailAddress | None:
    if recipient is None or recipient.email_address is None:
        return None
    address = normalize_address(recipient.email_address.address or "")
    return EmailAddress(address, recipient.email_address.name or "") if address else None


def _addresses(recipients: Sequence[Recipient] | None) -> tuple[EmailAddress, ...]:
    found = (_address(r) for r in recipients or ())
    return tuple(a for a in found if a is not None)

