"""Broker URLs: which backend a URL selects, and how to print one without its password."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

BrokerKind = Literal["rabbitmq", "redis"]

_SCHEMES: dict[str, BrokerKind] = {
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "redis": "redis",
    "rediss": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
}


def broker_kind(url: str) -> BrokerKind:
    scheme = urlsplit(url).scheme.lower()
    try:
        return _SCHEMES[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ValueError(f"unsupported broker URL scheme {scheme!r} (use {known})") from None


def redact_url(url: str) -> str:
    """Replace the password in a URL with ``***`` so it can be logged or printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str, url: str) -> str:
    """Remove a URL's password from arbitrary text (a client error message, say)."""
    password = urlsplit(url).password
    if password:
        text = text.replace(url, redact_url(url)).replace(password, "***")
    return text
