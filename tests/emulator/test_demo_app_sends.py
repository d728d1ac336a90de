"""The demo app registration can send: the demo org has sending on (tools/demo.py), so admin consent in
the demo tenant needs Mail.ReadWrite and Mail.Send among the app's application permissions, also in a
directory saved before they were added."""

from __future__ import annotations

from emulator.directory import App, Directory
from emulator.state import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REDIRECT_URIS, seed_demo
from sync_core.use_cases.connect.admin_consent import SENDING_APP_ROLES


def test_the_demo_app_registration_requests_what_sending_needs() -> None:
    directory = Directory()

    seed_demo(directory)

    app = directory.get_app(DEMO_CLIENT_ID)
    assert app is not None
    assert set(SENDING_APP_ROLES) | {"Mail.Read"} <= set(app.app_roles)


def test_a_demo_app_saved_without_the_sending_permissions_gets_them_and_keeps_its_others() -> None:
    directory = Directory()
    directory.add_app(App(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, list(DEMO_REDIRECT_URIS), ["Mail.Read", "Sites.Read"]))

    seed_demo(directory)
    seed_demo(directory)

    app = directory.get_app(DEMO_CLIENT_ID)
    assert app is not None
    assert app.app_roles == ["Mail.Read", "Sites.Read", "Mail.ReadWrite", "Mail.Send", "User.Read.All"]
