"""A real mail server for the IMAP provider: Dovecot (IMAP + LMTP) and an SMTP submission server.

    python -m tools.mailserver [--dir .local/mailserver]   # foreground, until Ctrl-C; prints its ports

What runs (nothing system-wide is touched: no file under /etc, no systemd, no privileged port):

* **Dovecot** (Debian ``dovecot-imapd`` + ``dovecot-lmtpd``), started as ``dovecot -F -c <dir>/dovecot.conf``
  from a config this module writes into its own directory. It runs unprivileged: as the current user, or,
  when started by root (CI), as the ``dovecot`` system user the Debian package creates (its directory is
  handed to that user). It listens on free loopback ports: IMAP with STARTTLS (plaintext login refused
  until TLS is up), IMAPS (implicit TLS) and LMTP. Users come from passwd files (salted SHA-256 hashes);
  ``\\Sent``, ``\\Drafts``, ``\\Junk`` and ``\\Trash`` are created with their SPECIAL-USE flags. Dovecot
  always offers CONDSTORE and QRESYNC (RFC 7162) and LIST-STATUS (RFC 5819); ``no_condstore`` starts one
  that hides the three (through ``imap_capability``), as Microsoft 365's IMAP offers none of them (its
  post-login CAPABILITY in MailKit issue #1282: ``IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE
  ID UNSELECT ... CHILDREN IDLE NAMESPACE LITERAL+``), so the adapter's fallbacks run against a real server.
  ``sent=False`` starts one without a Sent folder.
* **Command trace**: Dovecot's ``rawlog_dir`` writes every IMAP session's client commands (``*.in``) and
  server answers (``*.out``) under ``<dir>/rawlog/<user>/``, so a test can prove what was (and was not)
  fetched. Only the test server's users have such a directory; Dovecot writes nothing for others.
* **SMTP submission** (aiosmtpd, in this process on a thread): port ``submission`` speaks STARTTLS and
  offers AUTH only after it, port ``submissions`` is implicit TLS. Credentials are checked against the
  same passwd files Dovecot uses. Mail for a Dovecot user is handed to Dovecot over LMTP; mail for any
  other address is kept in ``outbound`` (the server's "rest of the internet"), so a test can see it.
  aiosmtpd rather than Postfix: Postfix needs root, a mail-owner account and a spool of its own to run
  at all, where this is one unprivileged process per test run that stops with it. ``drop_after_data``
  makes a sender's next submission be delivered and the connection cut before the ``250``: the "answer
  lost" case a client can never resolve.
* TLS: one certificate for ``localhost``/``127.0.0.1`` from the project's local CA
  (``emulator.certs.ensure_tls_material``), ``ca.pem`` beside it for the clients.

Invariants: ``start`` returns only once IMAP, IMAPS, LMTP and both SMTP ports accept connections;
``stop`` (also on any failure during start) stops Dovecot's process group and the SMTP threads.
``ensure_installed`` installs the two Debian packages when root and missing, and otherwise fails with
the exact command to run.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import errno
import grp
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email import message_from_bytes
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from emulator.certs import ensure_tls_material

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".local" / "mailserver"
PACKAGES = ("dovecot-imapd", "dovecot-lmtpd")
DOVECOT = "/usr/sbin/dovecot"
DOMAIN = "imap.example"
# The capabilities Dovecot 2.3 announces after login, less CONDSTORE, QRESYNC and LIST-STATUS (no_condstore).
_PLAIN_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS "
    "THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS "
    "LIST-EXTENDED I18NLEVEL=1 ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH BINARY MOVE "
    "SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE"
)


class MailServerUnavailable(RuntimeError):
    """Dovecot is not installed and cannot be, or did not start."""


def ensure_installed() -> None:
    """Install Dovecot's IMAP and LMTP packages when missing (as root, with apt-get); fail clearly otherwise."""
    if Path(DOVECOT).exists() and Path("/usr/lib/dovecot/lmtp").exists() and Path("/usr/lib/dovecot/imap").exists():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = shutil.which("apt-get") or "apt-get"
        subprocess.run([apt, "update", "-qq"], check=True, env=env)
        subprocess.run([apt, "install", "-y", "-qq", *PACKAGES], check=True, env=env)
        # The package may start a system-wide Dovecot where an init system runs; ours never needs it.
        return
    raise MailServerUnavailable(
        f"the IMAP tests and `make run` need Dovecot: sudo apt-get install -y {' '.join(PACKAGES)}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def password_hash(password: str) -> str:
    """Dovecot's ``{SSHA256}`` scheme: base64(sha256(password + salt) + salt)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha256(password.encode() + salt).digest()
    return "{SSHA256}" + base64.b64encode(digest + salt).decode()


def password_matches(stored: str, password: str) -> bool:
    raw = base64.b64decode(stored.removeprefix("{SSHA256}"))
    digest, salt = raw[:32], raw[32:]
    return secrets.compare_digest(hashlib.sha256(password.encode() + salt).digest(), digest)


@dataclass(frozen=True)
class Ports:
    imap: int  # STARTTLS
    imaps: int  # implicit TLS
    lmtp: int
    submission: int  # SMTP, STARTTLS then AUTH
    submissions: int  # SMTP over implicit TLS

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


def _config(
    root: Path, ports: Ports, tls: tuple[Path, Path], user: pwd.struct_passwd, *, no_condstore: bool, sent: bool
) -> str:
    cert, key = tls
    capability = f"protocol imap {{\n  imap_capability = {_PLAIN_CAPABILITIES}\n}}\n" if no_condstore else ""
    return f"""# Written by tools/mailserver.py: an unprivileged Dovecot on loopback ports, for tests and `make run`.
instance_name = crm-mail-{ports.imap}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/log/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
default_internal_user = {user.pw_name}
default_internal_group = {_group_name(user.pw_gid)}
default_login_user = {user.pw_name}
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_verbose = yes
auth_cache_size = 0
passdb {{
  driver = passwd-file
  args = scheme=SSHA256 {root}/users/%Lu
}}
userdb {{
  driver = passwd-file
  args = {root}/users/%Lu
  default_fields = uid={user.pw_uid} gid={user.pw_gid} home={root}/mail/%u
}}
mail_location = sdbox:~/mail
first_valid_uid = {user.pw_uid}
last_valid_uid = {user.pw_uid}
first_valid_gid = {user.pw_gid}
mail_fsync = never
mail_plugins = $mail_plugins notify mail_log
plugin {{
  mail_log_events = delete undelete expunge copy mailbox_delete mailbox_rename save
  mail_log_fields = uid box msgid
}}
namespace inbox {{
  inbox = yes
  separator = /
{_sent_folder() if sent else ""}  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
}}
protocol imap {{
  rawlog_dir = {root}/rawlog/%u
  mail_max_userip_connections = 100
}}
{capability}protocol lmtp {{
  postmaster_address = postmaster@{DOMAIN}
}}
lmtp_rcpt_check_quota = no
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {ports.imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {ports.imaps}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {ports.lmtp}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0600
  }}
}}
"""


def _sent_folder() -> str:
    return "  mailbox Sent {\n    special_use = \\Sent\n    auto = subscribe\n  }\n"


def _group_name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


def _run_as() -> pwd.struct_passwd:
    """Whom Dovecot runs as: the current user, or the package's ``dovecot`` user when we are root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("dovecot")
    except KeyError as exc:
        raise MailServerUnavailable("running as root needs the 'dovecot' user of Debian's dovecot-core") from exc


