"""Who may call: Logon sessions, security tokens and IMS bearer tokens.

* ``Logon`` (login and password) and ``BearerTokenLogon`` (an IMS token) open a
  session: a session token ``___<uuid>`` and a security token ``@...==``. Sessions
  expire ``session_timeout_s`` after the logon, as Campaign's do (no sliding).
* A call with a session token is checked like this (INFERRED from the SDK and the
  security-zone docs, see ``campaign-protocol.md`` 3.2): the session must exist and
  be alive; a security token, when sent, must be the session's; a session token that
  came only as a cookie or HTTP header also needs its security token (the CSRF
  guard), unless ``require_security_token`` is off. A token passed as the first SOAP
  parameter alone is accepted, as Adobe's v8 Ingest samples do.
* ``POST /ims/token/v3`` issues client-credentials tokens that expire after
  ``ims_token_ttl_s`` and can be revoked; ``Authorization: Bearer`` calls need a
  live one and no Logon.

Everything that fails here is ``XSV-350008``, the code that tells a writer to renew
its session or token. Tokens are random and never logged.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .config import ImsClient, User
from .faults import session_expired

__all__ = ["AuthState", "ImsToken", "Principal", "Session"]


@dataclass(frozen=True)
class Principal:
    """The operator behind a call and what it may write (empty ``schemas``: all)."""

    login: str
    schemas: tuple[str, ...]
    session: str = ""
    bearer: str = ""


@dataclass
class Session:
    token: str
    security: str
    principal: Principal
    expires_at: float


@dataclass
class ImsToken:
    client: ImsClient
    expires_at: float


class AuthState:
    """Live sessions and IMS tokens, timed on an injected monotonic clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.sessions: dict[str, Session] = {}
        self.tokens: dict[str, ImsToken] = {}
        self.logons = 0

    def _purge(self) -> None:
        now = self._clock()
        for token in [t for t, s in self.sessions.items() if s.expires_at <= now]:
            del self.sessions[token]
        for token in [t for t, i in self.tokens.items() if i.expires_at <= now]:
            del self.tokens[token]

    def open_session(self, login: str, schemas: tuple[str, ...], ttl_s: float) -> Session:
        self.logons += 1
        if self.logons % 256 == 0:
            self._purge()
        token = f"___{uuid.uuid4()}"
        security = f"@{secrets.token_urlsafe(48)}=="
        principal = Principal(login, schemas, session=token)
        session = Session(token, security, principal, self._clock() + ttl_s)
        self.sessions[token] = session
        return session

    def logon(self, user: User | None, password: str, ttl_s: float) -> Session | None:
        """A new session if ``password`` is the user's, else ``None``."""
        if user is None or not secrets.compare_digest(user.password, password):
            return None
        return self.open_session(user.login, user.schemas, ttl_s)

    def issue_token(self, client: ImsClient, ttl_s: float) -> str:
        self._purge()
        token = f"sim-ims-{secrets.token_urlsafe(64)}"
        self.tokens[token] = ImsToken(client, self._clock() + ttl_s)
        return token

    def bearer(self, token: str) -> Principal:
        """The principal of a live IMS token; raises the session-expired fault otherwise."""
        entry = self.tokens.get(token)
        if entry is None or entry.expires_at <= self._clock():
            self.tokens.pop(token, None)
            raise session_expired()
        return Principal(entry.client.client_id, entry.client.schemas, bearer=token)

    def session(
        self, token: str, security: str, token_in_param: bool, require_security: bool
    ) -> Principal:
        """The principal of a live session; raises the session-expired fault otherwise."""
        session = self.sessions.get(token) if token else None
        if session is None or session.expires_at <= self._clock():
            self.sessions.pop(token, None)
            raise session_expired()
        if security:
            if not secrets.compare_digest(security, session.security):
                raise session_expired()
        elif require_security and not token_in_param:
            raise session_expired()
        return session.principal

    def logoff(self, token: str) -> None:
        self.sessions.pop(token, None)

    def invalidate(self, principal: Principal) -> None:
        """Expire this call's session, or revoke its IMS token."""
        if principal.session:
            self.sessions.pop(principal.session, None)
        if principal.bearer:
            self.tokens.pop(principal.bearer, None)

    def expire_sessions(self) -> int:
        count = len(self.sessions)
        self.sessions.clear()
        return count

    def revoke_tokens(self) -> int:
        count = len(self.tokens)
        self.tokens.clear()
        return count
