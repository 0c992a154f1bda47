"""Connection options carried in a broker URL: failover hosts and TLS files.

``amqp://u:p@h1:5672/%2F?hosts=h2:5673,h3:5674&ca_file=ca.pem&cert_file=c.pem&key_file=c.key``
names three RabbitMQ nodes (tried in that order, the same credentials, vhost and options on
each) and the TLS files. The topology's ``hosts:`` and ``tls:`` fields are merged into its
URL as these options (the URL's own win), so every command sees one URL and the backends
read the options here. The options are removed before the URL reaches pika or redis-py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TLS_OPTIONS = ("ca_file", "cert_file", "key_file")
OPTIONS = ("hosts", *TLS_OPTIONS)
_TLS_SCHEMES = ("amqps", "rediss", "rediss+cluster")
_HOST = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.\-]+))(?::(?P<port>\d+))?$"
)


@dataclass(frozen=True)
class Endpoints:
    """One URL per host (our options removed), tried in order, and the TLS files."""

    urls: tuple[str, ...]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def tls_files(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))


def parse_host(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port``; ValueError with the reason otherwise."""
    m = _HOST.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not host or host:port")
    port = None
    if m["port"] is not None:
        port = int(m["port"])
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} is not in 1-65535")
    host = m["v6"] if m["v6"] is not None else m["name"]
    return host, port


def _netloc(userinfo: str, host: str, port: int | None) -> str:
    where = f"[{host}]" if ":" in host else host
    if port is not None:
        where += f":{port}"
    return f"{userinfo}@{where}" if userinfo else where


def split_options(url: str) -> tuple[str, dict[str, str]]:
    """The URL without our options, and our options (ValueError when one repeats)."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in OPTIONS:
            if key in ours:
                raise ValueError(f"URL option {key!r} is given twice")
            ours[key] = value
        else:
            rest.append((key, value))
    if not ours:
        return url, ours
    return urlunsplit(parts._replace(query=urlencode(rest, safe=":/,%"))), ours


def parse(url: str) -> Endpoints:
    """Read ``hosts`` and the TLS files out of a URL; ValueError names what is wrong."""
    base, ours = split_options(url)
    parts = urlsplit(base)
    scheme = parts.scheme.lower()
    urls = [base]
    if "hosts" in ours:
        if not scheme.startswith("amqp"):
            raise ValueError(
                "hosts applies to amqp:// and amqps:// (use redis+cluster:// for a Redis Cluster)"
            )
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        for item in ours["hosts"].split(","):
            if not item.strip():
                raise ValueError("hosts has an empty entry")
            host, port = parse_host(item)
            urls.append(urlunsplit(parts._replace(netloc=_netloc(userinfo, host, port))))
    files = {k: ours.get(k) or None for k in TLS_OPTIONS}
    if any(files.values()) and scheme not in _TLS_SCHEMES:
        raise ValueError(
            f"ca_file, cert_file and key_file need a TLS URL (amqps://, rediss://), not {scheme}://"
        )
    if files["key_file"] and not files["cert_file"]:
        raise ValueError("key_file needs cert_file")
    return Endpoints(tuple(dict.fromkeys(urls)), **files)


def check_files(endpoints: Endpoints) -> None:
    """ValueError when a TLS file named in the URL cannot be read."""
    for key in TLS_OPTIONS:
        path = getattr(endpoints, key)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{key} {path!r}: no such file")


def with_options(url: str, options: dict[str, str]) -> str:
    """Add options to a URL; those the URL already carries win."""
    base, ours = split_options(url)
    merged = {**{k: v for k, v in options.items() if v}, **ours}
    if not merged:
        return url
    parts = urlsplit(base)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *merged.items()]
    return urlunsplit(parts._replace(query=urlencode(query, safe=":/,[]%")))
