"""Errors that generation raises and the HTTP layer reports: neither layer owns them.

Each names the request field at fault (`param`) where there is one. The HTTP layer maps each class to
a status and OpenAI's error type (server/api/errors.py); nothing here knows about HTTP.
"""

from __future__ import annotations


class ServeError(Exception):
    """A request could not be served; `message` is safe to show the client."""

    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(ServeError):
    """The client sent something that cannot be served as asked."""


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(ServeError):
    code = "model_not_found"


class EngineFailure(ServeError):
    """The engine failed while serving a request (not the client's fault). The message says only the
    request id: the engine's own text (paths, device details) goes to the log."""

    code = "engine_error"


class EngineUnavailable(ServeError):
    """The engine is gone (its process died); the server is going down to be restarted."""

    code = "engine_unavailable"
