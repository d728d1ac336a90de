"""The ``ServerProbe`` port: the same cases on the in-memory double and on ``ImapServerProbe`` against
the real Dovecot + SMTP server of tools/mailserver.py."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from sync_core.adapters.imap.account import ImapLimits
from sync_core.adapters.imap.probe import ImapServerProbe
from sync_core.errors import InvalidRequest
from sync_core.ports.servers import Security, ServerAccount, ServerLogin, ServerProbe
from sync_core.testing.servers import FakeServerProbe
from tools.mailserver import MailServer

PASSWORD = "probe-password"


@dataclass
class Case:
    probe: ServerProbe
    account: ServerAccount  # a login that works, IMAP and SMTP
    closed_port: int


@pytest.fixture(params=["fake", "dovecot"])
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = int(closed.getsockname()[1])
    if request.param == "fake":
        imap = ServerLogin("imap.test", 993, Security.TLS, "ann@test.example", PASSWORD)
        smtp = ServerLogin("imap.test", 587, Security.STARTTLS, "ann@test.example", PASSWORD)
        fake = FakeServerProbe()
        fake.add(imap)
        fake.add(smtp)
        yield Case(fake, ServerAccount(imap, smtp), closed_port)
    else:
        server: MailServer = request.getfixturevalue("mail_server")
        user = server.add_user(f"p{uuid.uuid4().hex[:10]}@imap.example", PASSWORD)
        imap = ServerLogin(server.host, server.ports.imaps, Security.TLS, user, PASSWORD)
        smtp = ServerLogin(server.host, server.ports.submission, Security.STARTTLS, user, PASSWORD)
        yield Case(ImapServerProbe(ImapLimits(ca_file=str(server.ca_pem))), ServerAccount(imap, smtp), closed_port)
    closed.close()


def refusal(probe: ServerProbe, account: ServerAccount) -> str:
    with pytest.raises(InvalidRequest) as caught:
        probe.check(account)
    assert PASSWORD not in str(caught.value) and "wrong-one" not in str(caught.value)
    return caught.value.code


def test_a_working_imap_and_smtp_login_passes_the_probe(case: Case) -> None:
    case.probe.check(case.account)
    case.probe.check(replace(case.account, smtp=None))


def test_a_wrong_imap_password_is_imap_auth_failed(case: Case) -> None:
    wrong = replace(case.account, imap=replace(case.account.imap, password="wrong-one"))
    assert refusal(case.probe, wrong) == "imap_auth_failed"


def test_a_wrong_smtp_password_is_smtp_auth_failed(case: Case) -> None:
    assert case.account.smtp is not None
    wrong = replace(case.account, smtp=replace(case.account.smtp, password="wrong-one"))
    assert refusal(case.probe, wrong) == "smtp_auth_failed"


def test_a_port_nobody_listens_on_is_imap_unreachable(case: Case) -> None:
    nowhere = replace(case.account, imap=replace(case.account.imap, port=case.closed_port))
    assert refusal(case.probe, nowhere) == "imap_unreachable"
