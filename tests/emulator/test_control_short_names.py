"""The control API takes what ``make run``'s hints and the README walkthrough print: a user's short name
(``adele``) where exactly one user has it, besides the id and the UPN."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.client import EmulatorClient, EmulatorError
from emulator.server import EmulatorServer
from tools.azurite import free_port


def test_mail_delivered_to_a_short_name_lands_in_that_users_mailbox_and_its_stats_answer(tmp_path: Path) -> None:
    with EmulatorServer(port=free_port(), state_dir=tmp_path, seed="demo") as server:
        client = EmulatorClient(server.url, server.ca_bundle_path)
        delivered = client.deliver("adele", from_="dan@talent.example", to=["adele@contoso.example"], subject="hi")
        adele = server.state.directory.lookup_user("adele@contoso.example")
        assert adele is not None
        by_upn = client.deliver("adele@contoso.example", from_="dan@talent.example", subject="again")
        assert delivered["parentFolderId"] == by_upn["parentFolderId"]
        assert client.mailbox_stats("adele") == client.mailbox_stats(adele.id)


def test_a_short_name_two_users_share_finds_nobody_and_the_404_says_what_to_give(tmp_path: Path) -> None:
    with EmulatorServer(port=free_port(), state_dir=tmp_path, seed="demo") as server:
        client = EmulatorClient(server.url, server.ca_bundle_path)
        fabrikam = client.create_tenant("Fabrikam", ["fabrikam.example"])
        client.create_user(fabrikam["id"], "adele@fabrikam.example")
        with pytest.raises(EmulatorError) as refused:
            client.deliver("adele", from_="dan@talent.example", subject="whose?")
        assert refused.value.status == 404
        assert "short name one user has" in str(refused.value)
        assert client.deliver("adele@fabrikam.example", from_="dan@talent.example", subject="hers")["id"]
        assert client.deliver("megan", from_="dan@talent.example", subject="unambiguous")["id"]
