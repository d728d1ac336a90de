"""App settings: the only place that reads the environment (spec §6).

Pointing ``GRAPH_AUTHORITY_HOST``/``GRAPH_BASE_URL`` (and ``REQUESTS_CA_BUNDLE``) at any faithful Graph
and identity platform over HTTPS is the only difference between production and the local emulator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEVELOPMENT_STORAGE = "UseDevelopmentStorage=true"
AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)


@dataclass(frozen=True)
class Settings:
    storage_connection_string: str = ""
    storage_account_name: str = ""
    graph_client_id: str = ""
    graph_client_secret: str = ""
    # Empty unless given: ``from_env`` fills in the Graph adapter's defaults (adapters.graph.endpoints).
    authority_host: str = ""
    graph_base_url: str = ""
    public_base_url: str = ""
    token_encryption_key: str = ""
    ca_bundle: str | None = None
    table_prefix: str = ""
    sync_queue: str = "mailbox-sync"
    version: str = "0.1.0"
    # Push (issue 6): Graph subscriptions need an https PUBLIC_BASE_URL unless this allows http (only for
    # the local emulator demo); CRM webhooks go to public https hosts only unless the second one allows
    # private, loopback and plain-http targets (local demo and tests).
    notifications_allow_http: bool = False
    webhooks_allow_private_networks: bool = False
    ingest_max_bytes: int = 25 * 1024 * 1024
    # Google (issue 18): the OAuth client of the deployment's Google Cloud project and Google's hosts.
    # Empty URLs unless given: ``from_env`` fills in Google's real ones (adapters.google.endpoints).
    google_client_id: str = ""
    google_client_secret: str = ""
    google_authorize_url: str = ""
    google_token_url: str = ""
    gmail_base_url: str = ""
    google_userinfo_url: str = ""
    google_jwks_url: str = ""
    google_revoke_url: str = ""  # where a disconnect revokes a delegated mailbox's grant
    # Gmail push: the Pub/Sub topic ``users.watch`` publishes to, and what its push subscription's OIDC
    # token must carry (audience; default: the push endpoint's URL) and be issued for (service account).
    google_pubsub_topic: str = ""
    google_push_audience: str = ""
    google_push_service_account: str = ""
    # IMAP/SMTP servers' certificates are checked against this PEM bundle when set (a private CA: tests),
    # else REQUESTS_CA_BUNDLE when set, else the system's trust store. Never a way to turn checking off.
    mail_server_ca_bundle: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        # Here, not at the top: importing settings (cold start) loads no adapter package.
        from sync_core.adapters.google import endpoints as google  # noqa: PLC0415
        from sync_core.adapters.graph.endpoints import DEFAULT_AUTHORITY_HOST, DEFAULT_GRAPH_BASE_URL  # noqa: PLC0415

        env = os.environ if env is None else env
        storage = env.get("AzureWebJobsStorage", "")
        if storage.strip() == DEVELOPMENT_STORAGE:
            storage = AZURITE_CONNECTION_STRING
        return cls(
            storage_connection_string=storage,
            storage_account_name=env.get("AzureWebJobsStorage__accountName", ""),
            graph_client_id=env.get("GRAPH_CLIENT_ID", ""),
            graph_client_secret=env.get("GRAPH_CLIENT_SECRET", ""),
            authority_host=env.get("GRAPH_AUTHORITY_HOST", DEFAULT_AUTHORITY_HOST).rstrip("/"),
            graph_base_url=env.get("GRAPH_BASE_URL", DEFAULT_GRAPH_BASE_URL).rstrip("/"),
            public_base_url=env.get("PUBLIC_BASE_URL", "").rstrip("/"),
            token_encryption_key=env.get("TOKEN_ENCRYPTION_KEY", ""),
            ca_bundle=env.get("REQUESTS_CA_BUNDLE") or None,
            table_prefix=env.get("TABLE_PREFIX", ""),
            sync_queue=env.get("SYNC_QUEUE_NAME", "mailbox-sync"),
            notifications_allow_http=_flag(env.get("GRAPH_NOTIFICATIONS_ALLOW_HTTP", "")),
            webhooks_allow_private_networks=_flag(env.get("WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "")),
            ingest_max_bytes=_positive_int(env.get("INGEST_MAX_MESSAGE_BYTES", ""), 25 * 1024 * 1024),
            google_client_id=env.get("GOOGLE_CLIENT_ID", ""),
            google_client_secret=env.get("GOOGLE_CLIENT_SECRET", ""),
            google_authorize_url=env.get("GOOGLE_AUTHORIZE_URL", google.DEFAULT_GOOGLE_AUTHORIZE_URL),
            google_token_url=env.get("GOOGLE_TOKEN_URL", google.DEFAULT_GOOGLE_TOKEN_URL),
            gmail_base_url=env.get("GMAIL_BASE_URL", google.DEFAULT_GMAIL_BASE_URL).rstrip("/"),
            google_userinfo_url=env.get("GOOGLE_USERINFO_URL", google.DEFAULT_GOOGLE_USERINFO_URL),
            google_jwks_url=env.get("GOOGLE_JWKS_URL", google.DEFAULT_GOOGLE_JWKS_URL),
            google_revoke_url=env.get("GOOGLE_REVOKE_URL", google.DEFAULT_GOOGLE_REVOKE_URL),
            google_pubsub_topic=env.get("GOOGLE_PUBSUB_TOPIC", "").strip(),
            google_push_audience=env.get("GOOGLE_PUSH_AUDIENCE", "").strip()
            or (f"{env.get('PUBLIC_BASE_URL', '').rstrip('/')}/api/google/push" if env.get("PUBLIC_BASE_URL") else ""),
            google_push_service_account=env.get("GOOGLE_PUSH_SERVICE_ACCOUNT", "").strip(),
            mail_server_ca_bundle=env.get("MAIL_SERVER_CA_BUNDLE") or None,
        )

    def __repr__(self) -> str:
        """Never show secrets (a Settings object may end up in a log line or a traceback)."""
        return (
            f"Settings(graph_base_url={self.graph_base_url!r}, authority_host={self.authority_host!r}, "
            f"public_base_url={self.public_base_url!r}, table_prefix={self.table_prefix!r})"
        )


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _positive_int(value: str, default: int) -> int:
    try:
        parsed = int(value.strip())
    except ValueError:
        return default
    return parsed if parsed > 0 else default
