"""A realistic, deterministic mailbox for the backfill benchmarks, and the CRM records it is matched against.

The mix (of ``total`` messages; the shares are exact, so the expected decision counts are known):

=============  =====  ==========================================================================
category        share  what
=============  =====  ==========================================================================
matched         10 %   correspondence with people on exactly one CRM record
unmatched       38 %   business correspondence with people on no record
free_mail        7 %   correspondence with free-mail addresses on no record
internal        15 %   colleagues only
bulk            20 %   newsletters (List-Unsubscribe / List-Id), large HTML, Inbox only
automated        5 %   no-reply notifications (half with ``Auto-Submitted``), Inbox only
never_log        3 %   with an address on the org's never-log list (which is also on a record)
ambiguous        2 %   with an address that is on two records (policy ``skip``: matches nothing)
=============  =====  ==========================================================================

Correspondence comes in threads of 1-6 messages, each received (Inbox) or sent (Sent Items), with
``In-Reply-To``/``References`` chains and quoted text that grows with the thread. 20 % of the messages carry 1-3
file attachments (metadata only: the emulator stores the size, not the bytes), a few an inline logo. Bodies
are stored as the plain text Graph returns for ``Prefer: outlook.body-content-type="text"`` (the emulator's
own HTML-to-text conversion is a pure-Python parser: its first render of a 1,000-message HTML page costs
about half a second, which would measure the emulator rather than the client): mostly 0.3-2 KB, a
quarter 2-10 KB, a few up to 30 KB, plus quoted text in replies; newsletters 4-20 KB. The folders are
filled to exactly half each: Graph returns at most 5,000 messages for a delta filtered on
``receivedDateTime``, so one folder could not show all of them.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sync_core.domain.model import Record

SHARES = {
    "matched": 0.10, "unmatched": 0.38, "free_mail": 0.07, "internal": 0.15,
    "bulk": 0.20, "automated": 0.05, "never_log": 0.03, "ambiguous": 0.02,
}  # fmt: skip
REASON_OF = {
    "matched": "matched", "unmatched": "unmatched", "free_mail": "unmatched", "internal": "internal",
    "bulk": "bulk", "automated": "bulk", "never_log": "never_log", "ambiguous": "ambiguous",
}  # fmt: skip
INBOX_ONLY = ("bulk", "automated")
NEVER_LOG_ADDRESS = "counsel@legal.example"
FILLER_RECORDS = 500
WORDS = (
    "the", "project", "plan", "meeting", "contract", "offer", "interview", "candidate", "schedule",
    "invoice", "proposal", "update", "next", "week", "friday", "thanks", "regards", "please", "review",
    "attached", "draft", "budget", "timeline", "quarter", "client", "team", "call", "agenda", "notes",
    "follow", "up", "confirm", "availability", "details", "position", "salary", "start", "date",
    "reference", "feedback", "onboarding", "documents", "signed", "approval", "pricing", "renewal",
    "support", "question", "answer", "deliver", "milestone",
)


@dataclass(frozen=True)
class Person:
    address: str
    name: str


@dataclass(frozen=True)
class MailMix:
    messages: tuple[dict[str, Any], ...]  # control-API delivery fields, ``folder`` included
    records: tuple[Record, ...]
    never_log: tuple[str, ...]
    expected_reasons: dict[str, int]
    with_attachments: int
    matched_with_attachments: int
    per_folder: dict[str, int]
    body_bytes: int
    participants: int  # distinct addresses over all messages
    participants_on_records: int

    def summary(self) -> dict[str, Any]:
        return {
            "messages": len(self.messages),
            "per_folder": self.per_folder,
            "expected_reasons": self.expected_reasons,
            "with_attachments": self.with_attachments,
            "matched_with_attachments": self.matched_with_attachments,
            "records": len(self.records),
            "body_megabytes": round(self.body_bytes / 1e6, 1),
            "threads": sum(1 for m in self.messages if not m.get("in_reply_to")),
            "participants": self.participants,
            "participants_on_records": self.participants_on_records,
        }


def backfill_mix(owner: Person, domain: str, now: datetime, total: int = 10_000, seed: int = 8) -> MailMix:
    """``total`` messages for ``owner``'s mailbox, received within the 29 days before ``now``."""
    rng = random.Random(seed)
    counts = _counts(total)
    people = _people(rng, domain)
    threads: list[list[dict[str, Any]]] = []
    for category, count in counts.items():
        left = count
        while left:
            size = 1 if category in INBOX_ONLY else min(left, rng.choice((1, 1, 1, 2, 2, 3, 4, 6)))
            threads.append(_thread(rng, category, size, owner, people))
            left -= size
    _balance_folders(rng, threads, total)
    messages = _stamp(rng, threads, owner, now)
    records = _records(rng, people)
    per_folder = Counter(m["folder"] for m in messages)
    addresses = {_bare(a) for m in messages for a in (m["from"], *m["to"], *m["cc"])}
    on_records = {address for record in records for address in record.emails}
    return MailMix(
        messages=tuple(messages),
        records=tuple(records),
        never_log=(NEVER_LOG_ADDRESS,),
        expected_reasons=dict(Counter(REASON_OF[c] for c, n in counts.items() for _ in range(n))),
        with_attachments=sum(1 for m in messages if _has_files(m)),
        matched_with_attachments=sum(1 for m in messages if _has_files(m) and m["_category"] == "matched"),
        per_folder=dict(per_folder),
        body_bytes=sum(len(m["body"]) for m in messages),
        participants=len(addresses),
        participants_on_records=len(addresses & on_records),
    )


