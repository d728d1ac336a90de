"""The real mail server the IMAP provider is tested against (tools/mailserver.py): what it guarantees."""

from __future__ import annotations

import dataclasses
import imaplib
import shutil
import smtplib
import socket
import ssl
import uuid

import pytest

from tools import mailserver
from tools.mailserver import MailServer

PASSWORD = "s3cret-pw"


def new_user(server: MailServer) -> str:
    return server.add_user(f"u{uuid.uuid4().hex[:10]}@imap.example", PASSWORD)


def test_mail_delivered_by_lmtp_is_in_the_inbox_over_imaps_with_special_use_folders(mail_server: MailServer) -> None:
    user = new_user(mail_server)
    mail_server.deliver(user, b"From: a@b.example\r\nSubject: hello\r\nMessage-ID: <m1@b.example>\r\n\r\nbody\r\n")

    imap = imaplib.IMAP4_SSL(mail_server.host, mail_server.ports.imaps, ssl_context=mail_server.ssl_context())
    imap.login(user, PASSWORD)
    _, folders = imap.list()
    _, count = imap.select("INBOX", readonly=True)
    _, caps = imap.capability()
    imap.logout()

    assert count == [b"1"]
    assert {bytes(f).split(b")")[0].split()[-1] for f in folders if b"\\HasNoChildren \\" in bytes(f)} == {
        b"\\Sent", b"\\Drafts", b"\\Junk", b"\\Trash",
    }  # fmt: skip
    assert b"CONDSTORE" in caps[0] and b"QRESYNC" in caps[0]


class FromAnotherAddress(imaplib.IMAP4):
    """A client on 127.0.0.2: Dovecot counts a connection whose two ends share an address as secure
    (and allows plaintext login on it), so a remote client is one from another loopback address."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=("127.0.0.2", 0))


def test_plaintext_imap_login_is_refused_until_starttls(mail_server: MailServer) -> None:
    user = new_user(mail_server)
    imap = FromAnotherAddress(mail_server.host, mail_server.ports.imap)
    assert "LOGINDISABLED" in imap.capabilities
    with pytest.raises(imaplib.IMAP4.error):
        imap.login(user, PASSWORD)
    imap.starttls(ssl_context=mail_server.ssl_context())
    assert imap.login(user, PASSWORD)[0] == "OK"
    imap.logout()


def test_a_client_without_the_local_ca_does_not_trust_the_server(mail_server: MailServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(mail_server.host, mail_server.ports.imaps, ssl_context=ssl.create_default_context())


def test_smtp_submission_offers_auth_only_after_starttls_and_delivers_to_dovecot(mail_server: MailServer) -> None:
    sender, rcpt = new_user(mail_server), new_user(mail_server)
    with smtplib.SMTP(mail_server.host, mail_server.ports.submission, timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        smtp.starttls(context=mail_server.ssl_context())
        smtp.ehlo()
        assert smtp.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(sender, "wrong")
        smtp.login(sender, PASSWORD)
        smtp.sendmail(sender, [rcpt], b"Subject: by smtp\r\nMessage-ID: <s1@imap.example>\r\n\r\nhi\r\n")
    with smtplib.SMTP_SSL(mail_server.host, mail_server.ports.submissions, context=mail_server.ssl_context()) as tls:
        tls.login(sender, PASSWORD)
        tls.sendmail(sender, [rcpt], b"Subject: implicit tls\r\nMessage-ID: <s2@imap.example>\r\n\r\nhi\r\n")

    imap = imaplib.IMAP4_SSL(mail_server.host, mail_server.ports.imaps, ssl_context=mail_server.ssl_context())
    imap.login(rcpt, PASSWORD)
    _, count = imap.select("INBOX", readonly=True)
    imap.logout()
    assert count == [b"2"]


def test_every_imap_command_of_a_user_is_in_the_servers_trace(mail_server: MailServer) -> None:
    user = new_user(mail_server)
    imap = imaplib.IMAP4_SSL(mail_server.host, mail_server.ports.imaps, ssl_context=mail_server.ssl_context())
    imap.login(user, PASSWORD)
    imap.select("INBOX", readonly=True)
    imap.noop()
    imap.logout()

    trace = mail_server.rawlog(user)
    assert "EXAMINE INBOX" in trace and "NOOP" in trace and PASSWORD not in trace


def test_a_port_another_process_took_before_the_servers_bound_it_is_replaced_by_a_fresh_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks: list[mailserver.Ports] = []
        real_free = mailserver.Ports.free

        def first_pick_collides() -> mailserver.Ports:
            fresh = real_free()
            picks.append(fresh if picks else dataclasses.replace(fresh, submission=taken))
            return picks[-1]

        monkeypatch.setattr(mailserver.Ports, "free", staticmethod(first_pick_collides))
        root = mailserver.ROOT / ".local" / f"mailserver-pytest-taken-{uuid.uuid4().hex[:8]}"
        server = mailserver.start(root)
        try:
            with smtplib.SMTP(server.host, server.ports.submission, timeout=10) as smtp:
                smtp.starttls(context=server.ssl_context())
                smtp.login(new_user(server), PASSWORD)
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)

    assert picks[0].submission == taken
    assert len(picks) == 2 and server.ports == picks[1] and server.ports.submission != taken
