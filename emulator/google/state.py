"""Everything the Google emulator remembers, behind one re-entrant lock.

Invariants:

* ``GoogleState.lock`` guards every field; nothing holds it while sleeping or doing network I/O (push
  deliveries run on their own threads with a copy of what they send).
* A mailbox's ``history_id`` only grows: every change (message added, label added) takes the next id
  and appends one :class:`HistoryRecord`. ``history_floor`` is the oldest ``startHistoryId`` that
  ``history.list`` still accepts; ``expire_history`` raises it to the current id (Gmail: "history
  records are typically available for at least one week and often longer", otherwise HTTP 404).
* Tokens are opaque random strings looked up here; revoking a grant removes its refresh tokens and
  makes its access tokens fail at once (Google's revocation revokes both).
* ``snapshot()``/``restore()`` carry the whole state except the quota windows (process-local) across
  a restart, so refresh tokens, history ids and watches issued before still work.
"""

from __future__ import annotations

import pickle
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from emulator.identity import SigningKey

GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_COMPOSE = "https://www.googleapis.com/auth/gmail.compose"
GMAIL_MODIFY = "https://www.googleapis.com/auth/gmail.modify"
GMAIL_METADATA = "https://www.googleapis.com/auth/gmail.metadata"
GMAIL_FULL = "https://mail.google.com/"
USERINFO_EMAIL = "https://www.googleapis.com/auth/userinfo.email"
USERINFO_PROFILE = "https://www.googleapis.com/auth/userinfo.profile"
# Short names Google accepts in the scope parameter and answers with their URL form.
SCOPE_ALIASES = {"email": USERINFO_EMAIL, "profile": USERINFO_PROFILE}
KNOWN_SCOPES = frozenset(
    {
        "openid", GMAIL_READONLY, GMAIL_SEND, GMAIL_COMPOSE, GMAIL_MODIFY, GMAIL_METADATA, GMAIL_FULL,
        USERINFO_EMAIL, USERINFO_PROFILE,
        "https://www.googleapis.com/auth/gmail.labels",
        "https://www.googleapis.com/auth/gmail.insert",
    }
)
SYSTEM_LABELS = (
    "INBOX", "SENT", "SPAM", "TRASH", "DRAFT", "IMPORTANT", "STARRED", "UNREAD", "CHAT",
    "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS", "CATEGORY_UPDATES", "CATEGORY_FORUMS",
)
FAULT_STATUSES = (400, 403, 429, 500, 502, 503, 504)
PUSH_SERVICE_ACCOUNT = "gmail-api-push@system.gserviceaccount.com"


