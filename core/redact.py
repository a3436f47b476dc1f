"""Secrets out of URLs and text: what a URL may show or be stored as.

A URL can carry credentials in two places: its userinfo (``http://user:password@host``) and its
query or fragment (``?api_key=...``, ``#access_token=...``). ``redact_url`` masks both and keeps
what says where the URL points (scheme, host, port, path); ``redact_text`` does it to every URL
inside a message, and ``url_secrets`` lists a URL's raw secrets so that a caller can also strip
them from text that quotes them without their URL (a server echoing its own address, say).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

MASK = "***"
SECRET_NAME_PARTS = (
    "key",
    "token",
    "secret",
    "pass",
    "pwd",
    "sig",
    "auth",
    "credential",
    "session",
    "cookie",
)
"""A query parameter whose lower-case name contains one of these holds a secret."""

# The scheme's length is bounded so that a long run of letters costs linear time, not quadratic.
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s'\"<>(){}]+")


def _secret_name(name: str) -> bool:
    lowered = unquote(name).lower()
    return any(part in lowered for part in SECRET_NAME_PARTS)


def _masked_params(params: str) -> tuple[str, list[str]]:
    """``a=1&token=x`` as ``a=1&token=***``, and the values that were masked."""
    parts: list[str] = []
    masked: list[str] = []
    for item in params.split("&"):
        name, sep, value = item.partition("=")
        if sep and value and _secret_name(name):
            masked.append(value)
            item = f"{name}={MASK}"
        parts.append(item)
    return "&".join(parts), masked


def _split(url: str) -> tuple[str, str, str, str, str, str] | None:
    """(prefix up to the host, userinfo, host and port, path, query, fragment), or None when
    ``url`` has no host part (``host:port`` without a scheme counts as one)."""
    scheme_sep = url.find("://")
    start = scheme_sep + 3 if scheme_sep > 0 else 0
    if scheme_sep <= 0 and not re.match(r"[^/\s]+@|[^/\s:]+:\d+(/|$)", url):
        return None
    try:
        parts = urlsplit(url if scheme_sep > 0 else f"//{url}")
    except ValueError:
        return None
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        userinfo, hostport = "", netloc
    return url[:start], userinfo, hostport, parts.path, parts.query, parts.fragment


def redact_url(url: str) -> str:
    """``url`` with its userinfo and every secret-looking query or fragment parameter replaced
    by ``***``: ``http://u:pw@h:1/v1?token=t&x=1`` becomes ``http://***@h:1/v1?token=***&x=1``.
    Text that is not a URL comes back unchanged."""
    split = _split(url)
    if split is None:
        return url
    prefix, userinfo, hostport, path, query, fragment = split
    query, in_query = _masked_params(query)
    fragment, in_fragment = _masked_params(fragment)
    if not userinfo and not in_query and not in_fragment:
        return url
    out = prefix + (f"{MASK}@" if userinfo else "") + hostport + path
    if query:
        out += f"?{query}"
    if fragment:
        out += f"#{fragment}"
    return out


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The raw secrets ``redact_url`` masks in ``url`` (its userinfo, the secret parameter
    values), each also percent-decoded."""
    split = _split(url) if url else None
    if split is None:
        return ()
    _, userinfo, _, _, query, fragment = split
    found = [*_masked_params(query)[1], *_masked_params(fragment)[1]]
    if userinfo:
        # The whole userinfo and the password; a bare user name is no secret.
        found += [userinfo, userinfo.partition(":")[2]]
    out: list[str] = []
    for secret in found:
        for form in (secret, unquote(secret)):
            if form and form not in out:
                out.append(form)
    return tuple(sorted(out, key=len, reverse=True))


def _redact_match(match: re.Match[str]) -> str:
    url = match.group(0)
    bare = url.rstrip(".,;:!?")  # sentence punctuation after a URL is not part of it
    return redact_url(bare) + url[len(bare) :]


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every URL in it redacted and every one of ``secrets`` (at least 4
    characters; shorter ones would mask ordinary words) replaced by ``***``."""
    out = _URL_IN_TEXT.sub(_redact_match, text) if "://" in text else text
    for secret in secrets:
        if len(secret) >= 4:
            out = out.replace(secret, MASK)
    return out
