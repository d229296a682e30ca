"""Optional encryption at rest of ``event_data`` and ``error_message``.

With keys configured, those columns are stored as Fernet tokens (AES-CBC with an HMAC:
authenticated, so tampering or a wrong key is detected, never silent garbage). Handlers,
stats, alerts and history see plaintext; a database dump or backup does not. Other
columns — event_type, plugin, channel, status, times — stay in clear so the queue can be
filtered and monitored.

Keys come from :func:`configure` or the ``RETRYQUEUE_ENCRYPTION_KEYS`` environment variable
(comma-separated, newest first). The first key encrypts; every key decrypts, so rotation
is: put the new key first, run ``retryqueue rotate-keys`` (re-encrypts in batches), then
drop the old key. Generate a key with :func:`generate_key`. Needs the ``cryptography``
package (``pip install "retryqueue[encryption]"``).

Rows written before encryption was turned on stay readable; they are encrypted when
rotate-keys rewrites them.

Reading never raises for a value that cannot be decrypted (wrong or missing key, tampered
token): it reads as an :class:`Undecryptable` placeholder that says why, and keeps the
stored form, so writing it back changes nothing. The worker quarantines such an item
(dead_letter, error code ``UNDECRYPTABLE``) instead of running it.

The stored forms are unambiguous: an event_data object whose only key is the reserved
:data:`MARKER` is refused at enqueue (see :mod:`retryqueue.validation`), and a plaintext
message that happens to start with :data:`TEXT_PREFIX` (or :data:`PLAIN_PREFIX`) is stored
escaped with :data:`PLAIN_PREFIX`, so user data is never mistaken for a token.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from retryqueue.errors import RetryQueueError

__all__ = [
    "KEYS_ENV",
    "EncryptionError",
    "KeyRing",
    "Undecryptable",
    "active",
    "configure",
    "generate_key",
]

KEYS_ENV = "RETRYQUEUE_ENCRYPTION_KEYS"
MARKER = "$retryqueue_encrypted"
TEXT_PREFIX = "rq-enc:v1:"
PLAIN_PREFIX = "rq-plain:"


class EncryptionError(RetryQueueError):
    """Encrypted data could not be read: no key configured, a wrong key, or tampering."""


class KeyRing:
    """Fernet keys, newest first: the first encrypts, all of them decrypt."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise EncryptionError(
                'encryption needs the cryptography package: pip install "retryqueue[encryption]"'
            ) from exc
        if not keys:
            raise EncryptionError("an encryption key ring needs at least one key")
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except (ValueError, TypeError):
            raise EncryptionError(
                "invalid encryption key: expected 32 url-safe base64-encoded bytes "
                "(make one with retryqueue.encryption.generate_key())"
            ) from None
        self.size = len(keys)

    def encrypt(self, plaintext: bytes) -> str:
        """A token for ``plaintext`` under the newest key."""
        return self._fernet.encrypt(plaintext).decode("ascii")

    def decrypt(self, token: str) -> bytes:
        """The plaintext of a token made with any of the keys."""
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise EncryptionError(
                "cannot decrypt a stored value: wrong key, missing key or tampered data"
            ) from None

    def rotate(self, token: str) -> str:
        """The same plaintext re-encrypted under the newest key."""
        return self.encrypt(self.decrypt(token))

    # -- column values ---------------------------------------------------------------

    def seal_json(self, value: Any) -> Any:
        """A JSON document as stored: an object holding the token."""
        plaintext = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        return {MARKER: self.encrypt(plaintext)}

    def seal_text(self, value: str) -> str:
        """A text value as stored: a prefixed token."""
        return TEXT_PREFIX + self.encrypt(value.encode("utf-8"))


class Undecryptable(str):
    """A stored value that could not be decrypted, as read back instead of raising.

    It is a string (``"<undecryptable: REASON>"``) so that displays and JSON output keep
    working; ``reason`` says why and ``stored`` is the value exactly as stored, which is
    what gets written back if the value is saved again (nothing is lost).
    """

    reason: str
    stored: Any

    def __new__(cls, stored: Any, reason: str) -> Undecryptable:
        made = super().__new__(cls, f"<undecryptable: {reason}>")
        made.reason = reason
        made.stored = stored
        return made


_lock = threading.Lock()
_configured: list[KeyRing | None] = []


def configure(keys: Sequence[str | bytes] | None) -> KeyRing | None:
    """Use these keys (newest first) for every engine in this process; None turns it off."""
    ring = KeyRing(keys) if keys else None
    with _lock:
        _configured[:] = [ring]
    return ring


def active() -> KeyRing | None:
    """The key ring in use: from :func:`configure`, else from the environment, else None."""
    with _lock:
        if not _configured:
            raw = os.environ.get(KEYS_ENV, "")
            keys = [key.strip() for key in raw.split(",") if key.strip()]
            _configured.append(KeyRing(keys) if keys else None)
        return _configured[0]


def generate_key() -> str:
    """A new random Fernet key, as text."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


def is_sealed_json(value: Any) -> bool:
    """Whether a JSON document has the stored form of a sealed one (the reserved marker)."""
    return isinstance(value, dict) and len(value) == 1 and MARKER in value


def open_json(value: Any) -> Any:
    """A stored JSON document as plaintext (decrypting if it is sealed).

    A sealed document that cannot be decrypted reads as :class:`Undecryptable`.
    """
    if is_sealed_json(value):
        try:
            ring = _require()
            return json.loads(ring.decrypt(str(value[MARKER])).decode("utf-8"))
        except (EncryptionError, ValueError) as exc:
            return Undecryptable(value, str(exc))
    return value


def escape_text(value: str) -> str:
    """A plaintext value as stored without encryption: escaped if it looks reserved."""
    if value.startswith((TEXT_PREFIX, PLAIN_PREFIX)):
        return PLAIN_PREFIX + value
    return value


def open_text(value: str | None) -> str | None:
    """A stored text value as plaintext (decrypting if it is sealed, unescaping if escaped).

    A sealed value that cannot be decrypted reads as :class:`Undecryptable`.
    """
    if value is None:
        return None
    if value.startswith(PLAIN_PREFIX):
        return value[len(PLAIN_PREFIX) :]
    if value.startswith(TEXT_PREFIX):
        try:
            return _require().decrypt(value[len(TEXT_PREFIX) :]).decode("utf-8")
        except (EncryptionError, ValueError) as exc:
            return Undecryptable(value, str(exc))
    return value


def _require() -> KeyRing:
    ring = active()
    if ring is None:
        raise EncryptionError(
            f"this value is encrypted but no key is configured (set {KEYS_ENV} or call "
            "retryqueue.encryption.configure)"
        )
    return ring
