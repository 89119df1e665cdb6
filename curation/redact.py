"""Removing secrets from URLs and free text before anything is stored or logged.

URL lists from the web carry credentials: ``user:pass@`` in the authority and signed query
strings (S3/GCS presigned URLs, CDN tokens, API keys). The fetcher needs the full URL, but a
dataset keeps only the redacted form: userinfo removed, the value of every secret-looking query
(or fragment) parameter replaced by ``REDACTED``. The sample key stays derived from the full URL
(``schemas.sample_key``), so reruns find the same keys. Pure functions over strings: they never
raise, whatever the input.
"""

from __future__ import annotations

import re

REDACTED = "REDACTED"
# Parameter names (lower case, split on - _ .) whose value is a credential. Whole words only:
# "key" catches api_key, Key-Pair-Id and ?key=, but not "monkey".
_SECRET_WORDS = frozenset(
    {
        "sig", "signature", "token", "key", "apikey", "password", "passwd", "pass", "pwd",
        "secret", "credential", "credentials", "auth", "authorization", "session", "sessionid",
        "policy", "jwt", "code", "hmac", "accesskeyid", "awsaccesskeyid", "sas",
    }
)  # fmt: skip
# ... and compound names written as one word (accesstoken, xapikey, clientsecret, ...)
_SECRET_PARTS = ("token", "secret", "signature", "password", "credential", "apikey", "accesskey")

# name=value inside a query string or fragment (or free text: "sig=abc" in an error message)
_PARAM = re.compile(
    r"(?P<lead>^|[?&;#\s\"'(,])(?P<name>[A-Za-z0-9_.\-]{1,64})=(?P<value>[^&;#\s\"')]*)"
)
# scheme://userinfo@ : drop the userinfo (user, user:password, or a token as the user name)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s\"']*@")  # up to the last @
# The same inside a percent-encoded URL (an image proxy's ?url=https%3A%2F%2F...%3Fsig%3D...),
# encoded once or more (%3F, %253F, ...): "?", "&", "#", "=", ":", "/" and "@" in disguise.
_E = {c: rf"%(?:25)*{h[0]}[{h[1].upper()}{h[1].lower()}]" for c, h in
      {"?": "3f", "&": "26", "#": "23", "=": "3d", ":": "3a", "/": "2f", "@": "40"}.items()}  # fmt: skip
_ENCODED_PARAM = re.compile(
    rf"(?P<lead>{_E['?']}|{_E['&']}|{_E['#']})(?P<name>[A-Za-z0-9_.\-]{{1,64}}){_E['=']}"
    rf"(?P<value>(?:(?!{_E['&']}|{_E['#']})[^&;#\s\"')])*)"
)
_ENCODED_USERINFO = re.compile(
    rf"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*{_E[':']}{_E['/']}{_E['/']})"
    rf"(?:(?!{_E['/']}|{_E['?']}|{_E['#']})[^/?#\s\"'@])*{_E['@']}"
)


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    if any(word in _SECRET_WORDS for word in re.split(r"[-_.]", lowered)):
        return True
    return any(part in lowered for part in _SECRET_PARTS)


def redact_text(text: str) -> str:
    """``text`` with URL userinfo removed and secret-looking ``name=value`` values redacted.

    Works on a bare URL as on any message that quotes one (an exception, a redirect target),
    and on URLs percent-encoded inside another URL (kept encoded: ``%3Fsig%3DREDACTED``).
    """

    def param(match: re.Match) -> str:
        if not match["value"] or not is_secret_name(match["name"]):
            return match[0]
        return match[0][: match.start("value") - match.start()] + REDACTED  # lead, name, "="

    text = _PARAM.sub(param, _USERINFO.sub(r"\g<scheme>", text))
    if "%" in text:
        text = _ENCODED_PARAM.sub(param, _ENCODED_USERINFO.sub(r"\g<scheme>", text))
    return text


def redact_uri(uri: str, limit: int = 2048) -> str:
    """The form of ``uri`` that may be stored: secrets redacted, cut to ``limit`` characters."""
    redacted = redact_text(uri)
    return redacted if len(redacted) <= limit else redacted[: limit - 3] + "..."
