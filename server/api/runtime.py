"""What the endpoints share: the engines' generation once loaded, the limiter, the keys, the metrics, and the
server's state; and the one resolution of a request's `model` to what serves it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..errors import EngineUnavailable, InvalidRequest, ModelNotFound
from ..generation.core import GenerationCore
from ..generation.served import Target
from ..metrics import Metrics, RequestObserver
from ..planner.fleet import Fleet
from ..planner.plan import Plan
from ..roles import ROLE_NAMES, Role, role_spec
from .auth import KeyCheck
from .errors import RETRY_AFTER_S, NotReady
from .limits import Limiter
from .supersession import Supersession


@dataclass
class Runtime:
    """Built by the entry point; the engines arrive when they have loaded."""

    limiter: Limiter
    keys: KeyCheck
    metrics: Metrics | None = None
    cores: tuple[GenerationCore, ...] = ()  # one per running engine, in start order (see serve())
    roles: dict[str, GenerationCore] = field(default_factory=dict)  # who answers a request that names no model
    plan: Plan | None = None  # as planned while loading; as it turned out once the engine runs
    fleet: Fleet | None = None  # every role's plan (CODESERVE_ROLE=completion,chat), the same way
    engine: dict[str, Any] = field(default_factory=dict)  # the running engine: name and the arguments it got
    status: str = "loading"  # loading | ready | failed | stopping
    detail: str = ""
    phase: str = "loading"  # on the way to serving: metrics.START_PHASES
    progress: float | None = None  # of the phase, 0..1, where it is measured
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    supersession: Supersession | None = None  # None: CODESERVE_SUPERSEDE=false

    def enter(self, phase: str, detail: str = "", progress: float | None = None) -> None:
        """Where the start is: its phase, what it does in words (/ready's detail) and how far, where measured."""
        self.phase, self.detail, self.progress = phase, detail, progress
        if self.metrics is not None:
            self.metrics.set_start_phase(phase, progress)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def serve(self, core: GenerationCore, roles: tuple[Role, ...] = ROLE_NAMES) -> None:
        """Add a loaded engine's generation; requests that name no model go to it for `roles` (the first engine
        added takes every role no later one claims)."""
        self.cores = (*self.cores, core)
        for role in roles:
            self.roles[role] = core

    def check_engine(self) -> str | None:
        """Why an engine can no longer serve, or None; one dead engine turns the server 'failed' (the process is
        restarted whole: a half-served fleet would send a role's requests nowhere)."""
        if self.cores and self.status in ("ready", "stopping"):
            for core in self.cores:
                reason = core.engine.dead()
                if reason is not None:
                    self.status = "failed"
                    self.enter("failed", reason if len(self.cores) == 1 else f"{core.served.id}: {reason}")
                    if self.metrics is not None:
                        self.metrics.ready.set(0)
                    break
        return self.detail if self.status == "failed" else None

    def require_ready(self) -> None:
        """503 unless every engine is loaded and alive."""
        if self.check_engine() is not None and self.cores:
            raise EngineUnavailable(f"the engine is gone: {self.detail}; the server is restarting",
                                    headers={"Retry-After": str(RETRY_AFTER_S)})
        if not self.cores or not self.ready:
            message = {"failed": f"the model failed to load: {self.detail}",
                       "stopping": "the server is shutting down"}.get(self.status, "the model is still loading")
            raise NotReady(message, headers={"Retry-After": str(RETRY_AFTER_S)})

    def resolve(self, model: str | None, role: Role, foreign_names: bool = False) -> Target:
        """What serves a request naming `model` (any engine's model or LoRA adapter), or `role`'s engine when it
        names none. `foreign_names`: a name this server does not serve is the client's own label for it
        (Copilot's engine names, llama.cpp clients' "model"), answered by `role`'s engine, not a 404."""
        self.require_ready()
        if model:
            for core in self.cores:
                if core.served.accepts(model):
                    return _checked(Target(core, model if model in core.served.adapters else None), role)
            if not foreign_names:
                served = ", ".join(f"'{core.served.id}'" for core in self.cores)
                raise ModelNotFound(f"the model '{model}' does not exist; this server serves {served}",
                                    param="model")
        spec = role_spec(role)
        if spec.pooling is not None and role not in self.roles:
            raise InvalidRequest(f"this server serves no {role} model; start it with {role} among CODESERVE_ROLE "
                                 f"(e.g. CODESERVE_ROLE=completion,chat,embedding,rerank)", param="model")
        return _checked(Target(self.roles.get(role, self.cores[0])), role)

    def observer(self, endpoint: str) -> RequestObserver:
        return RequestObserver(self.metrics, endpoint)


def _checked(target: Target, role: Role) -> Target:
    """The target, if its model is of the kind the endpoint's role needs: a generation request never reaches an
    embedding model or a reranker, an embedding request never a reranker or a generative model."""
    entry, spec = target.core.served.entry, role_spec(role)
    if spec.pooling is None and entry.retrieval is not None:
        kind = "an embedding model" if entry.role == "embedding" else "a reranker"
        raise InvalidRequest(f"'{target.model}' is {kind}: it generates no text; "
                             f"{'/v1/embeddings' if entry.role == 'embedding' else '/v1/rerank'} serves it",
                             param="model")
    if spec.pooling is not None and entry.role not in spec.catalog_roles:
        wanted = "an embedding model" if spec.pooling == "embed" else "a reranker (a cross-encoder)"
        raise InvalidRequest(f"'{target.model}' is not {wanted} (it is a {entry.role} model); this endpoint needs "
                             f"one: name the server's {role} model or leave `model` out", param="model")
    return target
