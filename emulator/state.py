"""Everything the emulator remembers, behind one re-entrant lock.

Invariants:

* ``EmulatorState.lock`` guards the directory, tokens, faults, limits and counters. Nothing holds it
  while calling into ``mail`` (which has its own locking) or while sleeping.
* ``reset()`` returns the emulator to its start-up state: a fresh directory, tokens, mail store,
  default configuration, no faults, empty counters, and the start-up seed applied again. The token
  signing key survives resets, so the published JWKS stays stable for the process lifetime (and, with
  ``--persist``, across restarts).
* ``snapshot()`` / ``restore()`` carry everything above except the mailbox limiter's windows and
  in-flight counts (process-local, like the real service's per-process counters) across a restart: a
  restored emulator answers the delta links, refresh tokens, access tokens and subscriptions it issued
  before exactly as it would have. ``emulator.persistence`` writes and reads the snapshot file.
* Mailbox limits are per (client_id, mailbox): a sliding-window request budget and a cap on requests
  in flight. A rejected request does not consume budget.
"""

from __future__ import annotations

import math
import pickle
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from emulator.directory import App, Directory
from emulator.identity import SigningKey, TokenStore
from emulator.mail import MailStore
from emulator.mail_send_model import SendLimits

FAULT_STATUSES = (429, 500, 502, 503, 504)
CONCURRENCY_MESSAGE = "Application is over its MailboxConcurrency limit."
BUDGET_MESSAGE = "Please retry again later."


