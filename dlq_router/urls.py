"""Broker URLs: which backend a URL selects, and the one redaction of secrets for all output.

Operators type passwords into URLs without percent-encoding them (``amqp://u:p@ss/w@host/``).
``urllib`` then splits at the wrong ``@`` or ``/`` and the password leaks as a "host" or a
"port". So the userinfo is found here by hand (it ends at the last ``@`` that is followed by
something host-like), the password is percent-encoded before any client sees it
(``normalize_url``), and every URL, error and log line passes ``redact`` on its way out.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

BrokerKind = Literal["rabbitmq", "redis"]

_SCHEMES: dict[str, BrokerKind] = {
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "redis": "redis",
    "rediss": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
}

MASK = "***"
# Query parameters whose value is a secret (redis-py reads ?password=..., for instance).
_SECRET_PARAM = re.compile(r"pass|secret|token|auth|cred|api_?key", re.IGNORECASE)
# Host part after the userinfo: host names, IPv4/IPv6 literals, ports, comma-separated hosts.
_HOSTLIKE = re.compile(r"^[A-Za-z0-9._~\-%\[\]:,]*$")
# A URL inside free text (a client's error message, say).
# It runs to the next whitespace (a password may hold quotes), less closing punctuation.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+?(?=[\"'>),.;:]*(?:\s|$))")
# Shorter secrets are only removed from URLs: masking 1-3 characters everywhere would garble
# every line (and the scheme and user of the URL itself).
MIN_FREE_TEXT_SECRET = 4


@dataclass(frozen=True)
class UrlParts:
    """A URL split by hand: ``scheme://[user[:password]@]host/rest``; userinfo not decoded."""

    scheme: str
    user: str | None
    password: str | None
    host: str  # up to the first / ? # after the userinfo (may hold a port, or several hosts)
    rest: str  # path, query and fragment, as written

    @property
    def query(self) -> str:
        q = self.rest.split("#", 1)[0]
        return q.split("?", 1)[1] if "?" in q else ""


def split_url(url: str) -> UrlParts | None:
    """Split ``url``; ``None`` when it has no ``scheme://``."""
    scheme, sep, after = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return None
    at = _userinfo_end(after)
    userinfo, hostpart = (after[:at], after[at + 1 :]) if at >= 0 else (None, after)
    m = re.search(r"[/?#]", hostpart)
    host, rest = (hostpart[: m.start()], hostpart[m.start() :]) if m else (hostpart, "")
    user = password = None
    if userinfo is not None:
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
    return UrlParts(scheme, user, password, host, rest)


def _userinfo_end(after: str) -> int:
    """Index of the ``@`` that ends the userinfo, or -1.

    The last ``@`` followed by a host-like part wins (passwords may hold ``@`` and ``/``);
    one whose userinfo would contain ``?`` or ``#`` is taken only if nothing else fits and it
    has a password (an ``@`` in a query parameter is not a userinfo). A password holding
    ``%XX`` is read as already encoded.
    """
    candidates = []
    for i in (m.start() for m in re.finditer("@", after)):
        host = re.split(r"[/?#]", after[i + 1 :], maxsplit=1)[0]
        if _HOSTLIKE.match(host):
            candidates.append(i)
    clean = [i for i in candidates if not re.search(r"[?#]", after[:i])]
    if clean:
        return clean[-1]
    # Only a password can explain a ? or # before the userinfo's end: it must have a colon.
    with_password = [i for i in candidates if ":" in after[:i]]
    return with_password[-1] if with_password else -1


def _encode_userinfo_part(text: str) -> str:
    """Percent-encode what must be, keeping valid %XX escapes the operator already wrote."""
    out = []
    for i, ch in enumerate(text):
        if ch == "%" and re.fullmatch(r"[0-9A-Fa-f]{2}", text[i + 1 : i + 3]):
            out.append(ch)
        else:
            out.append(quote(ch, safe="!$&'()*+,;=-._~"))
    return "".join(out)


def normalize_url(url: str) -> str:
    """The URL with its user and password percent-encoded, so every client parses it alike."""
    parts = split_url(url)
    if parts is None or parts.user is None:
        return url
    userinfo = _encode_userinfo_part(parts.user)
    if parts.password is not None:
        userinfo += ":" + _encode_userinfo_part(parts.password)
    return f"{parts.scheme}://{userinfo}@{parts.host}{parts.rest}"


