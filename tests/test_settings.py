"""Settings: shapes and ranges fail at start with the variable named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

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


@pytest.mark.parametrize("given", ["", "embedding", "completion,embedding"])
def test_unknown_roles_are_refused(given: str) -> None:
    with pytest.raises(ValidationError, match="role"):
        make_settings(role=given)


@pytest.mark.parametrize(("field", "value"), [("nodes", 0), ("nodes", 65), ("target_token_latency_ms", 0),
                                              ("objective", "fastest")])
def test_fleet_settings_are_range_checked(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        make_settings(**{field: value})