def delivery_fields(message: dict[str, Any]) -> dict[str, Any]:
    """What the control API takes (without the mix's bookkeeping keys)."""
    return {k: v for k, v in message.items() if not k.startswith("_")}


# -- people and records ----------------------------------------------------------------------------


def _people(rng: random.Random, domain: str) -> dict[str, list[Person]]:
    def group(prefix: str, count: int, domains: list[str]) -> list[Person]:
        return [
            Person(f"{prefix}{n}@{domains[n % len(domains)]}", f"{prefix.title()} {n}".replace("-", " "))
            for n in range(count)
        ]

    clients = [f"client{n}.example" for n in range(60)]
    return {
        "matched": group("contact", 250, clients),
        "unmatched": group("prospect", 900, [f"biz{n}.example" for n in range(200)]),
        "free_mail": group("someone", 300, ["gmail.com", "outlook.com", "yahoo.com"]),
        "internal": group("colleague", 40, [domain]),
        "bulk": [Person(f"news@list{n}.example", f"Newsletter {n}") for n in range(40)],
        "automated": [Person(f"no-reply@service{n}.example", f"Service {n}") for n in range(20)],
        "never_log": [Person(NEVER_LOG_ADDRESS, "Counsel")],
        "ambiguous": group("shared-desk", 20, clients),
    }


def _records(rng: random.Random, people: dict[str, list[Person]]) -> list[Record]:
    kinds = ("contact", "candidate", "lead")
    records = [
        Record(f"r-{p.address}", kinds[n % 3], p.name, emails=(p.address,)) for n, p in enumerate(people["matched"])
    ]
    records.append(Record("r-counsel", "contact", "Counsel", emails=(NEVER_LOG_ADDRESS,)))
    for n, p in enumerate(people["ambiguous"]):
        records += [
            Record(f"r-{p.address}-a", "contact", p.name, emails=(p.address,)),
            Record(f"r-{p.address}-b", kinds[n % 3], p.name, emails=(p.address,)),
        ]
    records += [
        Record(f"r-filler-{n}", kinds[n % 3], f"Filler {n}", emails=(f"filler{n}@crm{n % 500}.example",))
        for n in range(FILLER_RECORDS)
    ]
    return records


# -- messages --------------------------------------------------------------------------------------


def _counts(total: int) -> dict[str, int]:
    counts = {category: int(total * share) for category, share in SHARES.items()}
    counts["unmatched"] += total - sum(counts.values())
    return counts


def _thread(
    rng: random.Random, category: str, size: int, owner: Person, people: dict[str, list[Person]]
) -> list[dict[str, Any]]:
    other = rng.choice(people[category])
    extra = [rng.choice(people["internal"])] if category != "internal" and rng.random() < 0.25 else []
    if category == "internal":
        extra = rng.sample(people["internal"], k=rng.choice((1, 1, 2)))
        other = extra.pop()
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))).capitalize()
    thread: list[dict[str, Any]] = []
    for position in range(size):
        sent = category not in INBOX_ONLY and rng.random() < 2 / 3
        sender, recipient = (owner, other) if sent else (other, owner)
        thread.append(
            {
                "_category": category,
                "folder": "sentitems" if sent else "inbox",
                "from": _formatted(sender),
                "to": [_formatted(recipient)],
                "cc": [_formatted(p) for p in extra],
                "subject": ("RE: " if position else "") + subject,
                **_body(rng, category, quoting=position),
                **_extras(rng, category),
            }
        )
    return thread


