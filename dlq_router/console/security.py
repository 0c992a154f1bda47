"""Who may act: the console token, a signed session cookie, and per-session CSRF tokens.

Reading needs nothing (the console binds 127.0.0.1 by default). Every action (replay, purge)
needs either ``Authorization: Bearer <token>`` or a session from signing in with the token
*and* the CSRF field of a form the console rendered for that session. The session cookie is
HttpOnly and SameSite=Strict; cookies and CSRF tokens are HMACs under a key made at start-up,
so a restart signs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SESSION_COOKIE = "dlq_console_session"


class Guard:
    def __init__(self, token: str | None) -> None:
        self.token = token
        self._key = secrets.token_bytes(32)

    def _sign(self, purpose: str, value: str) -> str:
        mac = hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def token_ok(self, given: str | None) -> bool:
        """Constant-time comparison; no token configured means no action is allowed."""
        if not self.token or given is None:
            return False
        return hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    def bearer_ok(self, header: str | None) -> bool:
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def new_session(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign('session', nonce)}"

    def session(self, cookie: str | None) -> str | None:
        """The session id of a valid cookie, else None."""
        nonce, dot, mac = (cookie or "").partition(".")
        if not dot or not nonce:
            return None
        # Bytes: compare_digest refuses str with non-ASCII characters (a foreign cookie).
        expected = self._sign("session", nonce).encode("utf-8")
        return nonce if hmac.compare_digest(mac.encode("utf-8"), expected) else None

    def csrf(self, session: str) -> str:
        return self._sign("csrf", session)

    def csrf_ok(self, session: str | None, field: str | None) -> bool:
        if session is None or not field:
            return False
        return hmac.compare_digest(field.encode("utf-8"), self.csrf(session).encode("utf-8"))
