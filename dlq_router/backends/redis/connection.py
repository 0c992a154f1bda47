"""Opening Redis (or Redis Cluster) clients and loading Lua scripts; redis-py errors end here.

``redis://`` and ``rediss://`` open a plain client; ``redis+cluster://`` (or
``rediss+cluster://``) a ``RedisCluster`` seeded from that host.
"""

from __future__ import annotations

import socket
from functools import cache
from importlib import resources
from typing import Any

import redis
import redis.exceptions as rex
from redis.cluster import RedisCluster

from dlq_router import endpoints
from dlq_router.errors import BrokerUnavailable
from dlq_router.urls import redact_text, redact_url, split_url

RedisClient = redis.Redis | RedisCluster

# Errors that mean "the connection is gone, reconnect" for the run loop.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterDownError,
    rex.TryAgainError,
    OSError,
)


def describe(exc: BaseException, url: str) -> str:
    where = redact_url(url)
    text = redact_text(str(exc) or type(exc).__name__, url)
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
        return f"cannot log in to {where}: {text}"
    if isinstance(exc, rex.NoPermissionError):  # ACL: a key pattern or command is missing
        user = split_url(url)
        who = f"user {user.user}" if user and user.user else "this user"
        return f'{who} on {where}: {text} (see the README, "Least privilege")'
    if isinstance(exc, rex.ConnectionError) and "refused" in text.lower():
        return f"cannot connect to {where}: connection refused (is Redis running?)"
    return f"cannot use {where}: {text}"


# redis-py waits forever by default: on a half-open connection (a peer that vanished without
# a FIN, a stalled network) every call would hang. No call of ours blocks on the server side
# (the router polls; there is no BRPOP), so any reply slower than this means a dead link.
# Override per URL: ``?socket_timeout=30`` (redis-py reads it; the URL's options win).
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
# Keepalive probes find a dead idle connection in about 30 + 3 * 10 s.
_KEEPALIVE = {
    name: value
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}
LIVENESS: dict[str, Any] = {
    "socket_timeout": SOCKET_TIMEOUT_S,
    "socket_connect_timeout": CONNECT_TIMEOUT_S,
    "socket_keepalive": True,
    "socket_keepalive_options": {getattr(socket, n): v for n, v in _KEEPALIVE.items()},
}


def connect(url: str, *, client_name: str = "dlq-router") -> RedisClient:
    """A connected client, or ``BrokerUnavailable`` with a one-line, redacted reason."""
    try:
        client: RedisClient
        ends = endpoints.parse(url)
        base = ends.urls[0]  # the URL without our options (redis-py refuses unknown ones)
        tls = {
            name: value
            for name, value in (
                ("ssl_ca_certs", ends.ca_file),
                ("ssl_certfile", ends.cert_file),
                ("ssl_keyfile", ends.key_file),
            )
            if value
        }
        if "+cluster" in base.split("://", 1)[0]:
            plain = base.replace("+cluster", "", 1)
            client = RedisCluster.from_url(plain, client_name=client_name, **LIVENESS, **tls)
        else:
            client = redis.Redis.from_url(
                base, client_name=client_name, health_check_interval=30, **LIVENESS, **tls
            )
        client.ping()
    except (rex.RedisError, OSError) as exc:
        raise BrokerUnavailable(describe(exc, url)) from exc
    return client


@cache
def lua_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` shipped with the package."""
    return resources.files("dlq_router.backends.redis").joinpath("lua", f"{name}.lua").read_text()


def script(client: RedisClient, name: str) -> Any:
    """A registered script (EVALSHA with EVAL fallback); every key must be passed in KEYS."""
    return client.register_script(lua_source(name))


class DeferredCall:
    """A script call sent now whose reply is read later, so Python works meanwhile.

    The connection is held until the reply is read (nothing else may be sent on it). On
    Redis Cluster, whose client handles redirections itself, the call is made at once.
    """

    def __init__(self, script: Any, keys: list[str], args: list[Any]) -> None:
        self.script, self.keys, self.args = script, keys, args
        self.client = script.registered_client
        self.pool = getattr(self.client, "connection_pool", None)
        self.conn: Any = None
        self.reply: Any = None
        if self.pool is None:
            self.reply = script(keys=keys, args=args)
            return
        conn = self.pool.get_connection()
        try:
            # One buffer, one write: redis-py would send its ~6 KB chunks one syscall each.
            packed = conn.pack_command("EVALSHA", script.sha, len(keys), *keys, *args)
            conn.send_packed_command([b"".join(packed)])
        except BaseException:
            conn.disconnect()
            self.pool.release(conn)
            raise
        self.conn = conn

    def result(self) -> Any:
        conn, self.conn = self.conn, None
        if conn is None:
            return self.reply
        try:
            self.reply = self.client.parse_response(conn, "EVALSHA")
            return self.reply
        except rex.NoScriptError:
            pass  # Redis lost its scripts (restart, SCRIPT FLUSH): nothing ran
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self.pool.release(conn)  # type: ignore[union-attr]
        # The script object loads the script and calls again.
        self.reply = self.script(keys=self.keys, args=self.args)
        return self.reply

    def abandon(self) -> None:
        """Forget the call: its reply must never reach the connection's next user."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.disconnect()
            self.pool.release(conn)  # type: ignore[union-attr]
