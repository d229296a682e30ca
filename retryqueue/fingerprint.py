"""Error fingerprints: one stable key for every occurrence of "the same" failure.

Two failures are the same when their error code matches and their messages differ only in
the values they mention: ids, numbers, timestamps, addresses, quoted values. What names the
failure is kept: words, HTTP status codes, quoted identifiers (a constraint, a column, a
key). Pure Python (only the package's errors): the item's and the history row's
``error_fingerprint`` are computed here, and dead letters are grouped by it.

>>> normalise_message("timeout after 30s connecting to 10.0.0.7:5432 (order 'A-17')")
'timeout after <n>s connecting to <ip> (order <str>)'
>>> normalise_message('duplicate key value violates unique constraint "orders_pkey"')
'duplicate key value violates unique constraint "orders_pkey"'
>>> normalise_message("503 Service Unavailable (request id req_8f14e45fceea167a)")
'503 Service Unavailable (request id <id>)'

Tune it with :func:`add_rule`: your patterns run first, and what they produce is kept as
it is by the built-in rules.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from http import HTTPStatus

from retryqueue.errors import InvalidArgument

__all__ = [
    "FINGERPRINT_LENGTH",
    "FINGERPRINT_PATTERN",
    "add_rule",
    "fingerprint",
    "normalise_message",
    "reset_rules",
]

FINGERPRINT_LENGTH = 16
"""Characters in a fingerprint (hex of a SHA-256 prefix: 64 bits)."""

FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{16}")
"""What a stored fingerprint looks like (lower-case hex, :data:`FINGERPRINT_LENGTH` long)."""

_MAX_MESSAGE = 2000  # only the head of a long message decides its group

Replacement = str | Callable[[re.Match[str]], str]

# Words before a single-quoted name that make it a name, not a value (MySQL's "for key
# 'PRIMARY'", Python's "has no attribute 'get'").
_NAMING_WORD = re.compile(
    r"\b(?:key|constraint|index|table|column|relation|field|attribute|module|schema|"
    r"database|type|function|argument|parameter)\s*$",
    re.IGNORECASE,
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_.$]*")  # no digit: a digit makes it a value
# Before a number: what makes it a status (HTTP 503, status=404) or a code (exit code 137).
_STATUS_BEFORE = re.compile(
    r"\b(?:HTTP(?:/\S*)?|status(?:[ _]?code)?|response(?: code)?)\s*[:=]?\s*\(?$",
    re.IGNORECASE,
)
_CODE_BEFORE = re.compile(r"\b(?:error[ _]?code|errno|exit (?:code|status)|code)\s*[:=]?\s*$", re.I)
_REQUESTS_AFTER = re.compile(r"\s+(?:Server|Client) Error\b")  # requests: "503 Server Error"


def _quoted(match: re.Match[str]) -> str:
    """A quoted value becomes ``<str>``; a quoted name (an identifier) is kept."""
    quote, inner = match.group(0)[0], match.group(0)[1:-1]
    if _IDENTIFIER.fullmatch(inner):
        before = match.string[: match.start()]
        whole = not before.strip() and not match.string[match.end() :].strip()
        if quote != "'" or whole or _NAMING_WORD.search(before):
            return match.group(0)
    return "<str>"


def _status_phrase(number: int, after: str) -> bool:
    try:
        phrase = HTTPStatus(number).phrase
    except ValueError:
        return False
    return after.lstrip(" ").lower().startswith(phrase.lower())


def _number(match: re.Match[str]) -> str:
    """A number becomes ``<n>``, unless it is an HTTP status or an error/exit code."""
    digits = match.group(0)
    if digits.isdigit() and len(digits) <= 5:
        before, after = match.string[: match.start()], match.string[match.end() :]
        value = int(digits)
        if _CODE_BEFORE.search(before):
            return digits
        if 100 <= value <= 599 and (
            _STATUS_BEFORE.search(before)
            or _REQUESTS_AFTER.match(after)
            or _status_phrase(value, after)
        ):
            return digits
    return "<n>"


# Order matters: the more specific shapes first, so a UUID is not read as hex and numbers.
_RULES: tuple[tuple[re.Pattern[str], Replacement], ...] = (
    (re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"
        ),
        "<time>",
    ),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:\.\d+)?\b"), "<time>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<email>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{1,4}\b"), "<ip>"),
    # PostgreSQL's "Key (id)=(42)": the column is a name, the value a value.
    (re.compile(r"(\)=\()(?:[^()]|\([^()]*\))*(\))"), r"\1<v>\2"),
    # A double-quoted or backquoted text with spaces is prose (a quoted message): its insides
    # are normalised, not the whole.
    (re.compile(r"'[^']*'|\"[^\"\s]*\"|`[^`\s]*`"), _quoted),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{4,}\b"), "<hex>"),
    # Prefixed ids (req_8f14e45f, cus_N3x9) and long tokens mixing letters and digits.
    (re.compile(r"\b[A-Za-z]{1,12}_(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{4,}\b"), "<id>"),
    (re.compile(r"\b(?=[A-Za-z0-9]*\d)(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{12,}\b"), "<id>"),
    # A path segment that holds a digit is an id (/orders/123, /users/u42/edit).
    (re.compile(r"(?<=/)[^/\s?#]*\d[^/\s?#]*"), "<id>"),
    (re.compile(r"(?<![\w<.])\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.IGNORECASE), _number),
    (re.compile(r"(?<=[A-Za-z_])\d+\b"), "<n>"),
)
_SPACES = re.compile(r"\s+")
_PROTECT = "\ue000"  # private use: no built-in rule matches it, and it starts a kept span
_PROTECTED = re.compile(f"{_PROTECT}([\ue001-\uf8ff])")
_extra: list[tuple[re.Pattern[str], Replacement]] = []


def add_rule(pattern: str | re.Pattern[str], replacement: Replacement) -> None:
    """Add a normalisation rule that runs before the built-in ones, in this process.

    Each match of ``pattern`` is replaced by ``replacement`` (a string, which may use
    ``\\1`` group references, or a function of the match, as for :func:`re.sub`), and the
    result is kept verbatim: the built-in rules do not touch it. So a rule can merge
    (``add_rule(r"shard-\\w+", "shard-<s>")``) or keep apart (``add_rule(r"tenant \\d+",
    lambda m: m.group(0))``: failures of different tenants stay different groups).

    Rules change the fingerprints of failures recorded from then on, not stored ones:
    add them at import time of the module every process that records failures loads
    (the worker's router module), and not in some processes only.
    """
    try:
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    except re.error as exc:
        raise InvalidArgument("pattern", f"not a regular expression: {exc}") from exc
    if not isinstance(compiled, re.Pattern):
        raise InvalidArgument("pattern", "expected a string or a compiled regular expression")
    if not isinstance(replacement, str) and not callable(replacement):
        raise InvalidArgument("replacement", "expected a string or a function of the match")
    _extra.append((compiled, replacement))


def reset_rules() -> None:
    """Remove every rule :func:`add_rule` added (tests use it)."""
    _extra.clear()


def _apply_extra(text: str, kept: list[str]) -> str:
    for pattern, replacement in _extra:

        def keep(match: re.Match[str], replacement: Replacement = replacement) -> str:
            value = replacement(match) if callable(replacement) else match.expand(replacement)
            if len(kept) >= 0x18FE:  # out of markers: leave the value to the built-in rules
                return value
            kept.append(value)
            return f"{_PROTECT}{chr(0xE000 + len(kept))}"

        text = pattern.sub(keep, text)
    return text


def normalise_message(message: str | None) -> str:
    """``message`` with the values it mentions replaced by placeholders, spaces collapsed.

    Rules added by :func:`add_rule` run first. Then UUIDs become ``<uuid>``, timestamps
    ``<time>``, e-mail addresses ``<email>``, IPv4/IPv6 addresses (with a port) ``<ip>``,
    PostgreSQL's ``Key (col)=(value)`` values ``<v>``, quoted values ``<str>`` (a quoted
    identifier without digits is kept when double-quoted or backquoted, after a word such as
    ``key``, ``constraint`` or ``attribute``, or when it is the whole message), hex ids
    ``<hex>``, prefixed or long letter-and-digit ids ``<id>``, path segments holding digits
    ``<id>`` and other numbers ``<n>`` (HTTP statuses such as ``HTTP 503`` or ``404 Not
    Found`` and error or exit codes are kept). Only the first 2,000 characters are read.
    None gives "".
    """
    if not message:
        return ""
    text = message[:_MAX_MESSAGE].replace(_PROTECT, "")
    kept: list[str] = []
    if _extra:
        text = _apply_extra(text, kept)
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    text = _SPACES.sub(" ", text).strip()
    if kept:
        text = _PROTECTED.sub(lambda match: kept[ord(match.group(1)) - 0xE001], text)
    return text


def fingerprint(error_code: str | None, message: str | None) -> str | None:
    """The group key of a failure: a hash of its code and normalised message.

    None when there is neither a code nor a message (nothing to group by).
    """
    normalised = normalise_message(message)
    if not error_code and not normalised:
        return None
    digest = hashlib.sha256(f"{error_code or ''}\x1f{normalised}".encode()).hexdigest()
    return digest[:FINGERPRINT_LENGTH]
