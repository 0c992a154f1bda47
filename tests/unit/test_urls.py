"""URL parsing and redaction: examples from operators' mistakes, then properties."""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from dlq_router import logs
from dlq_router.topology import parse_topology
from dlq_router.urls import (
    MASK,
    normalize_url,
    redact,
    redact_url,
    url_port_problem,
    url_secrets,
)

PASSWORD = "Qz@Kx/Jv:%Wq@Ym/Rk"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"amqp://lp:{PASSWORD}@127.0.0.1:5672/%2F", "amqp://lp:***@127.0.0.1:5672/%2F"),
        (f"amqp://lp:{quote(PASSWORD, safe='')}@h/%2F", "amqp://lp:***@h/%2F"),
        ("amqps://lp:p@h:5671/v?cacertfile=/ca.pem", "amqps://lp:***@h:5671/v?cacertfile=/ca.pem"),
        ("redis://:s3cr@t!@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("redis://h:6379/0?password=hunter22&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis://u@h/0?x=a@b", "redis://u@h/0?x=a@b"),
        ("amqp://guest:guest@h/", "amqp://guest:***@h/"),
        ("amqp://l:x@h/", "amqp://l:***@h/"),  # a 1-character password garbles nothing
        ("redis+cluster://u:p@w@h1:7000,h2:7001", "redis+cluster://u:***@h1:7000,h2:7001"),
    ],
)
def test_redact_url_examples(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_unencoded_password_reaches_the_clients_encoded() -> None:
    url = normalize_url(f"amqp://lp:{PASSWORD}@127.0.0.1:5672/%2F")
    parts = urlsplit(url)
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 5672, "/%2F")
    assert unquote(parts.password or "") == PASSWORD


def test_topology_encodes_the_password_and_refuses_a_bad_port() -> None:
    routes = [{"name": "r", "retry": {"delays": ["1s"], "max_attempts": 2}}]
    topo = parse_topology({"url": f"amqp://lp:{PASSWORD}@h:5672/%2F", "routes": routes})
    assert unquote(urlsplit(topo.url).password or "") == PASSWORD
    assert url_port_problem("amqp://u:p@h:abc/") == "port 'abc' is not a number from 1 to 65535"
    assert url_port_problem(f"amqp://u:{PASSWORD}@h:5672/") is None
    assert url_port_problem("redis://[::1]:99999/0") is not None


def test_free_text_keeps_scheme_and_user() -> None:
    url = "amqp://lp:l@127.0.0.1/"
    assert redact(f"cannot log in to {url}", tuple(url_secrets(url))) == (
        "cannot log in to amqp://lp:***@127.0.0.1/"
    )
    url = f"amqp://guest:{PASSWORD}@h/"
    text = f"boom {PASSWORD} and {quote(PASSWORD, safe='')} at {url}"
    assert redact(text, tuple(url_secrets(url))) == "boom *** and *** at amqp://guest:***@h/"


def test_every_log_record_is_redacted_pika_and_json_included(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"amqp://lp:{PASSWORD}@127.0.0.1/%2F"
    logs.configure("json", "debug", secrets=url_secrets(url))
    try:
        logging.getLogger("pika.adapters.blocking_connection").warning("connect %s failed", url)
        logging.getLogger("redis.connection").error("auth %s", quote(PASSWORD, safe=""))
        try:
            raise RuntimeError(f"in a traceback: {PASSWORD}")
        except RuntimeError:
            logging.getLogger("dlq_router.run").exception("oops")
    finally:
        logs.configure("text", "warning")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 3 and all(line.startswith("{") for line in lines), err
    assert '"logger": "pika.adapters.blocking_connection"' in lines[0]
    assert "amqp://lp:***@127.0.0.1/%2F" in lines[0]
    assert PASSWORD not in err and quote(PASSWORD, safe="") not in err
    assert "in a traceback: ***" in lines[2]


# --- properties -------------------------------------------------------------------------

USER = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12)
# Anything an operator might type, @ / : % included; whitespace, ? and # end a URL.
PASSWORD_TEXT = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="?#"
    ),
    min_size=1,
    max_size=24,
)
HOST = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "rabbit-1.example", "h1:7000,h2:7001"])
PORT = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
REST = st.sampled_from(["", "/", "/%2F", "/0", "/vh?heartbeat=10", "/0?db=1&x=a@b"])
SCHEME = st.sampled_from(["amqp", "amqps", "redis", "rediss", "redis+cluster"])


def _is_encoded(password: str) -> bool:
    return bool(re.search(r"%[0-9A-Fa-f]{2}", password))


@given(SCHEME, USER, PASSWORD_TEXT, HOST, PORT, REST, st.booleans())
@example("amqp", "lp", PASSWORD, "127.0.0.1", ":5672", "/%2F", False)
@example("redis", "u", "a@b/c:d%e", "localhost", "", "/0?x=a@b", False)
@example("amqp", "u", "loca", "localhost", "", "/", False)  # the password inside the host
def test_redaction_keeps_everything_but_the_password(
    scheme: str, user: str, password: str, host: str, port: str, rest: str, encode: bool
) -> None:
    if "," in host:
        port = ""
    if not encode:
        assume(not _is_encoded(password))
    written = quote(password, safe="") if encode else password
    url = f"{scheme}://{user}:{written}@{host}{port}{rest}"
    assert redact_url(url) == f"{scheme}://{user}:{MASK}@{host}{port}{rest}"
    text = redact(f"error: {url} refused; password was {password}", tuple(url_secrets(url)))
    masked = f"{scheme}://{user}:{MASK}@{host}{port}{rest}"
    if password not in masked and written not in masked:
        # (Free text has no structure: a password that is also part of the host, say
        # "loca" in "localhost", is masked there too, and the URL is then not intact.)
        assert masked in text
    if len(password) >= 4 and password not in masked:
        assert password not in text and written not in text
    # What the clients get: urllib (pika, redis-py) finds the same host and the password.
    parts = urlsplit(normalize_url(url))
    assert parts.netloc.rpartition("@")[2] == f"{host}{port}"
    assert unquote(parts.password or "") == password
    assert unquote(parts.username or "") == user


@given(SCHEME, HOST, st.sampled_from(["password", "pass", "auth_token", "sasl_secret"]), USER)
def test_secret_query_parameters_are_masked(scheme: str, host: str, key: str, value: str) -> None:
    assume(len(value) >= 4)
    url = f"{scheme}://{host}/0?db=1&{key}={value}&heartbeat=5"
    assert redact_url(url) == f"{scheme}://{host}/0?db=1&{key}={MASK}&heartbeat=5"
    assert value not in redact(f"bad {value}", tuple(url_secrets(url)))


@given(st.text(max_size=80))
def test_redact_never_fails_and_is_idempotent(text: str) -> None:
    once = redact(text, ())
    assert redact(once, ()) == once
    assert isinstance(redact_url(text), str) and isinstance(normalize_url(text), str)