@dataclass
class EmulatorConfig:
    """Tunable behaviour; defaults are the real service's numbers."""

    latency_ms: int = 0
    access_token_lifetime_s: int = 3599
    auth_code_lifetime_s: int = 600
    mailbox_request_budget: int = 10_000
    budget_window_s: int = 600
    mailbox_concurrency: int = 4
    allow_http_notification_urls: bool = False
    # Exchange Online's sending limits (emulator.mail_send_model.SendLimits has the sources)
    send_messages_per_minute: int = 30
    send_recipients_per_day: int = 10_000
    send_recipients_per_message: int = 500
    max_message_size_bytes: int = 35 * 1024 * 1024

    def update(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` after checking every name and type; raises ValueError, changing nothing."""
        known = {f.name: f for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown setting {name!r}")
            default = getattr(EmulatorConfig, name)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        if changes.get("max_message_size_bytes", 0) > 150 * 1024 * 1024:
            raise ValueError("max_message_size_bytes can be at most 150 MB (Exchange Online's maximum)")
        for name, value in changes.items():
            setattr(self, name, value)

    def send_limits(self) -> SendLimits:
        return SendLimits(
            self.send_messages_per_minute,
            self.send_recipients_per_day,
            self.send_recipients_per_message,
            self.max_message_size_bytes,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FaultRule:
    """An injected failure, matched in insertion order before normal handling.

    ``status`` None means "only delay" (``delay_ms``) or "only drop" (``drop_connection``).
    ``count`` is how many more requests it applies to; -1 means until cleared. ``after``: the request is
    handled first (a send is sent), then its answer is replaced by the fault or the connection dropped.
    """

    id: str
    status: int | None = None
    retry_after: int | None = None
    delay_ms: int = 0
    drop_connection: bool = False
    count: int = 1
    path_contains: str | None = None
    mailbox_id: str | None = None
    method: str | None = None
    after: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in FAULT_STATUSES:
            raise ValueError(f"status must be one of {FAULT_STATUSES}")
        if self.status is None and not (self.delay_ms or self.drop_connection):
            raise ValueError("a fault needs a status, a delay_ms or drop_connection")
        if self.after and self.status is None and not self.drop_connection:
            raise ValueError("an 'after' fault needs a status or drop_connection")
        if self.count == 0 or self.count < -1:
            raise ValueError("count must be positive, or -1 for until cleared")

    def matches(self, method: str, path: str, mailbox_id: str | None) -> bool:
        return (
            (self.method is None or self.method.upper() == method.upper())
            and (self.path_contains is None or self.path_contains.lower() in path.lower())
            and (self.mailbox_id is None or self.mailbox_id == mailbox_id)
        )


@dataclass(frozen=True)
class Throttle:
    """Why a request was refused by a mailbox limit, and when to come back."""

    retry_after: int
    message: str


@dataclass
class MailboxLimiter:
    """Per (client_id, mailbox_id) sliding-window budget and concurrency cap."""

    lock: threading.RLock
    config: EmulatorConfig
    _windows: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    _in_flight: Counter[tuple[str, str]] = field(default_factory=Counter)

    def admit(self, client_id: str, mailbox_id: str) -> Throttle | None:
        """Take a slot for one request, or say why not. Every admitted request must be ``release``d."""
        key = (client_id, mailbox_id)
        with self.lock:
            now = time.monotonic()
            window = self._windows.setdefault(key, deque())
            while window and window[0] <= now - self.config.budget_window_s:
                window.popleft()
            if self._in_flight[key] >= self.config.mailbox_concurrency:
                return Throttle(1, CONCURRENCY_MESSAGE)
            if len(window) >= self.config.mailbox_request_budget:
                wait = window[0] + self.config.budget_window_s - now if window else self.config.budget_window_s
                return Throttle(max(1, math.ceil(wait)), BUDGET_MESSAGE)
            window.append(now)
            self._in_flight[key] += 1
            return None

    def release(self, client_id: str, mailbox_id: str) -> None:
        with self.lock:
            key = (client_id, mailbox_id)
            if self._in_flight[key] > 0:
                self._in_flight[key] -= 1


class EmulatorState:
    """The emulator's whole memory; see the module docstring for its invariants."""

    def __init__(self, seed: str | None = None) -> None:
        if seed not in (None, "demo"):
            raise ValueError(f"unknown seed {seed!r} (known: demo)")
        self.seed = seed
        self.lock = threading.RLock()
        self.signing_key = SigningKey()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            previous_mail: MailStore | None = getattr(self, "mail", None)
            if previous_mail is not None:
                previous_mail.notifier.shutdown()
            self.config = EmulatorConfig()
            self.directory = Directory(self.lock)
            self.tokens = TokenStore(self.lock, self.signing_key)
            self.mail = MailStore(self.directory)
            self.mail.send_limits = self.config.send_limits()
            self.faults: list[FaultRule] = []
            self.limiter = MailboxLimiter(self.lock, self.config)
            self.mailbox_requests: dict[str, Counter[int | str]] = {}
            if self.seed == "demo":
                seed_demo(self.directory)

    def snapshot(self) -> dict[str, bytes]:
        """The whole state as pickled parts: ``core`` (taken under the state lock) and ``mail`` (under the
        mail store's own lock; the two locks are never held together)."""
        with self.lock:
            core = pickle.dumps(
                {
                    "signing_key": (self.signing_key.to_pem(), self.signing_key.kid),
                    "config": self.config,
                    "faults": self.faults,
                    "mailbox_requests": self.mailbox_requests,
                    "directory": {
                        f.name: getattr(self.directory, f.name) for f in fields(Directory) if f.name != "lock"
                    },
                    "tokens": {
                        f.name: getattr(self.tokens, f.name)
                        for f in fields(TokenStore)
                        if f.name not in ("lock", "signing_key")
                    },
                }
            )
            mail = self.mail
        return {"core": core, "mail": mail.snapshot()}

    def restore(self, parts: dict[str, bytes]) -> None:
        """Replace the whole state with a ``snapshot()``; the start-up seed is applied only where the
        restored directory lacks it. Unpickles everything before changing anything, so a broken snapshot
        raises and leaves the state as it was."""
        core = pickle.loads(parts["core"])  # noqa: S301 (our own snapshot, from our own state dir)
        signing_key = SigningKey(*core["signing_key"])
        config: EmulatorConfig = core["config"]
        directory = Directory(self.lock, **core["directory"])
        tokens = TokenStore(self.lock, signing_key, **core["tokens"])
        mail = MailStore(directory)
        mail.restore(parts["mail"])
        mail.allow_http_notification_urls = config.allow_http_notification_urls
        mail.send_limits = config.send_limits()
        with self.lock:
            self.mail.notifier.shutdown()
            self.signing_key, self.config, self.directory, self.tokens, self.mail = (
                signing_key, config, directory, tokens, mail
            )
            self.faults = core["faults"]
            self.limiter = MailboxLimiter(self.lock, self.config)
            self.mailbox_requests = core["mailbox_requests"]
            if self.seed == "demo":
                seed_demo(self.directory)

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change settings (all or nothing) and pass the mail store its share; returns every setting."""
        with self.lock:
            self.config.update(changes)
            self.mail.allow_http_notification_urls = self.config.allow_http_notification_urls
            self.mail.send_limits = self.config.send_limits()
            return self.config.as_dict()

    # -- faults --------------------------------------------------------------------------------

    def add_fault(self, **spec: Any) -> FaultRule:
        rule = FaultRule(id=str(uuid.uuid4()), **spec)
        with self.lock:
            self.faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_fault(self, method: str, path: str, mailbox_id: str | None) -> FaultRule | None:
        """The first matching fault, its count consumed (and removed when used up)."""
        with self.lock:
            for rule in self.faults:
                if rule.matches(method, path, mailbox_id):
                    if rule.count > 0:
                        rule.count -= 1
                        if rule.count == 0:
                            self.faults.remove(rule)
                    return rule
        return None

    # -- per-mailbox counters ------------------------------------------------------------------

    def count_mailbox_request(self, mailbox_id: str, status: int | str) -> None:
        """Count one Graph call that targeted the mailbox: its HTTP status, or ``"dropped"``."""
        with self.lock:
            self.mailbox_requests.setdefault(mailbox_id, Counter())[status] += 1

    def mailbox_stats(self, mailbox_id: str) -> dict[str, Any]:
        with self.lock:
            counts = self.mailbox_requests.get(mailbox_id, Counter())
            by_status = {str(k): v for k, v in sorted(counts.items(), key=lambda item: str(item[0]))}
            return {"requests": sum(counts.values()), "by_status": by_status}


# -- seeds -----------------------------------------------------------------------------------------

DEMO_CLIENT_ID = "00000000-0000-4000-8000-00000000c0de"
DEMO_CLIENT_SECRET = "local-demo-secret"
DEMO_REDIRECT_URIS = [
    "http://127.0.0.1:7071/api/auth/callback",
    "http://127.0.0.1:7071/api/auth/admin-consent/callback",
]
DEMO_APP_ROLES = ("Mail.Read", "Mail.ReadWrite", "Mail.Send", "User.Read.All")
"""The demo app's application permissions: reading, and what sending needs (the demo org sends mail,
docs/sending.md). Delegated permissions are asked for at sign-in and need no registration here."""


def _demo_id(name: str) -> str:
    """Stable ids, so a restarted demo emulator keeps the tenant and user ids developers configured."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://emulator.local/demo/{name}"))


def seed_demo(directory: Directory) -> None:
    """Tenant Contoso with two users, a shared mailbox and the demo app registration. Idempotent: what a
    restored directory already has (same stable ids) is kept as it is, never added twice."""
    tenant = directory.find_tenant(_demo_id("contoso")) or directory.add_tenant(
        "Contoso", ["contoso.example", "contoso.onmicrosoft.example"], tenant_id=_demo_id("contoso")
    )
    users: list[tuple[str, str, dict[str, Any]]] = [
        ("adele", "adele@contoso.example",
         {"display_name": "Adele Vance", "proxy_addresses": ["smtp:adele.vance@contoso.example"]}),
        ("megan", "megan@contoso.example", {"display_name": "Megan Bowen"}),
        ("sales", "sales@contoso.example", {"display_name": "Sales", "shared": True}),
    ]
    for name, upn, options in users:
        if directory.get_user(_demo_id(name)) is None:
            directory.add_user(tenant.id, upn, user_id=_demo_id(name), **options)
    app = directory.get_app(DEMO_CLIENT_ID)
    if app is None:
        directory.add_app(App(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, list(DEMO_REDIRECT_URIS), list(DEMO_APP_ROLES)))
    elif missing := [role for role in DEMO_APP_ROLES if role not in app.app_roles]:
        # A directory saved before the demo app could send: its admin adds the permissions (as in Entra ID,
        # tenants that consented before must consent again to get them).
        directory.set_app_roles(DEMO_CLIENT_ID, [*app.app_roles, *missing])