def url_port_problem(url: str) -> str | None:
    """Why the URL's port (of each host) is unusable, or None. Never quotes the password."""
    parts = split_url(url)
    if parts is None:
        return None
    for host in parts.host.split(","):
        if host.startswith("["):  # IPv6 literal: the port follows the bracket
            host = host.partition("]")[2]
        port = host.rpartition(":")[2] if ":" in host else ""
        if port and not (port.isascii() and port.isdecimal() and 0 < int(port) < 65536):
            return f"port {port!r} is not a number from 1 to 65535"
    return None


def broker_kind(url: str) -> BrokerKind:
    parts = split_url(url)
    scheme = parts.scheme.lower() if parts else ""
    try:
        return _SCHEMES[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ValueError(f"unsupported broker URL scheme {scheme!r} (use {known})") from None


def _redact_query(rest: str) -> str:
    def one(m: re.Match[str]) -> str:
        key, value = m["key"], m["value"]
        return f"{m['sep']}{key}={MASK}" if value and _SECRET_PARAM.search(key) else m[0]

    return re.sub(r"(?P<sep>[?&;])(?P<key>[^=&;#]*)=(?P<value>[^&;#]*)", one, rest)


def redact_url(url: str) -> str:
    """The URL with its password (and secret query parameters) replaced by ``***``.

    Scheme, user, host and path are kept as written.
    """
    parts = split_url(url)
    if parts is None:
        return url
    netloc = parts.host
    if parts.user is not None:
        userinfo = parts.user if parts.password is None else f"{parts.user}:{MASK}"
        netloc = f"{userinfo}@{parts.host}"
    return f"{parts.scheme}://{netloc}{_redact_query(parts.rest)}"


def url_secrets(url: str) -> set[str]:
    """Every form in which the URL's secrets may show up in a client's messages."""
    raw: set[str] = set()
    parts = split_url(url)
    if parts is not None:
        if parts.password:
            raw.add(parts.password)
        for m in re.finditer(r"(?:^|[&;])([^=&;]*)=([^&;]*)", parts.query):
            if m[2] and _SECRET_PARAM.search(m[1]):
                raw.add(m[2])
        # What a naive parser (urllib, so pika and redis-py) would take for the password.
        after = url.partition("://")[2]
        naive = re.split(r"[/?#]", after, maxsplit=1)[0]
        if "@" in naive and ":" in naive.rpartition("@")[0]:
            raw.add(naive.rpartition("@")[0].partition(":")[2])
    out: set[str] = set()
    for secret in raw:
        plain = unquote(secret)
        out |= {secret, plain, quote(plain, safe=""), _encode_userinfo_part(secret)}
    return {s for s in out if s}


class _Registry:
    """The secrets known to this process (broker passwords), shared by logs and errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add_url(self, url: str) -> None:
        self.add(url_secrets(url))

    def add(self, secrets: set[str] | list[str]) -> None:
        with self._lock:
            merged = set(self._secrets) | {s for s in secrets if s}
            # Longest first: a secret that contains another is masked whole.
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets


SECRETS = _Registry()


def redact(text: str, secrets: tuple[str, ...] | None = None) -> str:
    """Text fit to print: URLs redacted, then every known secret masked outside them."""
    known = SECRETS.secrets if secrets is None else secrets
    out, last = [], 0
    for m in _URL_IN_TEXT.finditer(text):
        out.append(_mask(text[last : m.start()], known))
        out.append(_mask_url(redact_url(m[0]), known))
        last = m.end()
    out.append(_mask(text[last:], known))
    return "".join(out)


def _mask(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if len(secret) >= MIN_FREE_TEXT_SECRET and secret in text:
            text = text.replace(secret, MASK)
    return text


def _mask_url(url: str, secrets: tuple[str, ...]) -> str:
    """Mask secrets in the host and path of a URL already redacted, but never its scheme or
    user (a password equal to its user would otherwise hide the user too)."""
    parts = split_url(url)
    if parts is None:
        return _mask(url, secrets)
    head = f"{parts.scheme}://"
    if parts.user is not None:
        head += parts.user + (f":{MASK}" if parts.password is not None else "") + "@"
    return head + _mask(parts.host + parts.rest, secrets)


def redact_text(text: str, url: str) -> str:
    """Remove a URL's secrets from arbitrary text (a client error message, say)."""
    SECRETS.add_url(url)
    return redact(text)
