"""What a fill-in-the-middle request gets when it does not say, per endpoint: one table, so two endpoints never
decide the same default two ways.

- `code_stops`: end at the line's end (cursor mid-line), on a dedent below the cursor's block, or after closing a
  bracket opened before the cursor. Editors' inline completions want it (llama.vscode, Copilot); a plain
  /v1/completions caller (Tabby, an evaluation harness) gets the server's CODESERVE_COMPLETION_CODE_STOPS.
- `fit`: trim other files and the far prefix and suffix to fit the context instead of answering 400. Editors
  send whatever surrounds the cursor and cannot act on a 400; an API caller should hear that its prompt is long.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HoleDefaults:
    code_stops: bool | None  # None: the server's setting (CODESERVE_COMPLETION_CODE_STOPS)
    fit: bool

    def resolve(self, code_stops: bool | None, fit: bool | None, setting_code_stops: bool) -> tuple[bool, bool]:
        """The request's own choice where it made one, else this endpoint's default."""
        default_stops = setting_code_stops if self.code_stops is None else self.code_stops
        return (default_stops if code_stops is None else code_stops), (self.fit if fit is None else fit)


# By endpoint name (the names the HTTP layer's endpoint objects carry).
HOLE_DEFAULTS: dict[str, HoleDefaults] = {
    "completions": HoleDefaults(code_stops=None, fit=False),
    "copilot": HoleDefaults(code_stops=True, fit=True),
    "infill": HoleDefaults(code_stops=True, fit=True),
}
