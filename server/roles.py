"""The roles a server plays, as data: one row per role in ROLES.

Settings read it for CODESERVE_ROLE, the planner for which catalog models qualify and how a fleet budgets each role,
the HTTP layer for the endpoints a request that names no model reaches a role through. Adding a role is one row
here, plus its planning rule where the fleet planner (planner/fleet.py) needs a new one.

Imports nothing of the project: settings and every layer above read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Role = str  # a role's name: one of ROLE_NAMES
FleetObjective = Literal["largest", "latency"]
Pooling = Literal["embed", "score"]  # what a retrieval role's engine computes: vectors, or query-document scores


class CatalogModel(Protocol):
    """What the qualify rule reads of a catalog entry (planner/catalog.py's ModelEntry)."""

    @property
    def role(self) -> str:
        """The catalog's `role:` (base, instruct)."""
        ...

    @property
    def fim(self) -> str | None:
        """The fill-in-the-middle template id, None without FIM tokens."""
        ...

    @property
    def bundled(self) -> object:
        """Not None for the bundled CPU model (planner/catalog.py's Bundled)."""
        ...


@dataclass(frozen=True)
class RoleSpec:
    """One role: what qualifies a model for it, how the planner budgets it, what it serves."""

    name: Role
    summary: str  # CODESERVE_ROLE's description of it
    # --- which catalog models qualify (the bundled CPU model serves every role: planner/choose.py) ---
    catalog_roles: tuple[str, ...]  # the catalog `role:` values whose models may serve it
    needs_fim: bool  # fill-in-the-middle tokens required
    # --- how the planner budgets it ---
    fleet_objective: FleetObjective  # what CODESERVE_OBJECTIVE=auto means for it when several roles are planned
    follows_objective: bool  # whether CODESERVE_OBJECTIVE=largest|latency applies to it there (else fleet_objective)
    max_share: float  # with GPUs shared by several roles: the most of the memory budget it may take (1.0: no cap)
    start_order: int  # engines start lowest first: the smaller share first, so the larger one sees what is free
    model_setting: str  # the Settings field that pins its model when several roles are planned (alone: `model`)
    lora_adapters: bool  # in a fleet, CODESERVE_LORA_ADAPTERS go on this role's engine
    prompt_lookup: bool  # CODESERVE_SPECULATIVE=auto plans prompt-lookup speculation for it (GPUs, few sequences)
    # --- what it serves ---
    # Endpoint names (plain strings, the ones server/metrics.py labels requests with) whose requests go to this role's
    # engine when they name no model.
    endpoints: tuple[str, ...]
    # A retrieval role: its engine pools (vLLM's pooling runner, or Transformers' forward) instead of generating,
    # and the fleet planner places it beside the generation roles (planner/fleet.py). None: a generation role.
    pooling: Pooling | None = None

    def accepts(self, model: CatalogModel) -> bool:
        return model.role in self.catalog_roles and (model.fim is not None or not self.needs_fim)

    def takes_bundled(self, model: CatalogModel) -> bool:
        """The bundled CPU model is the default of every generation role (planner/choose.py); it pools nothing."""
        return model.bundled is not None and self.pooling is None

    def problem(self, model: CatalogModel) -> str | None:
        """None: the model qualifies. '': it does not, silently (another role's kind of model). Else why not."""
        if self.accepts(model):
            return None
        if model.role not in self.catalog_roles or any(r.accepts(model) for r in ROLES if r is not self):
            return ""
        return f"no fill-in-the-middle tokens (role={self.name} needs FIM)"


ROLES: tuple[RoleSpec, ...] = (
    RoleSpec(
        name="completion", summary="base models with FIM",
        # instruct models with FIM tokens (Qwen2.5-Coder-Instruct, Codestral) fill holes too
        catalog_roles=("base", "instruct"), needs_fim=True,
        # an IDE waits on every keystroke's suggestion: when chat shares the inventory, completion aims for speed
        fleet_objective="latency", follows_objective=True,
        # chat is the larger model: completion takes what its option needs, at most half of a shared budget
        max_share=0.5, start_order=0, model_setting="model", lora_adapters=True,
        # completions copy identifiers and whole lines from the prompt (planner/choose.py's PROMPT_LOOKUP)
        prompt_lookup=True,
        endpoints=("completions", "infill", "llamacpp_completion"),
    ),
    RoleSpec(
        name="chat", summary="instruct models",
        catalog_roles=("instruct",), needs_fim=False,
        fleet_objective="largest", follows_objective=False,
        max_share=1.0, start_order=1, model_setting="chat_model", lora_adapters=False,
        prompt_lookup=False,  # chat answers copy less from their prompt
        endpoints=("chat", "responses", "messages", "messages_count_tokens"),
    ),
    # Retrieval roles (IDE codebase indexing and context reranking): small models, planned first beside the others,
    # each in a small share of one GPU (planner/fleet.py), their own engine on the CPU.
    RoleSpec(
        name="embedding", summary="embedding models (code search vectors: /v1/embeddings)",
        catalog_roles=("embedding",), needs_fim=False,
        fleet_objective="largest", follows_objective=False,
        # the largest embedding model within a quarter of the budget (and planner/fleet.py's RETRIEVAL_MAX_BYTES), in
        # 16-bit: Qwen3-Embedding-0.6B from a 16 GB GPU, 4B on an 80 GB one (tests/planner/test_fleet_retrieval.py)
        max_share=0.25, start_order=-2, model_setting="embedding_model", lora_adapters=False, prompt_lookup=False,
        endpoints=("embeddings",), pooling="embed",
    ),
    RoleSpec(
        name="rerank", summary="cross-encoder rerankers (/v1/rerank, /rerank)",
        catalog_roles=("reranker",), needs_fim=False,
        fleet_objective="largest", follows_objective=False,
        max_share=0.15, start_order=-1, model_setting="rerank_model", lora_adapters=False, prompt_lookup=False,
        endpoints=("rerank",), pooling="score",
    ),
)
ROLE_NAMES: tuple[Role, ...] = tuple(r.name for r in ROLES)
DEFAULT_ROLE: Role = ROLE_NAMES[0]
_BY_NAME = {r.name: r for r in ROLES}


def role_spec(name: Role) -> RoleSpec:
    """The row of one role; a name outside the table is a bug (settings validate CODESERVE_ROLE)."""
    return _BY_NAME[name]


def role_of_endpoint(endpoint: str) -> Role:
    """The role whose engine answers `endpoint`'s requests that name no model (the first role for any other)."""
    return next((r.name for r in ROLES if endpoint in r.endpoints), DEFAULT_ROLE)


def generation_roles(roles: tuple[Role, ...]) -> tuple[Role, ...]:
    return tuple(role for role in roles if _BY_NAME[role].pooling is None)


def retrieval_roles(roles: tuple[Role, ...]) -> tuple[Role, ...]:
    return tuple(role for role in roles if _BY_NAME[role].pooling is not None)


def parse_roles(value: str) -> tuple[Role, ...]:
    """CODESERVE_ROLE's roles in table order: comma-separated, any order, duplicates allowed."""
    named = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [name for name in named if name not in _BY_NAME]
    if unknown or not named:
        what = f"names unknown roles {unknown}" if unknown else "names no role"
        raise ValueError(f"CODESERVE_ROLE={value!r} {what}; known roles: {', '.join(ROLE_NAMES)} (several: "
                         f"comma-separated, e.g. {','.join(ROLE_NAMES)})")
    return tuple(name for name in ROLE_NAMES if name in named)
