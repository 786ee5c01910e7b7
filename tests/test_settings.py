"""Settings: shapes and ranges fail at start with the variable named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import Settings
from tests.conftest import make_settings


@pytest.mark.parametrize(("given", "role", "roles"), [
    ("completion", "completion", ("completion",)),
    ("chat", "chat", ("chat",)),
    ("completion,chat", "completion,chat", ("completion", "chat")),
    (" chat , completion ", "completion,chat", ("completion", "chat")),
    ("chat,chat", "chat", ("chat",)),
])
def test_role_takes_one_role_or_both_in_any_order(given: str, role: str, roles: tuple[str, ...]) -> None:
    settings = make_settings(role=given)
    assert (settings.role, settings.roles) == (role, roles)


@pytest.mark.parametrize("given", ["", "search", "completion,search"])
def test_unknown_roles_are_refused(given: str) -> None:
    with pytest.raises(ValidationError, match="role"):
        make_settings(role=given)


@pytest.mark.parametrize(("field", "value"), [("nodes", 0), ("nodes", 65), ("target_token_latency_ms", 0),
                                              ("objective", "fastest")])
def test_fleet_settings_are_range_checked(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        make_settings(**{field: value})


def _readme_settings(readme: str) -> set[str]:
    """Every CODESERVE_* variable named in the first column of the README's settings table."""
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `CODESERVE_")]
    return {name for cell in rows for name in re.findall(r"CODESERVE_[A-Z0-9_]+", cell)}


def test_the_readme_settings_table_lists_every_setting(repo_root: Path) -> None:
    documented = _readme_settings((repo_root / "README.md").read_text(encoding="utf-8"))
    fields = {f"CODESERVE_{name.upper()}" for name in Settings.model_fields}
    missing, stale = sorted(fields - documented), sorted(documented - fields)
    assert not missing, f"README.md's settings table lacks {missing}: add a row each (default, what it does)"
    assert not stale, f"README.md's settings table names {stale}, which Settings no longer reads"
