"""TokenCipher: AES-GCM at rest with key ids for rotation; errors never echo key material."""

from __future__ import annotations

import base64
import os

import pytest

from sync_core.auth.crypto import TokenCipher, TokenDecryptionError

KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 16).decode()
AAD = b'["tokencache", "org1", "mailbox:m1"]'


def cipher(setting: str) -> TokenCipher:
    return TokenCipher.from_setting(setting)


def test_a_value_round_trips_under_the_current_key_in_the_documented_format() -> None:
    c = cipher(f"a:{KEY_A}")
    token = c.encrypt(b"secret cache", AAD)
    version, kid, body = token.split(".")
    assert (version, kid) == ("v1", "a")
    assert "=" not in body and "+" not in body and "/" not in body
    assert c.decrypt(token, AAD) == b"secret cache"
    assert b"secret" not in base64.urlsafe_b64decode(body + "==")


def test_every_encryption_uses_a_fresh_nonce() -> None:
    c = cipher(f"a:{KEY_A}")
    assert c.encrypt(b"x", AAD) != c.encrypt(b"x", AAD)


@pytest.mark.parametrize("size", [16, 24, 32])
def test_aes_128_192_and_256_bit_keys_are_accepted(size: int) -> None:
    c = cipher(f"k:{base64.b64encode(os.urandom(size)).decode()}")
    assert c.decrypt(c.encrypt(b"v", AAD), AAD) == b"v"


def test_url_safe_and_unpadded_base64_keys_are_accepted() -> None:
    raw = os.urandom(32)
    url_safe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    standard = base64.b64encode(raw).decode()
    token = cipher(f"k:{url_safe}").encrypt(b"v", AAD)
    assert cipher(f"k:{standard}").decrypt(token, AAD) == b"v"


def test_a_ciphertext_moved_to_another_owner_does_not_decrypt() -> None:
    c = cipher(f"a:{KEY_A}")
    token = c.encrypt(b"cache of m1", AAD)
    with pytest.raises(TokenDecryptionError):
        c.decrypt(token, b'["tokencache", "org1", "mailbox:m2"]')


def test_a_tampered_ciphertext_does_not_decrypt() -> None:
    c = cipher(f"a:{KEY_A}")
    token = c.encrypt(b"cache", AAD)
    head, body = token.rsplit(".", 1)
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(TokenDecryptionError):
        c.decrypt(f"{head}.{flipped}", AAD)
    with pytest.raises(TokenDecryptionError):
        c.decrypt("v1.a.short", AAD)
    with pytest.raises(TokenDecryptionError):
        c.decrypt("plaintext", AAD)
    with pytest.raises(TokenDecryptionError):
        c.decrypt(token.replace("v1.", "v2.", 1), AAD)


def test_old_keys_still_decrypt_after_rotation_and_new_writes_use_the_first_key() -> None:
    before = cipher(f"a:{KEY_A}")
    old_token = before.encrypt(b"cache", AAD)
    after = cipher(f"b:{KEY_B},a:{KEY_A}")
    assert after.current_kid == "b"
    assert after.decrypt(old_token, AAD) == b"cache"
    assert after.needs_rotation(old_token)
    new_token = after.encrypt(b"cache", AAD)
    assert new_token.startswith("v1.b.")
    assert not after.needs_rotation(new_token)


def test_a_value_under_a_removed_key_names_the_key_id_but_not_the_key() -> None:
    token = cipher(f"a:{KEY_A}").encrypt(b"cache", AAD)
    with pytest.raises(TokenDecryptionError) as info:
        cipher(f"b:{KEY_B}").decrypt(token, AAD)
    assert "'a'" in str(info.value)
    assert KEY_A not in str(info.value) and KEY_B not in str(info.value)


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("", "not set"),
        ("   ", "not set"),
        (KEY_A, "kid:base64key"),
        (f":{KEY_A}", "kid:base64key"),
        (f"a:{KEY_A},", "entry 2 is empty"),
        ("a:", "empty"),
        ("a:!!!notbase64!!!", "not valid base64"),
        (f"a:{base64.b64encode(b'short').decode()}", "5 bytes"),
        (f"a:{KEY_A},a:{KEY_B}", "appears twice"),
        (f"a.b:{KEY_A}", "invalid key id"),
    ],
)
def test_a_bad_key_setting_is_a_clear_error_that_never_echoes_key_material(setting: str, problem: str) -> None:
    with pytest.raises(ValueError, match="TOKEN_ENCRYPTION_KEY") as info:
        TokenCipher.from_setting(setting)
    message = str(info.value)
    assert problem in message
    for secret in (KEY_A, KEY_B, "!!!notbase64!!!", base64.b64encode(b"short").decode()):
        assert secret not in message


def test_the_repr_of_a_cipher_shows_key_ids_only() -> None:
    c = cipher(f"b:{KEY_B},a:{KEY_A}")
    assert repr(c) == "TokenCipher(current='b', kids=['b', 'a'])"


def test_a_generated_setting_is_a_valid_256_bit_key() -> None:
    setting = TokenCipher.generate_setting("k2026")
    c = cipher(setting)
    assert c.current_kid == "k2026"
    assert len(base64.b64decode(setting.partition(":")[2])) == 32
