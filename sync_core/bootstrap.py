"""The composition root: the one place that builds adapters from settings and wires use cases.

``services()`` is built lazily and cached, so importing function_app does no I/O and a bad setting
fails invocations (with a clear error) rather than function indexing.

Cold start: importing this module imports settings only. Every adapter and use case (and with them the
SDKs: azure-data-tables, azure-storage-queue, azure-identity, MSAL, requests, cryptography) is imported
inside the method or cached property that builds it, so a worker loads each SDK on the first invocation
that needs it; a CRM records call never loads MSAL, the queue SDK or cryptography.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sync_core.errors import StorageUnavailable
from sync_core.settings import Settings

if TYPE_CHECKING:
    import requests
    from azure.data.tables import TableServiceClient

    from sync_core.adapters.google.http import GmailHttp
    from sync_core.adapters.google.push import GmailPushes
    from sync_core.adapters.graph.http import GraphHttp
    from sync_core.adapters.graph.identity import MsalIdentity
    from sync_core.adapters.imap.account import ImapLimits
    from sync_core.adapters.storage_queue import StorageWorkQueue
    from sync_core.adapters.table_backfill import TableBackfillJobStore
    from sync_core.adapters.table_due import TableDueIndex
    from sync_core.adapters.table_sends import TableSendStore
    from sync_core.adapters.table_subscriptions import TableSubscriptionStore
    from sync_core.adapters.table_webhook_log import TableWebhookLog, TableWebhookSecretStore
    from sync_core.auth.crypto import TokenCipher
    from sync_core.auth.token_cache_store import TableTokenCacheStore
    from sync_core.domain.model import Mailbox
    from sync_core.ports import MailSender, MailSource
    from sync_core.ports.identity import TokenSource
    from sync_core.use_cases.connect import ConnectDeps, ConnectProvider
    from sync_core.use_cases.ingest import IngestDeps
    from sync_core.use_cases.mailbox_watch import MailboxWatchDeps
    from sync_core.use_cases.maintenance import MaintenanceDeps
    from sync_core.use_cases.notifications import NotificationDeps
    from sync_core.use_cases.preview import PreviewDeps
    from sync_core.use_cases.record_backfill import BackfillRequestDeps, RecordBackfillDeps
    from sync_core.use_cases.schedule import ScheduleDeps
    from sync_core.use_cases.send import SendDeps
    from sync_core.use_cases.subscriptions import SubscriptionDeps
    from sync_core.use_cases.sync_mailbox import SyncDeps, SyncOutcome
    from sync_core.use_cases.webhooks import WebhookDeps, WebhookEvents

log = logging.getLogger(__name__)
# HTTP client libraries log request URLs: the Azure SDK every storage request at INFO, urllib3 every
# request line at DEBUG and retries or unparsable headers (with the URL) at WARNING, under requests and
# azure-core alike. Table query URLs carry partition and row keys, which hold addresses, unmatched mail's
# included, so these loggers stay above those levels whatever level the app runs at (failures still reach
# the app as exceptions, which it logs without URLs). Keep worker logs about the product.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
logging.getLogger("urllib3").setLevel(logging.ERROR)
logging.getLogger("requests").setLevel(logging.WARNING)
# MSAL's DEBUG log of the token cache shows authorization codes and PKCE verifiers: never let it through.
logging.getLogger("msal").setLevel(logging.INFO)
# IMAPClient logs every line of the IMAP conversation at DEBUG (``imapclient.imaplib``): envelopes and
# headers of unmatched mail included. Never let it through either.
logging.getLogger("imapclient").setLevel(logging.INFO)


class Services:
    """Adapters built once per worker process; use cases get them through the ``*_deps`` methods."""

    def __init__(self, settings: Settings) -> None:
        from sync_core.adapters.clock import SystemClock
        from sync_core.adapters.tables import TableStores

        self.settings = settings
        self.tables = _table_service(settings)
        self.stores = TableStores.create(self.tables, settings.table_prefix)
        self.clock = SystemClock()

    def health(self) -> dict[str, Any]:
        """``ok`` when Table storage answers; never includes connection details."""
        from azure.core.exceptions import AzureError

        try:
            next(iter(self.tables.list_tables(results_per_page=1).by_page()), None)
            storage = "ok"
        except (AzureError, ValueError) as exc:
            log.warning("health: storage unreachable (%s)", type(exc).__name__)
            storage = "unreachable"
        return {"status": "ok" if storage == "ok" else "degraded", "storage": storage, "version": self.settings.version}

    @functools.cached_property
    def _session(self) -> requests.Session:
        """Graph's connection pool, shared by every Graph client of the worker."""
        from sync_core.adapters.graph.session import make_session

        return make_session(self.settings.ca_bundle)

    @functools.cached_property
    def _cipher(self) -> TokenCipher:
        from sync_core.auth.crypto import TokenCipher

        return TokenCipher.from_setting(self.settings.token_encryption_key)

    @functools.cached_property
    def token_caches(self) -> TableTokenCacheStore:
        from sync_core.auth.token_cache_store import TableTokenCacheStore

        return TableTokenCacheStore(self.tables, self._cipher, self.settings.table_prefix, self.stores.metrics)

    @functools.cached_property
    def identity(self) -> MsalIdentity:
        from sync_core.adapters.graph.identity import MsalIdentity

        return MsalIdentity(self.settings, self.token_caches)

    def graph_http(self, mailbox: Mailbox) -> GraphHttp:
        from sync_core.adapters.graph.http import GraphHttp

        return GraphHttp(self._session, self.settings.graph_base_url, self.identity.token_source(mailbox))

    def google_token_source(self, mailbox: Mailbox) -> TokenSource:
        """Access tokens of a Google mailbox: a delegated one's from its stored (encrypted) grant, an
        application-mode one's from the org's Workspace service account (read scope only)."""
        from sync_core.adapters.google.tokens import GoogleTokenSource
        from sync_core.domain.model import ConnectionMode

        s = self.settings
        if mailbox.mode is ConnectionMode.APPLICATION:
            from sync_core.adapters.google.service_account import (
                ServiceAccountTokenSource,
                mailbox_scopes,
                stored_key_loader,
            )

            load = stored_key_loader(self.token_caches, mailbox.org_id)
            scopes = mailbox_scopes(False)  # reading needs no more; a sender asks for gmail.send itself
            return ServiceAccountTokenSource(self._session, s.google_token_url, load, mailbox.address, scopes)
        return GoogleTokenSource(
            self._session, s.google_token_url, s.google_client_id, s.google_client_secret, self.token_caches, mailbox
        )

    def gmail_http(self, mailbox: Mailbox) -> GmailHttp:
        """The Gmail API for one delegated mailbox, with its stored Google grant."""
        from sync_core.adapters.google.http import GmailHttp

        return GmailHttp(self._session, self.settings.gmail_base_url, self.google_token_source(mailbox))

    @property
    def _gmail_push_configured(self) -> bool:
        """Gmail push is set up (checked before building it: a deployment without it never loads its SDKs)."""
        s = self.settings
        return bool(s.google_pubsub_topic and s.google_push_audience and s.google_push_service_account)

    @functools.cached_property
    def gmail_pushes(self) -> GmailPushes:
        """Gmail's watch and the verification of its pushes (one per worker: it caches Google's keys)."""
        from sync_core.adapters.google.push import GmailPushes

        s = self.settings
        return GmailPushes(
            self._session, self.gmail_http, s.google_pubsub_topic, s.google_jwks_url, s.google_push_audience,
            s.google_push_service_account,
        )  # fmt: skip

    def mailbox_watch_deps(self) -> MailboxWatchDeps:
        from sync_core.use_cases.mailbox_watch import MailboxWatchDeps
        from sync_core.use_cases.schedule import request_sync

        return MailboxWatchDeps(
            pushes={"google": self.gmail_pushes},
            store=self.subscription_store,
            mailboxes=self.stores.mailboxes,
            settings=self.stores.settings,
            clock=self.clock,
            request_sync=lambda org, mailbox: request_sync(self.schedule_deps(), org, mailbox),
        )

    def maintain_subscriptions(self) -> None:
        """The subscription timer: Graph subscriptions, then mailbox watches (renewed daily)."""
        from sync_core.use_cases import mailbox_watch, subscriptions

        subscriptions.maintain(self.subscription_deps())
        if self._gmail_push_configured:
            mailbox_watch.renew(self.mailbox_watch_deps())

    def google_connect(self) -> ConnectProvider:
        """Google's part of a delegated connect: OAuth with PKCE, and who the signed-in account is."""
        from sync_core.adapters.google.identity import GoogleDirectory, GoogleIdentity
        from sync_core.adapters.google.service_account import GoogleOrgAccess
        from sync_core.use_cases.connect import ConnectProvider

        s = self.settings
        identity = GoogleIdentity(
            self._session, s.google_client_id, s.google_client_secret, s.google_authorize_url, s.google_token_url,
            self.google_token_source,
        )  # fmt: skip
        return ConnectProvider(
            identity=identity,
            directory_for=lambda token: GoogleDirectory(self._session, s.google_userinfo_url, s.gmail_base_url, token),
            label="Google",
            account_label="Google",
            org_access=GoogleOrgAccess(self._session, s.google_token_url, s.gmail_base_url),
        )

    def graph_http_for_sending(self, mailbox: Mailbox) -> GraphHttp:
        """Graph for a sender: a delegated mailbox's tokens carry the sending scopes."""
        from sync_core.adapters.graph.http import GraphHttp

        return GraphHttp(self._session, self.settings.graph_base_url, self.identity.token_source(mailbox, send=True))

    # -- providers: one registration per mail provider ------------------------------------------------

    def mail_source_factories(self) -> dict[str, Callable[[], MailSource]]:
        """The provider table of the ``MailSource`` port: a mailbox's ``provider`` picks its factory.
        A new provider is one adapter package and one entry here (plus its connect route)."""

        def microsoft() -> MailSource:
            from sync_core.adapters.graph.mail import GraphMailSource

            return GraphMailSource(self.graph_http)

        def google() -> MailSource:
            from sync_core.adapters.google.mail import GmailMailSource

            return GmailMailSource(self.gmail_http)

        def imap() -> MailSource:
            from sync_core.adapters.imap.account import stored_account
            from sync_core.adapters.imap.mail import ImapMailSource

            return ImapMailSource(stored_account(self.token_caches), self._imap_limits)

        return {"microsoft": microsoft, "google": google, "imap": imap}

    @functools.cached_property
    def _imap_limits(self) -> ImapLimits:
        """IMAP bounds; server certificates checked against ``MAIL_SERVER_CA_BUNDLE`` when set, else the
        deployment's ``REQUESTS_CA_BUNDLE`` when set (the local stack's, which trusts its Dovecot), else the
        system's trust store."""
        from sync_core.adapters.imap.account import ImapLimits

        return ImapLimits(ca_file=self.settings.mail_server_ca_bundle or self.settings.ca_bundle)

    def mail_source(self) -> MailSource:
        """A mail source for one request (explain) or one run (``sync_deps``): it keeps per-run request
        counts, and routes each mailbox to its provider's adapter."""
        from sync_core.adapters.providers import MailSourceByProvider

        return MailSourceByProvider(self.mail_source_factories())

    def mail_sender_factories(self) -> dict[str, Callable[[], MailSender]]:
        """The provider table of the ``MailSender`` port, keyed like ``mail_source_factories``."""

        def microsoft() -> MailSender:
            from sync_core.adapters.graph.send import GraphMailSender

            return GraphMailSender(
                self.graph_http_for_sending, lambda mailbox: self.identity.token_source(mailbox, send=True)
            )

        def google() -> MailSender:
            from sync_core.adapters.google.send import GmailMailSender

            return GmailMailSender(self.gmail_http_for_sending, self.gmail_send_permission_problem)

        def imap() -> MailSender:
            from sync_core.adapters.imap.account import stored_server_account
            from sync_core.adapters.imap.send import ImapMailSender

            return ImapMailSender(stored_server_account(self.token_caches), self._imap_limits)

        return {"microsoft": microsoft, "google": google, "imap": imap}

    def gmail_http_for_sending(self, mailbox: Mailbox) -> GmailHttp:
        from sync_core.adapters.google.http import GmailHttp

        return GmailHttp(self._session, self.settings.gmail_base_url, self.gmail_send_token_source(mailbox))

    def gmail_send_token_source(self, mailbox: Mailbox) -> TokenSource:
        """A Gmail sender's tokens: a delegated grant carries gmail.send when the org sends; a Workspace
        mailbox's token is asked for with gmail.send from the org's service account."""
        from sync_core.domain.model import ConnectionMode

        if mailbox.mode is not ConnectionMode.APPLICATION:
            return self.google_token_source(mailbox)
        from sync_core.adapters.google.service_account import (
            ServiceAccountTokenSource,
            mailbox_scopes,
            stored_key_loader,
        )

        load = stored_key_loader(self.token_caches, mailbox.org_id)
        url = self.settings.google_token_url
        return ServiceAccountTokenSource(self._session, url, load, mailbox.address, mailbox_scopes(True))

    def gmail_send_permission_problem(self, mailbox: Mailbox) -> str | None:
        """Why a Gmail mailbox may not send: a delegated grant without gmail.send, or a Workspace
        service account whose delegation lacks it (Google's reason); None when it may or Google cannot
        tell now (the send finds out)."""
        import json

        from sync_core.adapters.google.send import delegated_permission_problem
        from sync_core.domain.model import ConnectionMode
        from sync_core.errors import ConfigurationFailure, GrantFailure, TokenDecryptionError, TransientFailure
        from sync_core.ports.identity import mailbox_owner

        if mailbox.mode is ConnectionMode.APPLICATION:
            try:
                self.gmail_send_token_source(mailbox)(False)
            except (ConfigurationFailure, GrantFailure) as exc:
                return str(exc)
            except TransientFailure:
                return None
            return None
        try:
            stored = self.token_caches.get(mailbox.org_id, mailbox_owner(mailbox.mailbox_id))
            grant = json.loads(stored.value) if stored is not None else {}
        except (TokenDecryptionError, ValueError):
            return None  # the send's own token request says what is wrong
        return delegated_permission_problem(str(grant.get("scope") or "") if isinstance(grant, dict) else "")

    @functools.cached_property
    def mail_sender(self) -> MailSender:
        from sync_core.adapters.providers import MailSenderByProvider

        return MailSenderByProvider(self.mail_sender_factories())

    @functools.cached_property
    def sends(self) -> TableSendStore:
        from sync_core.adapters.table_sends import TableSendStore

        return TableSendStore(self.tables, self.settings.table_prefix, self.stores.metrics)

    def send_deps(self) -> SendDeps:
        from sync_core.use_cases.send import SendDeps
        from sync_core.use_cases.webhooks import announcer

        s = self.stores
        return SendDeps(
            sends=self.sends,
            mailboxes=s.mailboxes,
            settings=s.settings,
            records=s.records,
            activities=s.activities,
            mail=self.mail_source(),
            sender=self.mail_sender,
            queue=self.push_queue,
            clock=self.clock,
            announce=announcer(self.webhook_deps()),
            events=self.activity_events(),
        )

    def _render_send(self, org_id: str, send_id: str) -> dict[str, Any] | None:
        from sync_core.domain.representation import send_to_json

        stored = self.sends.get(org_id, send_id)
        return send_to_json(stored.value) if stored is not None else None

    def connect_deps(self) -> ConnectDeps:
        from sync_core.adapters.graph.directory import GraphDirectory
        from sync_core.adapters.graph.http import GraphHttp
        from sync_core.adapters.imap.probe import ImapServerProbe
        from sync_core.auth.token_cache_store import TableAuthFlowStore, TableOrgTenantStore
        from sync_core.use_cases.connect import ConnectDeps

        s, prefix, metrics = self.stores, self.settings.table_prefix, self.stores.metrics
        return ConnectDeps(
            identity=self.identity,
            flows=TableAuthFlowStore(self.tables, self._cipher, prefix, metrics),
            tokens=self.token_caches,
            tenants=TableOrgTenantStore(self.tables, prefix, metrics),
            mailboxes=s.mailboxes,
            settings=s.settings,
            cursors=s.cursors,
            activities=s.activities,
            leases=s.leases,
            clock=self.clock,
            directory_for=lambda token_source: GraphDirectory(
                GraphHttp(self._session, self.settings.graph_base_url, token_source)
            ),
            public_base_url=self.settings.public_base_url,
            before_disconnect=self._before_disconnect,
            providers={"google": self.google_connect()},
            server_probe=ImapServerProbe(self._imap_limits),
        )

    def _before_disconnect(self, org_id: str, mailbox_id: str) -> None:
        """While the mailbox's tokens still exist: delete its Graph subscriptions, stop its watch, then
        revoke a delegated Google grant at Google (best effort, whatever happened before)."""
        from sync_core.use_cases import mailbox_watch
        from sync_core.use_cases.subscriptions import remove_for_mailbox

        try:
            remove_for_mailbox(self.subscription_deps(), org_id, mailbox_id)
            if self._gmail_push_configured:
                mailbox_watch.stop(self.mailbox_watch_deps(), org_id, mailbox_id)
        finally:
            self._revoke_google_grant(org_id, mailbox_id)

    def _revoke_google_grant(self, org_id: str, mailbox_id: str) -> None:
        from sync_core.adapters.google.tokens import revoke_grant
        from sync_core.domain.model import ConnectionMode

        found = self.stores.mailboxes.get(org_id, mailbox_id)
        mailbox = found.value if found is not None else None
        if mailbox is not None and mailbox.provider == "google" and mailbox.mode is ConnectionMode.DELEGATED:
            revoke_grant(self._session, self.settings.google_revoke_url, self.token_caches, mailbox)

    def sync_deps(self, table_transactions: Callable[[], int] = lambda: 0) -> SyncDeps:
        """Fresh per run: the mail source keeps per-run request counts and provider clients."""
        from sync_core.use_cases.sync_mailbox import SyncDeps

        s = self.stores
        return SyncDeps(
            mailboxes=s.mailboxes,
            settings=s.settings,
            records=s.records,
            activities=s.activities,
            cursors=s.cursors,
            leases=s.leases,
            reports=s.runs,
            mail=self.mail_source(),
            clock=self.clock,
            table_transactions=table_transactions,
            events=self.activity_events(),
            state=s.sync_state,
        )

    def sync(
        self, org_id: str, mailbox_id: str, run_id: str = "", budget: timedelta = timedelta(minutes=4)
    ) -> SyncOutcome:
        from sync_core.use_cases.sync_mailbox import sync_mailbox

        # A per-run measurement, so concurrent runs in one worker never mix their transaction counts.
        with self.stores.metrics.measure() as tables:
            deps = self.sync_deps(lambda: tables.transactions)
            try:
                return sync_mailbox(deps, org_id, mailbox_id, budget, run_id=run_id)
            finally:
                close = getattr(deps.mail, "close", None)
                if close is not None:
                    close()  # the run's provider connections (IMAP logs out)

    @functools.cached_property
    def queue(self) -> StorageWorkQueue:
        """The sync queue (``SYNC_QUEUE_NAME``) the queue-triggered function reads."""
        from sync_core.adapters.storage_queue import StorageWorkQueue

        return StorageWorkQueue.from_settings(self.settings)

    @functools.cached_property
    def due_index(self) -> TableDueIndex:
        from sync_core.adapters.table_due import TableDueIndex

        return TableDueIndex(self.tables, self.settings.table_prefix, self.stores.metrics)

    def mailbox_activated(self, org_id: str, mailbox_id: str) -> None:
        """Make a newly connected, added, reconnected or re-enabled mailbox due now, and queue its change
        notification subscriptions (``SubscriptionWork`` ``ensure`` on the push queue), so mail arriving
        right after the connect is pushed instead of waiting for the 5-minute maintenance timer. Neither
        ever fails the request: a storage hiccup is logged, and the timer's catch-up sweep and the
        maintenance timer (the safety net) do the same work later."""
        from sync_core.use_cases.commands import SubscriptionAction, SubscriptionWork
        from sync_core.use_cases.schedule import schedule_mailbox

        try:
            schedule_mailbox(self.schedule_deps(), org_id, mailbox_id)
        except StorageUnavailable:
            log.warning("could not schedule a mailbox right away; the timer sweep will")
        if self._gmail_push_configured:  # a mailbox whose provider pushes per mailbox is watched now
            from sync_core.use_cases import mailbox_watch

            try:
                mailbox_watch.ensure(self.mailbox_watch_deps(), org_id, mailbox_id)
            except StorageUnavailable:
                log.warning("could not record a mailbox watch; polling goes on")
        if not self.subscription_deps().enabled:
            return  # no public https URL: nothing is ever subscribed
        work = SubscriptionWork(SubscriptionAction.ENSURE, org_id=org_id, mailbox_id=mailbox_id)
        try:
            self.push_queue.enqueue(work.to_json())
        except Exception as exc:  # best effort: the maintenance timer subscribes it anyway
            log.warning("could not queue the subscriptions of a new mailbox (%s); the timer will", type(exc).__name__)

    # -- record backfill and previews (issue 19) ------------------------------------------------------

    @functools.cached_property
    def backfill_jobs(self) -> TableBackfillJobStore:
        from sync_core.adapters.table_backfill import TableBackfillJobStore

        return TableBackfillJobStore(self.tables, self.settings.table_prefix, self.stores.metrics)

    def record_backfill_deps(self) -> RecordBackfillDeps:
        """Fresh per job run, like ``sync_deps`` (the mail source keeps per-run request counts)."""
        from sync_core.use_cases.record_backfill import RecordBackfillDeps

        s = self.stores
        return RecordBackfillDeps(
            mailboxes=s.mailboxes,
            settings=s.settings,
            records=s.records,
            activities=s.activities,
            leases=s.leases,
            reports=s.runs,
            jobs=self.backfill_jobs,
            queue=self.queue,
            mail=self.mail_source(),
            clock=self.clock,
            events=self.activity_events(),
        )

    def backfill_request_deps(self) -> BackfillRequestDeps:
        """For the records API: no mail source, and the queue client is built only to queue a job."""
        from sync_core.use_cases.record_backfill import BackfillRequestDeps

        def enqueue(message: Mapping[str, str]) -> None:  # the queue SDK loads only when a job is queued
            self.queue.enqueue(message)

        s = self.stores
        return BackfillRequestDeps(s.mailboxes, s.settings, s.records, self.backfill_jobs, self.clock, enqueue)

    def preview_deps(self) -> PreviewDeps:
        from sync_core.use_cases.preview import PreviewDeps

        s = self.stores
        return PreviewDeps(s.mailboxes, s.settings, s.records, self.mail_source(), self.clock)

    def schedule_deps(self) -> ScheduleDeps:
        from sync_core.adapters.table_due import TableMailboxCatalog
        from sync_core.use_cases.schedule import ScheduleDeps

        s = self.stores
        return ScheduleDeps(
            due=self.due_index,
            queue=self.queue,
            mailboxes=s.mailboxes,
            settings=s.settings,
            cursors=s.cursors,
            leases=s.leases,
            clock=self.clock,
            sync=self.sync,
            catalog=TableMailboxCatalog(self.tables, self.settings.table_prefix, s.metrics),
        )

    # -- push (issue 6): Graph subscriptions and notifications, CRM webhooks, RFC 822 ingest ----------

    @functools.cached_property
    def push_queue(self) -> StorageWorkQueue:
        """``<SYNC_QUEUE_NAME>-push``: webhook delivery attempts and lifecycle follow-ups."""
        from sync_core.adapters.storage_queue import StorageWorkQueue

        push = dataclasses.replace(self.settings, sync_queue=self.settings.sync_queue + "-push")
        return StorageWorkQueue.from_settings(push)

    @functools.cached_property
    def subscription_store(self) -> TableSubscriptionStore:
        from sync_core.adapters.table_subscriptions import TableSubscriptionStore

        return TableSubscriptionStore(self.tables, self.settings.table_prefix, self.stores.metrics)

    def subscription_deps(self) -> SubscriptionDeps:
        from sync_core.adapters.graph.subscriptions import GraphSubscriptionApi
        from sync_core.adapters.table_due import TableMailboxCatalog
        from sync_core.use_cases.subscriptions import SubscriptionDeps

        s = self.stores
        return SubscriptionDeps(
            store=self.subscription_store,
            api=GraphSubscriptionApi(self.graph_http),
            mailboxes=s.mailboxes,
            settings=s.settings,
            leases=s.leases,
            clock=self.clock,
            public_base_url=self.settings.public_base_url,
            allow_http=self.settings.notifications_allow_http,
            catalog=TableMailboxCatalog(self.tables, self.settings.table_prefix, s.metrics),
            serves=lambda mailbox: mailbox.provider == "microsoft",
        )

    def notification_deps(self) -> NotificationDeps:
        from sync_core.use_cases.notifications import NotificationDeps
        from sync_core.use_cases.schedule import request_sync

        return NotificationDeps(
            store=self.subscription_store,
            clock=self.clock,
            request_sync=lambda org, mailbox: request_sync(self.schedule_deps(), org, mailbox).status,
            enqueue_work=self.push_queue.enqueue,
        )

    def webhook_deps(self) -> WebhookDeps:
        from sync_core.adapters.http_webhooks import RequestsWebhookSender
        from sync_core.domain.representation import activity_to_json
        from sync_core.use_cases.webhooks import WebhookDeps

        return WebhookDeps(
            settings=self.stores.settings,
            activities=self.stores.activities,
            deliveries=self._webhook_log,
            secrets=self._webhook_secrets,
            queue=self.push_queue,
            clock=self.clock,
            sender=RequestsWebhookSender(
                self._webhook_session, allow_private=self.settings.webhooks_allow_private_networks
            ),
            render=activity_to_json,
            render_send=self._render_send,
        )

    @functools.cached_property
    def _webhook_log(self) -> TableWebhookLog:
        from sync_core.adapters.table_webhook_log import TableWebhookLog

        return TableWebhookLog(self.tables, self.settings.table_prefix, self.stores.metrics)

    @functools.cached_property
    def _webhook_secrets(self) -> TableWebhookSecretStore:
        from sync_core.adapters.table_webhook_log import TableWebhookSecretStore

        return TableWebhookSecretStore(self.tables, self._cipher, self.settings.table_prefix, self.stores.metrics)

    @functools.cached_property
    def _webhook_session(self) -> requests.Session:
        import requests

        return requests.Session()

    def activity_events(self) -> WebhookEvents:
        from sync_core.use_cases.webhooks import WebhookEvents

        return WebhookEvents(self.webhook_deps())

    def maintenance_deps(self) -> MaintenanceDeps:
        from sync_core.adapters.table_due import TableMailboxCatalog
        from sync_core.auth.token_cache_store import TableOrgTenantStore
        from sync_core.use_cases.maintenance import MaintenanceDeps

        prefix, metrics = self.settings.table_prefix, self.stores.metrics
        return MaintenanceDeps(
            catalog=TableMailboxCatalog(self.tables, prefix, metrics),
            settings=self.stores.settings,
            tokens=self.token_caches,
            tenants=TableOrgTenantStore(self.tables, prefix, metrics),
            secrets=self._webhook_secrets,
            webhooks=self.webhook_deps(),
            clock=self.clock,
            rotating=len(self._cipher.kids) > 1,
            org_access_providers=("google",),
        )

    def ingest_deps(self) -> IngestDeps:
        from sync_core.use_cases.ingest import IngestDeps

        s = self.stores
        return IngestDeps(s.mailboxes, s.settings, s.records, s.activities, self.clock, self.activity_events())


def _table_service(settings: Settings) -> TableServiceClient:
    """The Table service client. Its transport consults the environment per request (proxies, twice, by
    scanning every variable) only when the environment names a proxy: otherwise that lookup finds nothing
    and costs a sizeable share of a sync run's CPU (``use_env_settings``, azure-core's RequestsTransport)."""
    import urllib.request

    from azure.data.tables import TableServiceClient

    env = bool(urllib.request.getproxies())
    if settings.storage_connection_string:
        return TableServiceClient.from_connection_string(settings.storage_connection_string, use_env_settings=env)
    if settings.storage_account_name:
        from azure.identity import DefaultAzureCredential  # only for identity-based storage

        return TableServiceClient(
            f"https://{settings.storage_account_name}.table.core.windows.net",
            credential=DefaultAzureCredential(),
            use_env_settings=env,
        )
    raise ValueError("AzureWebJobsStorage is not set")


@functools.cache
def services() -> Services:
    return Services(Settings.from_env())