@dataclass
class MailServer:
    """A running Dovecot + SMTP submission server (see the module docstring)."""

    root: Path
    ports: Ports
    ca_pem: Path
    host: str = "127.0.0.1"
    outbound: list[tuple[str, tuple[str, ...], bytes]] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = None
    _smtp: list[Any] = field(default_factory=list)

    # -- users and mail --------------------------------------------------------------------------

    def add_user(self, address: str, password: str) -> str:
        """Add (or replace) a user; returns the address, which is also its login name.

        One passwd file per user (``users/<address>``, Dovecot's ``%Lu`` path): Dovecot checks a passwd
        file for changes at most once a second, so a user added to a shared file right after a lookup
        would stay unknown for up to a second, where a file it never read is read at the first lookup.
        Replacing a user's password waits that second out."""
        address = address.lower()
        path = self.root / "users" / address
        replacing = path.exists()
        temporary = path.with_name(f".{address}.{os.getpid()}.{threading.get_ident()}")
        temporary.write_text(f"{address}:{password_hash(password)}::::::\n")
        _give(temporary, self.root)
        if replacing:  # same size: only a later mtime (whole seconds) tells Dovecot the file changed
            stamp = max(time.time(), path.stat().st_mtime + 1)
            os.utime(temporary, (stamp, stamp))
        os.replace(temporary, path)
        rawlog = self.root / "rawlog" / address
        rawlog.mkdir(parents=True, exist_ok=True)
        _give(rawlog, self.root)
        if replacing:
            time.sleep(1.1)
        return address

    def check_password(self, address: str, password: str) -> bool:
        path = self.root / "users" / address.lower()
        if "/" in address or not path.exists():
            return False
        stored = path.read_text().split(":")[1]
        return password_matches(stored, password)

    def users(self) -> set[str]:
        return {p.name for p in (self.root / "users").iterdir() if not p.name.startswith(".")}

    def deliver(self, recipients: list[str] | str, message: bytes, sender: str = "") -> None:
        """Deliver an RFC 822 message to Dovecot users' Inboxes through LMTP (as a real MTA would)."""
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        # LMTP answers DATA once per accepted recipient (RFC 2033 §4.2); smtplib's sendmail reads only the
        # first answer, so the others are read here (left unread, QUIT would read one and fail).
        with smtplib.LMTP(self.host, self.ports.lmtp, timeout=30) as lmtp:
            lmtp.ehlo_or_helo_if_needed()
            code, _ = lmtp.mail(sender or "<>")
            if code != 250:
                raise RuntimeError(f"LMTP refused the sender ({code})")
            accepted = [r for r in rcpts if lmtp.rcpt(r)[0] in (250, 251)]
            if len(accepted) != len(rcpts):
                lmtp.rset()
                raise RuntimeError(f"LMTP refused {sorted(set(rcpts) - set(accepted))}")
            answers = [lmtp.data(message)[0]] + [lmtp.getreply()[0] for _ in accepted[1:]]
        if any(code != 250 for code in answers):
            raise RuntimeError(f"LMTP did not deliver to every recipient ({answers})")

    def drop_after_data(self, sender: str) -> None:
        """The next message ``sender`` submits is delivered as usual, then the SMTP connection is cut
        before the final ``250`` reaches the client: the "answer lost after DATA" case of RFC 5321 §4.1.1.4
        (the server took responsibility; the client cannot know). One-shot; a file under the server's
        directory, so it works from a process that ``attach``-ed to the server."""
        path = self.root / "smtp-faults" / sender.lower()
        path.parent.mkdir(exist_ok=True)
        path.write_text("drop-after-data\n")

    def take_drop_after_data(self, sender: str) -> bool:
        path = self.root / "smtp-faults" / sender.lower()
        if "/" in sender or not sender:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def change_uidvalidity(self, address: str, folder: str, uidvalidity: int) -> None:
        """Give a folder a new UIDVALIDITY (``doveadm mailbox update``), as a server does when it rebuilds
        its index or a folder is recreated: every client's UIDs of that folder are void."""
        doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"
        command = [doveadm, "-c", str(self.root / "dovecot.conf"), "mailbox", "update", "-u", address.lower(),
                   "--uid-validity", str(uidvalidity), folder]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=30)

    def imap_commands(self, address: str) -> int:
        """IMAP commands the user's sessions sent so far: the commands of the trace, plus each session's
        LOGIN (the trace starts after it). Literal data (an APPEND's message) is not a command."""
        folder = self.root / "rawlog" / address.lower()
        total = 0
        for path in folder.glob("*.in"):
            lines = path.read_bytes().decode("utf-8", "replace").splitlines()
            tags = [line.split(" ", 2)[1] for line in lines if line.count(" ") >= 2]
            prefix = tags[0].rstrip("0123456789") if tags else ""
            total += 1 + sum(1 for tag in tags if prefix and tag.startswith(prefix) and tag[len(prefix) :].isdigit())
        return total

    def rawlog(self, address: str, suffix: str = ".in") -> str:
        """Every IMAP session of the user so far: client commands (``.in``) or server answers (``.out``)."""
        folder = self.root / "rawlog" / address.lower()
        return "".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.glob(f"*{suffix}")))

    def log(self) -> str:
        path = self.root / "log" / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only the local CA (what the product is configured with in tests)."""
        return ssl.create_default_context(cafile=str(self.ca_pem))

    @classmethod
    def attach(cls, description: str) -> MailServer:
        """The server another process started and described (``describe`` as JSON): users, LMTP delivery
        and the trace work through its files and ports; stopping it stays with its owner."""
        d = json.loads(description)
        ports = Ports(d["imap_port"], d["imaps_port"], d["lmtp_port"], d["submission_port"], d["submissions_port"])
        return cls(root=Path(d["root"]), ports=ports, ca_pem=Path(d["ca_pem"]), host=d["host"])

    def describe(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "imap_port": self.ports.imap,
            "imaps_port": self.ports.imaps,
            "lmtp_port": self.ports.lmtp,
            "submission_port": self.ports.submission,
            "submissions_port": self.ports.submissions,
            "ca_pem": str(self.ca_pem),
            "root": str(self.root),
        }

    # -- life cycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        for controller in self._smtp:
            with suppress(Exception):
                controller.stop()
        self._smtp.clear()
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> MailServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _give(path: Path, root: Path) -> None:
    """Hand a file of the server's directory to the user Dovecot runs as (a no-op unless root)."""
    if os.geteuid() == 0:
        stat = root.stat()
        os.chown(path, stat.st_uid, stat.st_gid)


