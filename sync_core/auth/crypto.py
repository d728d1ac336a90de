"""AES-GCM encryption of secrets at rest (MSAL token caches, pending auth-code flows).

The key setting ``TOKEN_ENCRYPTION_KEY`` is ``kid:base64key[,kid:base64key...]``; the first key is the
current one (every new encryption uses it), the others are kept only to decrypt older values until they
are rewritten (key rotation: put the new key first, keep the old one after it until nothing needs it).

Ciphertext format: ``v1.{kid}.{base64url(nonce ‖ ciphertext ‖ tag)}`` with a fresh random 96-bit nonce
per encryption.

Invariants:
- Key material never appears in an exception message, ``repr`` or log line.
- ``associated_data`` (AAD) binds a ciphertext to its owner (org and mailbox or tenant): a value copied
  to another owner's row fails authentication instead of decrypting, so caches cannot be swapped.
- Any change to the kid, nonce, ciphertext, tag or AAD makes ``decrypt`` raise ``TokenDecryptionError``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sync_core.errors import TokenDecryptionError

FORMAT_VERSION = "v1"
NONCE_BYTES = 12
KEY_SIZES = (16, 24, 32)
_KID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _decode_key(kid: str, text: str) -> bytes:
    """Accept standard or URL-safe base64, with or without padding."""
    cleaned = text.strip()
    if not cleaned:
        raise ValueError(f"TOKEN_ENCRYPTION_KEY: key {kid!r} is empty")
    normalised = cleaned.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(normalised + "=" * (-len(normalised) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"TOKEN_ENCRYPTION_KEY: key {kid!r} is not valid base64") from None
    if len(raw) not in KEY_SIZES:
        raise ValueError(
            f"TOKEN_ENCRYPTION_KEY: key {kid!r} decodes to {len(raw)} bytes; AES needs 16, 24 or 32 bytes"
        )
    return raw


class TokenCipher:
    """Encrypts with the current key, decrypts with any configured key."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("TOKEN_ENCRYPTION_KEY: at least one key is required")
        self._keys: dict[str, AESGCM] = {}
        for kid, key in keys:
            if not _KID.fullmatch(kid):
                raise ValueError(f"TOKEN_ENCRYPTION_KEY: key id {kid!r} must be 1-64 of A-Z a-z 0-9 _ -")
            if kid in self._keys:
                raise ValueError(f"TOKEN_ENCRYPTION_KEY: key id {kid!r} appears twice")
            if len(key) not in KEY_SIZES:
                raise ValueError(f"TOKEN_ENCRYPTION_KEY: key {kid!r} must be 16, 24 or 32 bytes")
            self._keys[kid] = AESGCM(key)
        self._current = keys[0][0]

    @classmethod
    def from_setting(cls, value: str) -> TokenCipher:
        """Parse ``kid:base64key[,kid:base64key...]`` (first is current). Errors name the problem and
        the key id, never the key."""
        if not value or not value.strip():
            raise ValueError("TOKEN_ENCRYPTION_KEY is not set")
        keys: list[tuple[str, bytes]] = []
        for position, raw_item in enumerate(value.split(","), start=1):
            item = raw_item.strip()
            if not item:
                raise ValueError(f"TOKEN_ENCRYPTION_KEY: entry {position} is empty")
            kid, sep, encoded = item.partition(":")
            kid = kid.strip()
            if not sep or not kid:
                raise ValueError(f"TOKEN_ENCRYPTION_KEY: entry {position} must look like kid:base64key")
            if not _KID.fullmatch(kid):
                raise ValueError(
                    f"TOKEN_ENCRYPTION_KEY: entry {position} has an invalid key id (use 1-64 of A-Z a-z 0-9 _ -)"
                )
            keys.append((kid, _decode_key(kid, encoded)))
        return cls(keys)

    @staticmethod
    def generate_setting(kid: str = "k1") -> str:
        """A fresh random 256-bit key in the setting's format (for operators and tests)."""
        return f"{kid}:{base64.b64encode(os.urandom(32)).decode('ascii')}"

    @property
    def current_kid(self) -> str:
        return self._current

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self._current].encrypt(nonce, plaintext, associated_data)
        return f"{FORMAT_VERSION}.{self._current}.{_b64url_encode(nonce + sealed)}"

    def decrypt(self, token: str, associated_data: bytes) -> bytes:
        kid, blob = self._parse(token)
        aead = self._keys.get(kid)
        if aead is None:
            raise TokenDecryptionError(f"encrypted with key id {kid!r}, which TOKEN_ENCRYPTION_KEY no longer lists")
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
        except InvalidTag:
            raise TokenDecryptionError("authentication failed (tampered value or wrong owner)") from None

    def key_id(self, token: str) -> str:
        return self._parse(token)[0]

    def needs_rotation(self, token: str) -> bool:
        """True when ``token`` was not encrypted under the current key (so it should be rewritten)."""
        return self.key_id(token) != self._current

    @staticmethod
    def _parse(token: str) -> tuple[str, bytes]:
        version, _, rest = token.partition(".")
        kid, _, body = rest.partition(".")
        if version != FORMAT_VERSION or not _KID.fullmatch(kid) or not body:
            raise TokenDecryptionError("not an encrypted value of a known format")
        try:
            blob = _b64url_decode(body)
        except (binascii.Error, ValueError):
            raise TokenDecryptionError("encrypted value is not valid base64url") from None
        if len(blob) < NONCE_BYTES + 16:
            raise TokenDecryptionError("encrypted value is too short")
        return kid, blob

    def __repr__(self) -> str:
        return f"TokenCipher(current={self._current!r}, kids={list(self._keys)!r})"
