"""Google Workspace org-wide access: the admin uploads a service account key, mailboxes are added by
address through it, removing it holds them, uploading it again resumes exactly those."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sync_core.domain.model import ConnectionMode, Mailbox, MailboxStatus
from sync_core.errors import ConsentRequired, InvalidRequest, OrgAccessRequired
from sync_core.ports.identity import mailbox_owner, org_access_owner
from sync_core.testing.auth import FakeOrgAccess
from sync_core.use_cases.connect import (
    ORG_ACCESS_REMOVED,
    ConnectDeps,
    ConnectProvider,
    add_app_mailbox,
    add_org_mailbox,
    install_org_access,
    mailbox_id_for,
    org_access_of,
    remove_org_access,
)
from tests.unit.test_connect_google import FakeGoogleDirectory
from tests.unit.test_connect_rules import FakeIdentity, deps  # noqa: F401 (fixture)

KEY = {"type": "service_account", "client_email": "sync@crm-project.iam.gserviceaccount.com", "secret": "s3cr3t"}
NESTOR = "nestor@tailspin.example"


@pytest.fixture
def access() -> FakeOrgAccess:
    return FakeOrgAccess(users=(NESTOR, "lidia@tailspin.example"))


@pytest.fixture
def google(deps: ConnectDeps, access: FakeOrgAccess) -> ConnectDeps:  # noqa: F811
    provider = ConnectProvider(FakeIdentity(), lambda _t: FakeGoogleDirectory(), "Google", "Google", access)
    return replace(deps, providers={"google": provider})


def test_an_uploaded_key_is_stored_encrypted_and_described_without_its_secret(google: ConnectDeps) -> None:
    description, resumed = install_org_access(google, "org", "google", KEY)

    assert description == {"client_email": KEY["client_email"]} == org_access_of(google, "org", "google")
    assert resumed == []
    stored = google.tokens.get("org", org_access_owner("google"))
    assert stored is not None and "s3cr3t" in stored.value  # the store encrypts it (its contract tests)


def test_a_malformed_key_is_refused_and_nothing_is_stored(google: ConnectDeps) -> None:
    with pytest.raises(InvalidRequest) as refused:
        install_org_access(google, "org", "google", {"type": "authorized_user"})
    assert refused.value.code == "invalid_service_account_key"
    assert google.tokens.get("org", org_access_owner("google")) is None


def test_a_key_google_refuses_is_a_409_with_the_reason_and_nothing_is_stored(google: ConnectDeps) -> None:
    with pytest.raises(OrgAccessRequired) as refused:
        install_org_access(google, "org", "google", {**KEY, "secret": "revoked"})
    assert refused.value.code == "service_account_refused"
    assert "Invalid JWT Signature" in str(refused.value)
    assert google.tokens.get("org", org_access_owner("google")) is None


def test_a_mailbox_added_by_address_is_an_active_application_mode_google_mailbox(
    google: ConnectDeps, access: FakeOrgAccess
) -> None:
    install_org_access(google, "org", "google", KEY)

    mailbox = add_org_mailbox(google, "org", " Nestor@Tailspin.example ", "google")

    assert (mailbox.provider, mailbox.mode, mailbox.status) == (
        "google",
        ConnectionMode.APPLICATION,
        MailboxStatus.ACTIVE,
    )
    assert mailbox.address == NESTOR and mailbox.tenant_id == "tailspin.example"
    assert mailbox.mailbox_id == mailbox_id_for("org", NESTOR, "google")
    assert access.reads == [(NESTOR, False)]
    assert add_org_mailbox(google, "org", NESTOR, "google").mailbox_id == mailbox.mailbox_id  # idempotent


def test_adding_without_a_service_account_is_refused_with_what_to_do(google: ConnectDeps) -> None:
    with pytest.raises(OrgAccessRequired) as refused:
        add_org_mailbox(google, "org", NESTOR, "google")
    assert refused.value.code == "service_account_required"
    assert not google.mailboxes.list("org")


def test_an_address_outside_the_domain_is_an_address_not_found_and_nothing_is_stored(google: ConnectDeps) -> None:
    install_org_access(google, "org", "google", KEY)
    with pytest.raises(InvalidRequest) as refused:
        add_org_mailbox(google, "org", "someone@elsewhere.example", "google")
    assert refused.value.code == "address_not_found"
    assert not google.mailboxes.list("org")


def test_scopes_the_admin_did_not_delegate_refuse_the_add_with_the_reason(
    google: ConnectDeps, access: FakeOrgAccess
) -> None:
    install_org_access(google, "org", "google", KEY)
    access.delegated = False
    with pytest.raises(OrgAccessRequired) as refused:
        add_org_mailbox(google, "org", NESTOR, "google")
    assert refused.value.code == "delegation_refused"
    assert "unauthorized_client" in str(refused.value)
    assert not google.mailboxes.list("org")


def test_a_person_connected_by_sign_in_is_switched_to_org_wide_access_not_duplicated(google: ConnectDeps) -> None:
    delegated = Mailbox(
        org_id="org", mailbox_id=mailbox_id_for("org", "1098", "google"), address=NESTOR, aliases=(NESTOR,),
        watermark=google.clock.now(), graph_user_id="1098", provider="google",
    )  # fmt: skip
    google.mailboxes.add(delegated)
    google.tokens.put("org", mailbox_owner(delegated.mailbox_id), '{"refresh_token": "1//r"}', None)
    install_org_access(google, "org", "google", KEY)

    mailbox = add_org_mailbox(google, "org", NESTOR, "google")

    assert mailbox.mailbox_id == delegated.mailbox_id and mailbox.mode is ConnectionMode.APPLICATION
    assert len(google.mailboxes.list("org")) == 1
    assert google.tokens.get("org", mailbox_owner(delegated.mailbox_id)) is None  # the unused grant is gone


def test_removing_the_key_holds_its_mailboxes_and_uploading_it_again_resumes_exactly_those(
    google: ConnectDeps,
) -> None:
    install_org_access(google, "org", "google", KEY)
    nestor = add_org_mailbox(google, "org", NESTOR, "google")
    lidia = add_org_mailbox(google, "org", "lidia@tailspin.example", "google")
    stored = google.mailboxes.get("org", lidia.mailbox_id)
    assert stored is not None
    google.mailboxes.replace(lidia.signed_out("signed out by admin"), stored.etag)

    assert remove_org_access(google, "org", "google") == 2
    assert google.tokens.get("org", org_access_owner("google")) is None
    assert org_access_of(google, "org", "google") is None
    held = google.mailboxes.get("org", nestor.mailbox_id)
    assert held is not None
    assert (held.value.status, held.value.status_reason) == (MailboxStatus.NEEDS_REAUTH, ORG_ACCESS_REMOVED)

    _description, resumed = install_org_access(google, "org", "google", KEY)

    assert sorted(resumed) == sorted([nestor.mailbox_id, lidia.mailbox_id])
    back = google.mailboxes.get("org", nestor.mailbox_id)
    assert back is not None and back.value.status is MailboxStatus.ACTIVE


def test_removing_the_key_leaves_delegated_and_microsoft_mailboxes_alone(google: ConnectDeps) -> None:
    other = Mailbox(
        org_id="org", mailbox_id="mbx_other", address="adele@gmail.example", aliases=(),
        watermark=google.clock.now(), provider="google",
    )  # fmt: skip
    google.mailboxes.add(other)
    install_org_access(google, "org", "google", KEY)

    assert remove_org_access(google, "org", "google") == 0
    kept = google.mailboxes.get("org", "mbx_other")
    assert kept is not None and kept.value.status is MailboxStatus.ACTIVE


def test_microsoft_application_mode_is_unchanged_and_still_needs_the_admin_consent(google: ConnectDeps) -> None:
    install_org_access(google, "org", "google", KEY)
    with pytest.raises(ConsentRequired) as refused:
        add_app_mailbox(google, "org", NESTOR)
    assert refused.value.code == "admin_consent_required"


def test_a_provider_without_org_wide_access_is_refused(google: ConnectDeps) -> None:
    with pytest.raises(InvalidRequest) as refused:
        install_org_access(google, "org", "microsoft", KEY)
    assert refused.value.code == "invalid_provider"
