"""API keys: `Authorization: Bearer <key>`, else `api-key` (as Azure-style clients send it), else `x-api-key` (as
Anthropic's clients send it: Claude Code with ANTHROPIC_API_KEY), compared in constant time. Keys are never logged."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import Unauthorized

KEY_HEADERS = ("api-key", "x-api-key")  # where a key is looked for when no Bearer token carries one, in order


def presented_key(request: Request) -> str:
    """The key the request carries ('' for none): the Bearer token, else the first key header that has one."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return next((key for name in KEY_HEADERS if (key := request.headers.get(name, ""))), "")


class KeyCheck:
    def __init__(self, keys: list[str]):
        self._keys = [k.encode("utf-8") for k in keys if k]

    def __call__(self, request: Request) -> None:
        if not self._keys:
            return
        presented = presented_key(request)
        if not presented:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' (or an 'x-api-key' header)")
        # HTTP headers arrive as bytes that Starlette decodes as latin-1: encode back to those bytes, which
        # are the key's UTF-8 when the client sent a non-ASCII key.
        candidate = presented.encode("latin-1", errors="replace")
        # Compare against every key (no early exit) so timing says nothing about which one matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise Unauthorized("invalid API key")
