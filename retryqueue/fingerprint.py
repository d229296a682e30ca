"""Error fingerprints: one stable key for every occurrence of "the same" failure.

Two failures are the same when their error code matches and their messages differ only in
the values they mention: ids, numbers, timestamps, addresses, quoted values. Pure Python,
no imports from the package: the dashboard groups dead letters by it, and a later
retry-intelligence step may reuse it.

>>> normalise_message("timeout after 30s connecting to 10.0.0.7:5432 (order 'A-17')")
'timeout after <n>s connecting to <ip> (order <str>)'
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["FINGERPRINT_LENGTH", "fingerprint", "normalise_message"]

FINGERPRINT_LENGTH = 16
"""Characters in a fingerprint (hex of a SHA-256 prefix: 64 bits)."""

_MAX_MESSAGE = 2000  # only the head of a long message decides its group

# Order matters: the more specific shapes first, so a UUID is not read as hex and numbers.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"
        ),
        "<time>",
    ),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:\.\d+)?\b"), "<time>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{1,4}\b"), "<ip>"),
    (re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`"), "<str>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    # A path segment that holds a digit is an id (/orders/123, /users/u42/edit).
    (re.compile(r"(?<=/)[^/\s?#]*\d[^/\s?#]*"), "<id>"),
    (re.compile(r"(?<![\w<.])\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.IGNORECASE), "<n>"),
    (re.compile(r"(?<=[A-Za-z_])\d+\b"), "<n>"),
)
_SPACES = re.compile(r"\s+")


def normalise_message(message: str | None) -> str:
    """``message`` with the values it mentions replaced by placeholders, spaces collapsed.

    UUIDs become ``<uuid>``, timestamps ``<time>``, IPv4/IPv6 addresses ``<ip>``, quoted
    values ``<str>``, hex ids ``<hex>``, path segments holding digits ``<id>`` and other
    numbers ``<n>``. Only the first 2,000 characters are read. None gives "".
    """
    if not message:
        return ""
    text = message[:_MAX_MESSAGE]
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return _SPACES.sub(" ", text).strip()


def fingerprint(error_code: str | None, message: str | None) -> str | None:
    """The group key of a failure: a hash of its code and normalised message.

    None when there is neither a code nor a message (nothing to group by).
    """
    normalised = normalise_message(message)
    if not error_code and not normalised:
        return None
    digest = hashlib.sha256(f"{error_code or ''}\x1f{normalised}".encode()).hexdigest()
    return digest[:FINGERPRINT_LENGTH]
