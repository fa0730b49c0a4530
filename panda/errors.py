"""Domain errors; one middleware turns them into HTTP responses (HTML pages or /api/ JSON)."""

from __future__ import annotations


class PandaError(Exception):
    """Base of every error that should reach the user as a clear message."""

    status = 400

    def __init__(self, message: str, *, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class BadRequest(PandaError):
    """Malformed input."""

    status = 400


class ValidationError(PandaError):
    """Well-formed input that breaks a rule (field errors in `fields`)."""

    status = 422


class NotAuthenticated(PandaError):
    """The request needs a logged-in user."""

    status = 401


class Forbidden(PandaError):
    """The user may not do this."""

    status = 403


class NotFound(PandaError):
    """The thing does not exist, or the user may not know it exists."""

    status = 404


class Conflict(PandaError):
    """The request collides with the current state (double booking, already done)."""

    status = 409


class TooLarge(PandaError):
    """The upload or message is over its size limit."""

    status = 413


class RateLimited(PandaError):
    """Too many attempts; try again after `retry_after` seconds."""

    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