class GoogleStateError(Exception):
    """A control-API request that cannot be done (unknown user, duplicate, bad value): HTTP ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GoogleConfig:
    """Tunable behaviour; defaults are Google's documented numbers (docs/google-emulator-facts.md)."""

    issuer: str = "https://accounts.google.com"
    latency_ms: int = 0
    access_token_lifetime_s: int = 3599
    auth_code_lifetime_s: int = 600
    user_quota_units: int = 15_000  # per user per minute (userRateLimitExceeded)
    quota_window_s: int = 60
    quota_error_status: int = 429  # Google answers 429, or 403 as documented for usage limits
    history_max_results: int = 500
    watch_lifetime_s: int = 7 * 24 * 3600
    allow_http_push_endpoints: bool = False
    push_retries: int = 3
    daily_send_limit: int = 2000  # messages per user per rolling 24 h (Google Workspace sending limit)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` after checking every name and type; raises ValueError, changing nothing."""
        known = {f.name for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown setting {name!r}")
            default = getattr(GoogleConfig, name)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif isinstance(default, str):
                if not isinstance(value, str) or not value.startswith("https://"):
                    raise ValueError(f"{name} must be an https URL")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        if changes.get("quota_error_status", 429) not in (403, 429):
            raise ValueError("quota_error_status must be 403 or 429")
        for name, value in changes.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Domain:
    """A Google Workspace domain (its users get ``hd``); ``delegations`` maps a service account's
    client id to the scopes the domain's admin delegated to it (domain-wide delegation)."""

    name: str
    delegations: dict[str, frozenset[str]] = field(default_factory=dict)


@dataclass
class Label:
    id: str
    name: str
    type: str  # "system" or "user"


@dataclass
class GmailMessage:
    """One message of one mailbox: the RFC 822 bytes as stored, its labels and ids."""

    id: str
    thread_id: str
    raw: bytes
    label_ids: list[str]
    internal_date_ms: int
    history_id: int
    seq: int


@dataclass
class HistoryRecord:
    """One mailbox change: ``kind`` is messageAdded or labelsAdded; ``label_ids`` as of the change."""

    id: int
    kind: str
    message_id: str
    thread_id: str
    label_ids: list[str]
    added_labels: list[str] = field(default_factory=list)


@dataclass
class Watch:
    topic: str
    label_ids: list[str]
    label_filter_behavior: str  # "include" or "exclude"
    expiration_ms: int
    history_id: int


@dataclass
class Draft:
    id: str
    message_id: str


@dataclass
class Mailbox:
    messages: dict[str, GmailMessage] = field(default_factory=dict)
    history: list[HistoryRecord] = field(default_factory=list)
    history_id: int = 1000
    history_floor: int = 0
    user_labels: dict[str, Label] = field(default_factory=dict)
    drafts: dict[str, Draft] = field(default_factory=dict)
    watch: Watch | None = None
    seq: int = 0
    threads_by_message_id: dict[str, str] = field(default_factory=dict)  # RFC 822 Message-ID -> thread id


@dataclass
class GoogleUser:
    email: str
    name: str
    sub: str
    hosted_domain: str | None
    mailbox: Mailbox = field(default_factory=Mailbox)


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    name: str = "CRM Mailbox Sync"


@dataclass
class ServiceAccount:
    """A service account with its one key (the key file Google lets you download)."""

    client_email: str
    client_id: str
    project_id: str
    private_key_id: str
    private_key_pem: str


@dataclass
class Grant:
    """What one user granted one OAuth client: accumulated scopes and the live refresh tokens."""

    user_email: str
    client_id: str
    scopes: set[str] = field(default_factory=set)
    refresh_tokens: dict[str, frozenset[str]] = field(default_factory=dict)  # token -> its scopes


@dataclass
class PendingAuthorization:
    """A validated authorize request waiting for the person (or the control API)."""

    id: str
    client_id: str
    redirect_uri: str
    scopes: list[str]
    state: str | None
    access_type: str
    prompt: str
    include_granted_scopes: bool
    code_challenge: str | None
    code_challenge_method: str
    nonce: str | None
    login_hint: str
    hd: str | None


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    user_email: str
    scopes: frozenset[str]
    issue_refresh_token: bool
    code_challenge: str | None
    code_challenge_method: str
    nonce: str | None
    expires_at: float
    redeemed: bool = False


@dataclass
class AccessToken:
    """Who an access token speaks for: ``user_email`` None for a service account's own token."""

    client_id: str
    user_email: str | None
    scopes: frozenset[str]
    expires_at: float
    grant_key: tuple[str, str] | None  # (user_email, client_id) of a user's grant; None for delegation
    service_account: str | None = None


@dataclass
class Topic:
    """A Pub/Sub topic with one push subscription (what the product's push endpoint receives)."""

    name: str
    subscription: str
    push_endpoint: str
    audience: str
    service_account_email: str
    publisher_granted: bool = True


@dataclass
class PushRecord:
    topic: str
    endpoint: str
    email_address: str
    history_id: int
    status: int | str
    message_id: str


@dataclass
class OutboxEntry:
    """A message sent to a recipient outside the emulated users: kept for the control API."""

    sender: str
    recipients: list[str]
    raw: bytes
    message_id: str


@dataclass
class GoogleFault:
    """An injected failure, matched in insertion order; ``count`` -1 means until cleared."""

    id: str
    status: int | None = None
    reason: str | None = None
    delay_ms: int = 0
    drop_connection: bool = False
    count: int = 1
    path_contains: str | None = None
    user: str | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in FAULT_STATUSES:
            raise ValueError(f"status must be one of {FAULT_STATUSES}")
        if self.status is None and not (self.delay_ms or self.drop_connection):
            raise ValueError("a fault needs a status, a delay_ms or drop_connection")
        if self.count == 0 or self.count < -1:
            raise ValueError("count must be positive, or -1 for until cleared")

    def matches(self, method: str, path: str, user: str | None) -> bool:
        return (
            (self.method is None or self.method.upper() == method.upper())
            and (self.path_contains is None or self.path_contains.lower() in path.lower())
            and (self.user is None or self.user.lower() == (user or "").lower())
        )


DEMO_DOMAIN = "tailspin.example"
DEMO_USERS = (("nestor@tailspin.example", "Nestor Wilke"), ("lidia@tailspin.example", "Lidia Holloway"))
DEMO_CLIENT_ID = "000000000000-localdemo.apps.googleusercontent.com"
DEMO_CLIENT_SECRET = "GOCSPX-local-demo-secret"
DEMO_REDIRECT_URIS = [
    "http://127.0.0.1:7071/api/auth/callback",
    "http://127.0.0.1:7071/api/auth/google/callback",
]


def seed_demo(state: GoogleState) -> None:
    """The demo Workspace domain with two users and the demo OAuth client. Idempotent: what a restored
    state already has is kept as it is."""
    with state.lock:
        if DEMO_DOMAIN not in state.domains:
            state.add_domain(DEMO_DOMAIN)
        for email, name in DEMO_USERS:
            if email not in state.users:
                state.add_user(email, name)
        if DEMO_CLIENT_ID not in state.clients:
            state.add_client(OAuthClient(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, list(DEMO_REDIRECT_URIS)))


def new_sub() -> str:
    """A Google account id: a 21-digit decimal string."""
    return str(10**20 + secrets.randbelow(9 * 10**20))


class GoogleState:
    """The Google emulator's whole memory; see the module docstring for its invariants."""

    def __init__(self, seed: str | None = None) -> None:
        if seed not in (None, "demo"):
            raise ValueError(f"unknown seed {seed!r} (known: demo)")
        self.seed = seed
        self.lock = threading.RLock()
        self.signing_key = SigningKey()
        self.reset()

    def reset(self) -> None:
        """Back to the start-up state (the seed applied again); the signing key survives."""
        with self.lock:
            self.config = GoogleConfig()
            self.domains: dict[str, Domain] = {}
            self.users: dict[str, GoogleUser] = {}
            self.clients: dict[str, OAuthClient] = {}
            self.service_accounts: dict[str, ServiceAccount] = {}  # by client_email
            self.grants: dict[tuple[str, str], Grant] = {}
            self.pending: dict[str, PendingAuthorization] = {}
            self.codes: dict[str, AuthCode] = {}
            self.access_tokens: dict[str, AccessToken] = {}
            self.topics: dict[str, Topic] = {}
            self.pushes: list[PushRecord] = []
            self.outbox: list[OutboxEntry] = []
            self.faults: list[GoogleFault] = []
            self.requests: dict[str, dict[str, int]] = {}
            self.quota: dict[str, deque[tuple[float, int]]] = {}
            self.sent: dict[str, deque[float]] = {}
            self.published: dict[str, int] = {}  # notifications published per watched user (not persisted)
            if self.seed == "demo":
                seed_demo(self)

    # -- persistence ---------------------------------------------------------------------------

    _PERSISTED = (
        "config", "domains", "users", "clients", "service_accounts", "grants", "pending", "codes",
        "access_tokens", "topics", "pushes", "outbox", "faults", "requests",
    )

    def snapshot(self) -> dict[str, bytes]:
        with self.lock:
            data = {name: getattr(self, name) for name in self._PERSISTED}
            data["signing_key"] = (self.signing_key.to_pem(), self.signing_key.kid)
            return {"google": pickle.dumps(data)}

    def restore(self, parts: dict[str, bytes]) -> None:
        data = pickle.loads(parts["google"])  # noqa: S301 (our own snapshot, from our own state dir)
        signing_key = SigningKey(*data.pop("signing_key"))
        with self.lock:
            self.reset()
            self.signing_key = signing_key
            for name, value in data.items():
                setattr(self, name, value)
            if self.seed == "demo":
                seed_demo(self)

    # -- directory -----------------------------------------------------------------------------

    def add_domain(self, name: str) -> Domain:
        name = name.strip().lower()
        if not name or "@" in name or "." not in name:
            raise GoogleStateError(400, "domain must be a DNS name such as example.com")
        with self.lock:
            if name in self.domains:
                raise GoogleStateError(409, f"domain {name} exists")
            domain = self.domains[name] = Domain(name)
            return domain

    def add_user(self, email: str, name: str | None = None) -> GoogleUser:
        """A user; in a registered Workspace domain it is a Workspace user (``hd``), else a consumer one."""
        email = email.strip().lower()
        local, _, host = email.partition("@")
        if not local or "." not in host:
            raise GoogleStateError(400, "email must be an address such as ada@example.com")
        with self.lock:
            if email in self.users:
                raise GoogleStateError(409, f"user {email} exists")
            user = GoogleUser(email, name or local.title(), new_sub(), host if host in self.domains else None)
            self.users[email] = user
            return user

    def user(self, email: str) -> GoogleUser:
        with self.lock:
            user = self.users.get(email.strip().lower())
        if user is None:
            raise GoogleStateError(404, f"unknown user {email}")
        return user

    def add_client(self, client: OAuthClient) -> OAuthClient:
        with self.lock:
            if client.client_id in self.clients:
                raise GoogleStateError(409, f"client {client.client_id} exists")
            self.clients[client.client_id] = client
            return client

    # -- history -------------------------------------------------------------------------------

    @staticmethod
    def record(mailbox: Mailbox, kind: str, message: GmailMessage, added: list[str] | None = None) -> int:
        """Append one history record for ``message`` (caller holds the lock); returns its id."""
        mailbox.history_id += 1
        mailbox.history.append(
            HistoryRecord(mailbox.history_id, kind, message.id, message.thread_id, list(message.label_ids),
                          list(added or []))
        )
        return mailbox.history_id

    # -- quota and faults ----------------------------------------------------------------------

    def charge(self, user_email: str, units: int) -> bool:
        """Take ``units`` of the user's per-window quota; False (nothing taken) if over the limit."""
        with self.lock:
            now = time.monotonic()
            window = self.quota.setdefault(user_email, deque())
            while window and window[0][0] <= now - self.config.quota_window_s:
                window.popleft()
            used = sum(units for _, units in window)
            if used + units > self.config.user_quota_units:
                return False
            window.append((now, units))
            return True

    def take_send(self, user_email: str) -> float | None:
        """Count one sent message against the user's daily sending limit; None if it fits, else the epoch
        seconds when the oldest send of the window leaves it (nothing counted)."""
        with self.lock:
            now = time.time()
            window = self.sent.setdefault(user_email, deque())
            while window and window[0] <= now - 86_400:
                window.popleft()
            if len(window) >= self.config.daily_send_limit:
                return window[0] + 86_400 if window else now + 86_400
            window.append(now)
            return None

    def add_fault(self, **spec: Any) -> GoogleFault:
        rule = GoogleFault(id=str(uuid.uuid4()), **spec)
        with self.lock:
            self.faults.append(rule)
        return rule

    def take_fault(self, method: str, path: str, user: str | None) -> GoogleFault | None:
        with self.lock:
            for rule in self.faults:
                if rule.matches(method, path, user):
                    if rule.count > 0:
                        rule.count -= 1
                        if rule.count == 0:
                            self.faults.remove(rule)
                    return rule
        return None

    def count_request(self, user_email: str, status: int | str) -> None:
        with self.lock:
            counts = self.requests.setdefault(user_email, {})
            counts[str(status)] = counts.get(str(status), 0) + 1
