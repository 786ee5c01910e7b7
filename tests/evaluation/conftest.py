"""The fake-engine server fixtures of the API tests, for evaluating against a real socket."""

from tests.api.conftest import serve_fake  # noqa: F401
