"""The service account's JWT-bearer assertion and key-file checks (what Google's server-to-server guide
asks: RS256 with the key's id, ``iss``/``sub``/``scope``/``aud``, at most an hour)."""

from __future__ import annotations

import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sync_core.adapters.google.identity import READ_SCOPE, SEND_SCOPE
from sync_core.adapters.google.service_account import StoredKey, assertion, mailbox_scopes, parse_key
from sync_core.errors import InvalidRequest

TOKEN_URL = "https://oauth2.googleapis.com/token"
PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = PRIVATE.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
KEY_FILE = {
    "type": "service_account",
    "project_id": "crm-sync",
    "private_key_id": "0123abcd",
    "private_key": PEM,
    "client_email": "sync@crm-sync.iam.gserviceaccount.com",
    "client_id": "112233445566778899001",
    "token_uri": TOKEN_URL,
}


def test_the_assertion_impersonates_the_mailbox_with_the_keys_id_for_at_most_an_hour() -> None:
    key = parse_key(KEY_FILE, 1000.0)

    signed = assertion(key, TOKEN_URL, mailbox_scopes(True), "nestor@tailspin.example", 1_800_000_000.0)

    assert jwt.get_unverified_header(signed) == {"alg": "RS256", "kid": "0123abcd", "typ": "JWT"}
    claims = jwt.decode(signed, PRIVATE.public_key(), algorithms=["RS256"], audience=TOKEN_URL,
                        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})  # fmt: skip
    assert claims == {
        "iss": KEY_FILE["client_email"],
        "sub": "nestor@tailspin.example",
        "scope": f"{READ_SCOPE} {SEND_SCOPE}",
        "aud": TOKEN_URL,
        "iat": 1_800_000_000,
        "exp": 1_800_003_600,
    }


def test_reading_asks_only_the_read_scope() -> None:
    assert mailbox_scopes(False) == (READ_SCOPE,)


def test_the_stored_form_keeps_what_signing_needs_and_the_description_drops_the_key() -> None:
    key = parse_key(KEY_FILE, 1000.0)

    assert StoredKey.from_json(key.to_json()) == key
    assert PEM not in json.dumps(key.describe())
    assert key.describe() == {
        "client_email": KEY_FILE["client_email"], "client_id": KEY_FILE["client_id"],
        "private_key_id": "0123abcd", "project_id": "crm-sync",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"type": "authorized_user"}, "not a service account key"),
        ({"client_email": ""}, "client_email"),
        ({"client_id": "sync"}, "numeric client id"),
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"}, "not a PEM"),
        ({"private_key": 42}, "private_key"),
    ],
)
def test_a_malformed_key_file_is_refused_saying_what_is_wrong_without_quoting_it(
    change: dict[str, object], said: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_key({**KEY_FILE, **change}, 0.0)
    assert refused.value.code == "invalid_service_account_key"
    assert said in str(refused.value) and "BEGIN" not in str(refused.value)


def test_a_key_that_is_not_rsa_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidRequest, match="not an RSA key"):
        parse_key({**KEY_FILE, "private_key": other.decode()}, 0.0)
