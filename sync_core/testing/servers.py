"""In-memory double of the ``ServerProbe`` port: a set of known servers and logins, answering as
``adapters.imap.probe.ImapServerProbe`` does against real ones (the same ``InvalidRequest`` codes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sync_core.errors import InvalidRequest
from sync_core.ports.servers import ServerAccount, ServerLogin


@dataclass
class FakeServerProbe:
    """``logins``: (host, port, username) -> password of every account the fake servers know;
    ``untrusted``: (host, port) whose certificate is not trusted; ``without_sent``: IMAP hosts with no
    Sent folder. Any other (host, port) is unreachable. ``checked`` records each probed account."""

    logins: dict[tuple[str, int, str], str] = field(default_factory=dict)
    untrusted: set[tuple[str, int]] = field(default_factory=set)
    without_sent: set[str] = field(default_factory=set)
    checked: list[ServerAccount] = field(default_factory=list)

    def add(self, login: ServerLogin) -> None:
        self.logins[(login.host, login.port, login.username)] = login.password

    def check(self, account: ServerAccount) -> None:
        self.checked.append(account)
        self._check("imap", account.imap)
        if account.imap.host in self.without_sent:
            raise InvalidRequest("imap_no_sent_folder", "IMAP: no Sent folder found")
        if account.smtp is not None:
            self._check("smtp", account.smtp)

    def _check(self, kind: str, login: ServerLogin) -> None:
        if (login.host, login.port) in self.untrusted:
            raise InvalidRequest(f"{kind}_tls_untrusted", f"{kind.upper()}: the TLS certificate is not trusted")
        known = {(host, port) for host, port, _ in self.logins}
        if (login.host, login.port) not in known:
            raise InvalidRequest(f"{kind}_unreachable", f"{kind.upper()}: the server cannot be reached")
        if self.logins.get((login.host, login.port, login.username)) != login.password:
            raise InvalidRequest(f"{kind}_auth_failed", f"{kind.upper()}: the server refused the login")
