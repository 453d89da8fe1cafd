"""HTTP sessions (the JSESSIONID cookie) and the CSRF token that lives and dies with each."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["SESSION_COOKIE", "HttpSession", "SessionStore"]

SESSION_COOKIE = "JSESSIONID"


def _token() -> str:
    return str(uuid.uuid4())


@dataclass(eq=False)
class HttpSession:
    session_id: str
    user: str
    csrf_token: str = field(default_factory=_token)
    last_access: float = field(default_factory=time.monotonic)
    cc_session: bool = False


class SessionStore:
    """Sessions by id, expiring after ``timeout`` seconds without a request."""

    def __init__(self, timeout: float, on_end: Callable[[HttpSession], None]) -> None:
        self._timeout = timeout
        self._on_end = on_end
        self._sessions: dict[str, HttpSession] = {}

    def create(self, user: str) -> HttpSession:
        # Jetty session ids are opaque upper-case tokens; the shape only matters to eyes.
        session = HttpSession(session_id=uuid.uuid4().hex.upper(), user=user)
        self._sessions[session.session_id] = session
        return session

    def lookup(self, session_id: str | None) -> HttpSession | None:
        """The live session for this cookie value, touched; None if unknown or expired."""
        if session_id is None:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_access > self._timeout:
            self.end(session)
            return None
        session.last_access = now
        return session

    def end(self, session: HttpSession) -> None:
        if self._sessions.pop(session.session_id, None) is not None:
            self._on_end(session)

    def end_all(self) -> int:
        sessions = list(self._sessions.values())
        for session in sessions:
            self.end(session)
        return len(sessions)

    def rotate_csrf(self, session: HttpSession) -> None:
        session.csrf_token = _token()

    def sweep(self) -> None:
        now = time.monotonic()
        for session in [s for s in self._sessions.values() if now - s.last_access > self._timeout]:
            self.end(session)
