"""Showing configured values without leaking secrets: keys, URLs, text holding URLs."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

# --- Showing values without leaking secrets --------------------------------------------------


def mask_secret(secret: str) -> str:
    """Mask a key for display (docs/behaviour.md §2.4), as coder/aibridge does.

    Reveal 4 characters at each end from 20 characters on, 2 from 10, 1 from 5, else none;
    a secret too short to reveal anything becomes ``"..."`` and the empty string stays empty:
    ``"sk-ant-api03-abcdefgh"`` -> ``"sk-a...efgh"``.
    """
    if not secret:
        return ""
    length = len(secret)
    reveal = 4 if length >= 20 else 2 if length >= 10 else 1 if length >= 5 else 0
    if length <= 2 * reveal:
        return "..."
    return secret[:reveal] + "..." + secret[length - reveal :]


# "user:password@" at the start of a URL's authority. Greedy up to the last "@", so a
# password with an unencoded "/", "?" or "@" is masked whole (masking too much is harmless).
_USERINFO_PASSWORD: Final = re.compile(r"^([^:/?#@]*):.*@")
# One name=value pair of a query string or fragment.
_QUERY_PAIR: Final = re.compile(r"([^&;=#?]*)=([^&;#]*)")
# A query parameter whose name says it carries a credential: libpq's ?password=, and the
# token=, api_key=, access_token=, sig=, X-Amz-Signature=, code=... of MCP and signed URLs.
# A substring match, so that any spelling is caught (masking too much is harmless).
_SECRET_PARAMETER: Final = re.compile(
    r"token|key|secret|pass|pwd|auth|sig|code|credential|session|jwt|cookie", re.IGNORECASE
)
# A URL inside free text (a log line, an exception message): scheme://, then up to a space,
# a quote or a bracket that would end it in prose or in a repr, without the punctuation
# that ends a sentence or a parenthesis.
_URL_IN_TEXT: Final = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*[^\s'\"<>`).,;:]")


def mask_url(url: str) -> str:
    """*url* with its credentials replaced by ``***``, safe to show, log, record or export.

    The one function for every URL the gateway shows (the database, provider base URLs, MCP
    server URLs, in check-config, ``/readyz``, logs, metric labels and records). Masked are
    the password of ``user:password@`` (taken to end at the *last* ``@``, so a malformed URL
    may be over-masked but never leaks a password that contains ``@`` or ``/``) and the
    value of every query or fragment parameter whose name looks like a credential
    (``password``, ``token``, ``api_key``, ``access_token``, ``sig``, ``code``...).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    before, question, query = rest.partition("?")
    if not question:
        before, question, query = rest.partition("#")
    query = _QUERY_PAIR.sub(_mask_parameter, query)
    # The query first: a "@" inside a masked query value must not look like userinfo.
    rest = _USERINFO_PASSWORD.sub(r"\1:***@", before + question + query, count=1)
    return f"{scheme}{sep}{rest}"


def _mask_parameter(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    if value and _SECRET_PARAMETER.search(unquote(name)):
        return f"{name}=***"
    return match.group(0)


def mask_urls_in(text: str) -> str:
    """*text* with every URL in it passed through :func:`mask_url` (exception messages name
    the URL they failed on, query and userinfo included)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), text)