def _balance_folders(rng: random.Random, threads: list[list[dict[str, Any]]], total: int) -> None:
    """Flip messages between Inbox (received) and Sent Items (sent) until each holds half of the mail."""
    inbox = sum(1 for thread in threads for m in thread if m["folder"] == "inbox")
    candidates = [m for thread in threads for m in thread if m["_category"] not in INBOX_ONLY]
    rng.shuffle(candidates)
    for message in candidates:
        if inbox == total // 2:
            return
        if inbox > total // 2 and message["folder"] == "inbox":
            _flip(message)
            inbox -= 1
        elif inbox < total // 2 and message["folder"] == "sentitems":
            _flip(message)
            inbox += 1
    raise ValueError("too much Inbox-only mail to balance the folders")


def _flip(message: dict[str, Any]) -> None:
    message["folder"] = "sentitems" if message["folder"] == "inbox" else "inbox"
    message["from"], message["to"] = message["to"][0], [message["from"]]


def _stamp(
    rng: random.Random, threads: list[list[dict[str, Any]]], owner: Person, now: datetime
) -> list[dict[str, Any]]:
    """Times (threads spread over 29 days, replies hours apart), message ids and reply chains."""
    messages: list[dict[str, Any]] = []
    span = 29 * 24 * 3600
    for n, thread in enumerate(threads):
        moment = now - timedelta(seconds=rng.randint(3600 * 24, span))
        chain: list[str] = []
        for position, message in enumerate(thread):
            moment += timedelta(minutes=rng.randint(5, 600)) if position else timedelta(0)
            moment = min(moment, now - timedelta(minutes=1))
            domain = str(message["from"]).rpartition("@")[2].rstrip(">")
            message["internet_message_id"] = f"<bench.{n}.{position}@{domain}>"
            message["received"] = message["sent"] = moment.replace(microsecond=0).isoformat()
            if chain:
                message["in_reply_to"] = chain[-1]
                message["references"] = list(chain[-10:])
            chain.append(message["internet_message_id"])
            messages.append(message)
    return messages


def _bare(formatted: str) -> str:
    return formatted.rpartition("<")[2].rstrip(">").lower()


def _formatted(person: Person) -> str:
    return f"{person.name} <{person.address}>"


def _body(rng: random.Random, category: str, quoting: int) -> dict[str, Any]:
    if category == "bulk":
        links = "".join(f"\nRead more: https://list.example/track?u={rng.randrange(10**9)}" for _ in range(20))
        return {"body": _text(rng, rng.randint(4_000, 20_000)) + links, "body_type": "text"}
    if category == "automated":
        return {"body": _text(rng, rng.randint(500, 3_000)), "body_type": "text"}
    roll = rng.random()
    size = rng.randint(300, 2_000) if roll < 0.70 else rng.randint(2_000, 10_000) if roll < 0.95 else rng.randint(
        10_000, 30_000
    )
    quoted = _text(rng, min(quoting, 4) * rng.randint(300, 1_200))
    body = _text(rng, size) + "\n\nKind regards,\nSignature"
    return {"body": body + ("\n\n> " + quoted.replace(". ", ".\n> ") if quoted else ""), "body_type": "text"}


def _extras(rng: random.Random, category: str) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    headers = []
    if category == "bulk":
        headers = [
            {"name": "List-Unsubscribe", "value": "<mailto:unsubscribe@list.example>"},
            {"name": "List-Id", "value": "<weekly.list.example>"},
        ]
    elif category == "automated" and rng.random() < 0.5:
        headers = [{"name": "Auto-Submitted", "value": "auto-generated"}]
    if headers:
        extras["headers"] = headers
    attachments = []
    if rng.random() < 0.20:
        for n in range(rng.choice((1, 1, 1, 2, 3))):
            kind = rng.choice((("pdf", "application/pdf"), ("docx", "application/msword"), ("png", "image/png")))
            attachments.append(
                {"name": f"document-{n}.{kind[0]}", "content_type": kind[1], "size": rng.randint(20_000, 4_000_000)}
            )
    if rng.random() < 0.06:
        attachments.append(
            {"name": "logo.png", "content_type": "image/png", "size": 6_000, "is_inline": True, "content_id": "logo"}
        )
    if attachments:
        extras["attachments"] = attachments
    return extras


def _has_files(message: dict[str, Any]) -> bool:
    return any(not a.get("is_inline") for a in message.get("attachments", ()))


@functools.cache
def _corpus() -> str:
    rng = random.Random(0)
    return "".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))).capitalize() + ". " for _ in range(20_000)
    )


def _text(rng: random.Random, size: int) -> str:
    """``size`` characters of prose (a random stretch of a fixed corpus)."""
    corpus = _corpus()
    start = rng.randrange(len(corpus) - size) if size < len(corpus) else 0
    return corpus[start : start + size].strip()
