"""The newest completion of a typist wins: a completion request from the same owner (API key + OpenAI's
`user`, or + llama.cpp's `id_slot`) supersedes that owner's request still in flight. The older one ends at
once (409 `request_superseded`, or that error as the last event of its stream) and its engine request is
aborted. Editors that never cancel a stale completion (the most reported autocomplete pain with local
servers) then stop holding the engine with requests nobody will read. Never across owners: another key,
another user, or no user at all never supersedes anything."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from fastapi import Request

from .auth import presented_key
from .errors import Superseded


@dataclass(eq=False)
class Claim:
    """One request's hold on its owner; `event` is set when a newer request of the owner arrives."""

    owner: tuple[str, str]  # (API key digest, the owner's field and value)
    param: str  # the request field that named the owner: "user" or "id_slot"
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def error(self) -> Superseded:
        return Superseded(f"superseded by a newer completion request from the same {self.param} (the server keeps "
                          "one completion per user in flight; CODESERVE_SUPERSEDE=false turns this off)",
                          param=self.param)


class Supersession:
    def __init__(self) -> None:
        self._current: dict[tuple[str, str], Claim] = {}

    def claim(self, request: Request, user: str | None, slot: int | None) -> Claim | None:
        """Take the owner's place, superseding the request that held it; None when the request has no owner."""
        if user:
            param, value = "user", user
        elif slot is not None and slot >= 0:
            param, value = "id_slot", str(slot)
        else:
            return None
        owner = (_key_of(request), f"{param}:{value}")
        previous = self._current.get(owner)
        if previous is not None:
            previous.event.set()
        claim = self._current[owner] = Claim(owner, param)
        return claim

    def release(self, claim: Claim | None) -> None:
        if claim is not None and self._current.get(claim.owner) is claim:
            del self._current[claim.owner]

    def __len__(self) -> int:
        return len(self._current)


def _key_of(request: Request) -> str:
    """Which API key sent the request, as a digest (keys are never kept); '' without one."""
    key = presented_key(request)
    return hashlib.sha256(key.encode("latin-1", errors="replace")).hexdigest() if key else ""
