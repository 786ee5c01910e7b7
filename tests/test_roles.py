"""The role table: which catalog models qualify for each role, and the rows' consistency with what reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import pytest

from server.planner.catalog import Catalog, ModelEntry
from server.roles import ROLE_NAMES, ROLES, RoleSpec, parse_roles, role_spec
from server.settings import Settings

NO_FIM = "no fill-in-the-middle tokens (role=completion needs FIM)"


@dataclass(frozen=True)
class Entry:
    role: str
    fim: str | None


# (role, catalog role, FIM template, problem: None = qualifies, "" = silently another role's model, else the reason)
QUALIFY = [
    ("completion", "base", "qwen", None),
    ("completion", "instruct", "qwen", None),  # Qwen2.5-Coder-Instruct, Codestral: FIM tokens fill holes too
    ("completion", "base", None, NO_FIM),  # no role takes it: say why
    ("completion", "instruct", None, ""),  # chat's model
    ("chat", "instruct", None, None),
    ("chat", "instruct", "qwen", None),
    ("chat", "base", "qwen", ""),  # completion's model
    ("chat", "base", None, ""),  # a base model never chats
]


@pytest.mark.parametrize(("role", "catalog_role", "fim", "problem"), QUALIFY,
                         ids=[f"{r}-{c}-{'fim' if f else 'no-fim'}" for r, c, f, _ in QUALIFY])
def test_which_models_qualify(role: str, catalog_role: str, fim: str | None, problem: str | None) -> None:
    spec = role_spec(role)
    assert spec.problem(Entry(catalog_role, fim)) == problem
    assert spec.accepts(Entry(catalog_role, fim)) == (problem is None)


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_role_has_a_model_in_the_catalog(catalog: Catalog, role: str) -> None:
    assert any(role_spec(role).accepts(entry) for entry in catalog.models if entry.auto)


@pytest.mark.parametrize(("given", "roles"), [
    ("completion", ("completion",)),
    ("chat,completion", ("completion", "chat")),
    (" chat , chat ", ("chat",)),
], ids=["one", "table-order", "spaces-and-duplicates"])
def test_parse_roles(given: str, roles: tuple[str, ...]) -> None:
    assert parse_roles(given) == roles


@pytest.mark.parametrize(("given", "named"), [
    ("search", "unknown roles ['search']"),
    ("completion,ranking", "unknown roles ['ranking']"),
    (" , ", "no role"),
], ids=["unknown", "one-unknown", "empty"])
def test_unknown_roles_name_the_setting_and_the_known_roles(given: str, named: str) -> None:
    with pytest.raises(ValueError, match="CODESERVE_ROLE") as raised:
        parse_roles(given)
    assert named in str(raised.value) and "known roles: completion, chat" in str(raised.value)


@pytest.mark.parametrize("spec", ROLES, ids=ROLE_NAMES)
def test_rows_name_what_exists(spec: RoleSpec) -> None:
    assert set(spec.catalog_roles) <= set(get_args(ModelEntry.model_fields["role"].annotation))
    assert spec.model_setting in Settings.model_fields
    assert 0 < spec.max_share <= 1.0 and spec.endpoints


def test_names_endpoints_and_start_orders_are_unique() -> None:
    endpoints = [e for spec in ROLES for e in spec.endpoints]
    assert len(set(ROLE_NAMES)) == len(ROLES) and len(set(endpoints)) == len(endpoints)
    assert len({spec.start_order for spec in ROLES}) == len(ROLES)