def _fresh_dir(root: Path, owner: pwd.struct_passwd) -> Path:
    """An empty directory for the server at ``root`` (a leftover Dovecot there is stopped first). When
    Dovecot runs as another user who cannot reach ``root`` (a private temp folder of root's), the
    directory is a fresh one under the system temp folder and ``root`` a symlink to it."""
    if root.is_symlink():
        target = root.resolve()
        _stop_leftover(target)
        root.unlink()
        shutil.rmtree(target, ignore_errors=True)
    _stop_leftover(root)
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    parent = root.parent.resolve()
    if owner.pw_uid == os.geteuid() or all(d.stat().st_mode & 0o001 for d in (parent, *parent.parents)):
        root.mkdir()
        return root
    real = Path(tempfile.mkdtemp(prefix="crm-mailserver-"))
    real.chmod(0o755)
    root.symlink_to(real)
    return real


def _stop_leftover(root: Path) -> None:
    """Stop the Dovecot a killed earlier run left in ``root`` (its master's pid file is still there)."""
    pid_file = root / "run" / "master.pid"
    with suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"dovecot"):
            os.killpg(pid, signal.SIGTERM)
            time.sleep(0.5)


def _wait_for_port(port: int, deadline: float, process: subprocess.Popen[bytes] | None, log: Path) -> None:
    while True:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise MailServerUnavailable(f"dovecot exited (code {process.returncode}):\n{tail}")
        if time.monotonic() > deadline:
            raise MailServerUnavailable(f"port {port} did not open in time")
        time.sleep(0.05)


