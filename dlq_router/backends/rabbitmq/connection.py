"""Opening RabbitMQ connections, and translating pika's errors into ours (one boundary)."""

from __future__ import annotations

import re
import ssl

import pika
import pika.exceptions as pe

from dlq_router import endpoints
from dlq_router.errors import BrokerUnavailable
from dlq_router.urls import redact_text, redact_url

# Errors that mean "the connection is gone, reconnect" for the run loop.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pe.AMQPConnectionError,
    pe.ConnectionClosed,
    pe.StreamLostError,
    pe.ChannelWrongStateError,
    ConnectionError,
    OSError,
)


def tls_context(ends: endpoints.Endpoints) -> ssl.SSLContext:
    """Verify the server against ``ca_file`` (else the system CAs); present ``cert_file``."""
    context = ssl.create_default_context(cafile=ends.ca_file)
    if ends.cert_file:
        context.load_cert_chain(ends.cert_file, ends.key_file)
    return context


def parameters_list(
    url: str, *, heartbeat: int = 30, client_name: str = "dlq-router"
) -> list[pika.URLParameters]:
    """One set of parameters per host of the URL (``?hosts=``), in the order to try them."""
    ends = endpoints.parse(url)
    context = tls_context(ends) if url.lower().startswith("amqps") else None
    out = []
    for one in ends.urls:
        params = pika.URLParameters(one)
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = 60
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.client_properties = {"connection_name": client_name}
        if context is not None:
            # pika's own default has no server_hostname, so the name was never checked
            params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
        out.append(params)
    return out


def parameters(
    url: str, *, heartbeat: int = 30, client_name: str = "dlq-router"
) -> pika.URLParameters:
    """The parameters of the URL's first host."""
    return parameters_list(url, heartbeat=heartbeat, client_name=client_name)[0]


_ACCESS = re.compile(
    r"access to (?P<kind>queue|exchange) '(?P<name>[^']*)' in vhost '(?P<vhost>[^']*)' "
    r"refused for user '(?P<user>[^']*)'"
)


def access_refused(reply_text: str, action: str | None = None) -> str:
    """RabbitMQ's 403 text as "user lp may not configure exchange 'emails' in vhost 'v'".

    The broker names the object, not the permission; ``action`` says which one the failed
    call needed. Without it: outside ``declare`` (which passes its own) a queue is only ever
    read (get, consume, purge) and an exchange only written to (publish).
    """
    m = _ACCESS.search(reply_text)
    if not m:
        return f"access refused: {reply_text.removeprefix('ACCESS_REFUSED - ')}"
    if action is None:
        action = "read from" if m["kind"] == "queue" else "write to"
    return (
        f"user {m['user']} may not {action} {m['kind']} {m['name']!r} in vhost "
        f'{m["vhost"]!r} (see the README, "Least privilege")'
    )


def describe(exc: BaseException, url: str) -> str:
    """One line for the operator about why a connection failed; never the password."""
    where = redact_url(url)
    if isinstance(exc, pe.ChannelClosedByBroker) and exc.reply_code == 403:
        # Before the text checks below: its text says "refused", the connection is fine.
        return access_refused(exc.reply_text)
    if isinstance(exc, pe.ProbableAuthenticationError | pe.AuthenticationError):
        return f"cannot log in to {where}: authentication failed (check user and password)"
    if isinstance(exc, pe.ProbableAccessDeniedError):
        return f"cannot open {where}: access refused (missing vhost or no permission on it)"
    if isinstance(exc, pe.ConnectionClosedByBroker):
        if exc.reply_code == 530:
            return f"cannot open {where}: vhost missing or not allowed ({exc.reply_text})"
        return f"{where} closed the connection: {exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pe.AMQPConnectionError) and exc.args:
        inner = exc.args[0]
        inner_exc = inner if isinstance(inner, BaseException) else None
        if inner_exc is not None and inner_exc is not exc:
            return describe(inner_exc, url)
    # pika wraps socket errors in connector errors whose real cause sits in .exception
    cause = getattr(exc, "exception", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return describe(cause, url)
    text = redact_text(str(exc) or type(exc).__name__, url)
    if isinstance(exc, ConnectionRefusedError) or "refused" in text.lower():
        return f"cannot connect to {where}: connection refused (is RabbitMQ running?)"
    if isinstance(exc, OSError | pe.AMQPConnectionError):
        return f"cannot connect to {where}: {text}"
    return f"{where}: {text}"


def connect(url: str, *, client_name: str = "dlq-router") -> pika.BlockingConnection:
    """A blocking connection to the first host that answers, or ``BrokerUnavailable`` with a
    one-line, redacted reason."""
    try:
        return pika.BlockingConnection(parameters_list(url, client_name=client_name))
    except (pe.AMQPError, OSError) as exc:
        raise BrokerUnavailable(describe(exc, url)) from exc


_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)' "
    r"in vhost '[^']*': received (?P<received>.*?) but current is (?P<current>.*)$"
)


_VALUE = re.compile(r"^(?:the value )?'(?P<v>.*?)'(?: of type '[^']*')?$")


def _value(text: str) -> str:
    m = _VALUE.match(text.strip())
    return m["v"] if m else text.strip()


def explain_406(reply_text: str) -> str:
    """Turn RabbitMQ's PRECONDITION_FAILED text into 'arg: expected X, actual Y'."""
    m = _INEQUIVALENT.search(reply_text)
    if not m:
        return reply_text.removeprefix("PRECONDITION_FAILED - ")
    return f"{m['arg']}: expected {_value(m['received'])}, actual {_value(m['current'])}"
