"""Errors raised by the media layer."""

from __future__ import annotations


class MediaError(Exception):
    """Base class for media-layer errors."""


class SignalError(MediaError):
    """A signalling message could not be applied; the peer connection is unchanged.

    ``code`` is a short machine-readable token the web layer forwards to the browser
    (``bad-sdp``, ``no-common-codec``, ``wrong-state``, ``glare``, ``bad-candidate``,
    ``bad-message``, ``closed``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"SignalError({self.code!r}, {self.message!r})"