def start(
    root: Path = DEFAULT_DIR,
    *,
    ports: Ports | None = None,
    no_condstore: bool = False,
    ca_dir: Path | None = None,
    sent: bool = True,
) -> MailServer:
    """Write the config under ``root`` (fresh), start Dovecot and the SMTP servers; see the module docstring.
    ``ca_dir``: the local CA's folder to take the certificate from (``make run`` passes the emulator's, so
    one ``ca-bundle.pem`` trusts both); by default a CA of the server's own under ``root/tls``.

    Ports picked here are free when picked, but another process may bind one before the servers do
    (parallel test workers start stacks side by side): such a start is retried on fresh ports, up to
    ``START_ATTEMPTS`` times. Ports the caller chose are never swapped."""
    ensure_installed()
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _start(root, ports or Ports.free(), no_condstore=no_condstore, ca_dir=ca_dir, sent=sent)
        except (OSError, MailServerUnavailable) as exc:
            if ports is not None or attempt == START_ATTEMPTS or not _port_was_taken(exc):
                raise
    raise AssertionError("unreachable")


START_ATTEMPTS = 3


def _port_was_taken(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return True
    return isinstance(exc, MailServerUnavailable) and "Address already in use" in str(exc)


def _start(root: Path, ports: Ports, *, no_condstore: bool, ca_dir: Path | None, sent: bool) -> MailServer:
    owner = _run_as()
    root = _fresh_dir(root, owner)
    for sub in ("run", "state", "log", "mail", "rawlog", "tls", "users"):
        (root / sub).mkdir()
    tls = ensure_tls_material(ca_dir or root / "tls")
    if ca_dir is not None:  # copies Dovecot (another user) may read; the CA's own files stay where they are
        for source in (tls.server_cert, tls.server_key, tls.ca_pem):
            shutil.copy(source, root / "tls" / source.name)
        tls = dataclasses.replace(
            tls, server_cert=root / "tls" / "server.pem", server_key=root / "tls" / "server.key",
            ca_pem=root / "tls" / "ca.pem",
        )  # fmt: skip
    (root / "dovecot.conf").write_text(
        _config(root, ports, (tls.server_cert, tls.server_key), owner, no_condstore=no_condstore, sent=sent)
    )
    if os.geteuid() == 0:
        for path in [root, *root.rglob("*")]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    server = MailServer(root=root, ports=ports, ca_pem=tls.ca_pem)
    log = root / "log" / "dovecot.log"
    try:
        server._process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(root / "log" / "dovecot.stderr").open("wb"),
            start_new_session=True,
            user=owner.pw_uid if os.geteuid() == 0 else None,
            group=owner.pw_gid if os.geteuid() == 0 else None,
            extra_groups=[] if os.geteuid() == 0 else None,
        )
        deadline = time.monotonic() + 30
        for port in (ports.imap, ports.imaps, ports.lmtp):
            _wait_for_port(port, deadline, server._process, log)
        _start_smtp(server, tls.server_cert, tls.server_key)
        for port in (ports.submission, ports.submissions):
            _wait_for_port(port, deadline, None, log)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running(
    root: Path = DEFAULT_DIR,
    *,
    no_condstore: bool = False,
    ca_dir: Path | None = None,
    sent: bool = True,
    ports: Ports | None = None,
) -> Iterator[MailServer]:
    server = start(root, no_condstore=no_condstore, ca_dir=ca_dir, sent=sent, ports=ports)
    try:
        yield server
    finally:
        server.stop()


# -- SMTP submission ---------------------------------------------------------------------------------


# Implicit TLS encrypts the whole session, which aiosmtpd's auth_require_tls (a STARTTLS check) cannot
# see: its warning (and log line) on every connection of the implicit-TLS port does not apply.
logging.getLogger("mail.log").setLevel(logging.ERROR)


def _start_smtp(server: MailServer, cert: Path, key: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))

    def authenticate(
        _server: SmtpServer, _session: Session, _envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        if mechanism not in ("LOGIN", "PLAIN") or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = data.login.decode(), data.password.decode()
        return AuthResult(success=server.check_password(login, password), handled=False, auth_data=data)

    class Relay:
        """Local users' mail to Dovecot by LMTP, everyone else's into ``outbound``."""

        async def handle_DATA(self, smtp: SmtpServer, session: Session, envelope: Envelope) -> str:
            if not session.authenticated:
                return "530 5.7.0 Authentication required"
            drop = server.take_drop_after_data(envelope.mail_from or "")
            content = envelope.original_content or b""
            local = server.users()
            mine = [r.lower() for r in envelope.rcpt_tos if r.lower() in local]
            others = tuple(r for r in envelope.rcpt_tos if r.lower() not in local)
            try:
                if mine:
                    server.deliver(mine, content, envelope.mail_from or "")
            except (OSError, smtplib.SMTPException, RuntimeError):
                return "451 4.3.0 Local delivery failed, try again later"
            if others:
                server.outbound.append((envelope.mail_from or "", others, content))
            if drop:  # delivered, but the client never hears so (see ``drop_after_data``)
                smtp.transport.abort()
            return "250 2.0.0 OK"

    common: dict[str, Any] = {
        "hostname": "127.0.0.1",
        "authenticator": authenticate,
        "auth_required": True,
        "server_hostname": "localhost",
    }

    class QuietController(Controller):  # type: ignore[misc]
        def factory(self) -> SmtpServer:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
                return super().factory()

    starttls = QuietController(
        Relay(), port=server.ports.submission, tls_context=context, require_starttls=True,
        auth_require_tls=True, **common,
    )  # fmt: skip
    implicit = QuietController(
        Relay(), port=server.ports.submissions, ssl_context=context, auth_require_tls=False, **common
    )
    for controller in (starttls, implicit):
        controller.start()
        server._smtp.append(controller)


def recipients_of(message: bytes) -> list[str]:
    """To/Cc/Bcc addresses of an RFC 822 message (lower case), for a helper that sends it by SMTP."""
    parsed = message_from_bytes(message)
    fields = [*parsed.get_all("to", []), *parsed.get_all("cc", []), *parsed.get_all("bcc", [])]
    return [address.lower() for _, address in getaddresses(fields) if address]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mailserver")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--no-condstore", action="store_true", help="hide CONDSTORE/QRESYNC, like Microsoft 365")
    options = parser.parse_args(argv)
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # delivered to sigwait below, never as an exception
    with running(options.dir.resolve(), no_condstore=options.no_condstore) as server:
        print(f"mail server ready {server.describe()}", flush=True)
        signal.sigwait(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
